"""On PostgreSQL the statement lines lose their primary key's B-tree, ``(provider, business_date, id)`` (0019): a
BRIN index by provider and day finds a day's lines instead, as the items' does a run's (0020). An import writes its
lines together, a day of one provider at a time, so each block range of the table holds few days; the B-tree cost
every line an entry. One import of the bench's 996,500-line file, alternated on copies of one database: 4.9-5.2 s
with the key, 4.1-4.2 s with this index instead (BENCHMARKS.md). Nothing reads a line by its id; ids still come from
one sequence, as the items' and ledger entries' do. A run's payouts keep their partial B-trees (0008, 0021); a
failed load's lines are found by the BRIN index on their import.

The day is indexed with ``date_minmax_multi_ops`` (PostgreSQL 14 and later): a block range keeps up to 32 days or
intervals, not one interval from its first day to its last. Lines replaced by a listing or a status API
(``statements.replace_lines``) leave holes that later days fill once vacuumed; with one interval, each range so
filled would enter the scan of every day between its old lines and its new ones, for good (a scratch table of 30
days, 10 of them replaced: a day read 2,304 pages with one interval, 768 with several; the day's own 640).

The planner chooses the BRIN index for a day among many once the table has statistics (autovacuum's ANALYZE, on by
PostgreSQL's default; ``autosummarize`` has it summarize the block ranges an import fills); a table never analyzed
is read whole.

SQLite (the embedded demo) keeps ``id`` as its key and its day index.

Dropping the key locks the lines whole until the upgrade commits (all of an upgrade's revisions are one
transaction); building the BRIN index reads them once. Upgrade with the worker and beat stopped, as
``payrecon migrate`` is meant to run.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":  # offline (--sql) too
        op.execute("ALTER TABLE statement_lines DROP CONSTRAINT pk_statement_lines")
        op.create_index(
            "ix_statement_lines_day_range",
            "statement_lines",
            ["provider", "business_date"],
            postgresql_using="brin",
            postgresql_ops={"business_date": "date_minmax_multi_ops"},
            postgresql_with={"autosummarize": "on"},
        )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":  # offline (--sql) too
        op.drop_index("ix_statement_lines_day_range", table_name="statement_lines")
        op.execute(
            "ALTER TABLE statement_lines ADD CONSTRAINT pk_statement_lines PRIMARY KEY (provider, business_date, id)"
        )
