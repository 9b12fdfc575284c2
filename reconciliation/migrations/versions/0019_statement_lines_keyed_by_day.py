"""On PostgreSQL the statement lines' primary key becomes ``(provider, business_date, id)`` and their day index,
``(provider, business_date)``, goes: one B-tree for each line an import writes instead of two. Lines are read by
their provider's day (classification, the payouts, healing, the import's own checks), which the key's first
columns serve as the index did; nothing reads a line by its id alone. (The day at a glance reads a range of days
of every provider: neither served it.) An import of a 996,500-line statement took 6.9-7.1 s with both trees,
5.7-5.8 s with the key alone, alternated (BENCHMARKS.md).

SQLite (the embedded demo) keeps ``id`` as its key, the rowid that numbers its lines, and the day index.

Rebuilding the key locks the table whole: reads and writes of the statement lines wait until the upgrade commits
(all of an upgrade's revisions are one transaction): under a second per million lines (0018 and 0019 on
1,968,000 entries and 996,500 lines: 2.1 s, the Python start included). Upgrade with the worker and
beat stopped, as ``payrecon migrate`` is meant to run.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":  # offline (--sql) too
        op.execute(
            "ALTER TABLE statement_lines DROP CONSTRAINT pk_statement_lines,"
            " ADD CONSTRAINT pk_statement_lines PRIMARY KEY (provider, business_date, id)"
        )
        op.drop_index("ix_statement_lines_day", table_name="statement_lines")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":  # offline (--sql) too
        op.create_index("ix_statement_lines_day", "statement_lines", ["provider", "business_date"], unique=False)
        op.execute(
            "ALTER TABLE statement_lines DROP CONSTRAINT pk_statement_lines,"
            " ADD CONSTRAINT pk_statement_lines PRIMARY KEY (id)"
        )
