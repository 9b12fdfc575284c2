"""On PostgreSQL the ledger entries' primary key becomes ``(journal_id, id)`` and their index on ``journal_id``
goes: one B-tree for each entry instead of two. Entries are read by journal (a journal's entries in id order, the
guard's "every journal has entries", the chart and exports joining entries to their journals), which the key
serves as the index did; nothing reads an entry by its id alone, and ids still come from the sequence alone.
Each entry paid for the second tree: a million fee journals (two million entries) took 11.7-12.0 s with it,
9.0-10.0 s without, alternated, and wrote 15 % less WAL (BENCHMARKS.md).

SQLite (the embedded demo) keeps ``id`` as its key, the rowid that numbers its entries, and the index.

Rebuilding the key locks the table whole: reads and writes of the ledger entries wait until the upgrade commits
(all of an upgrade's revisions are one transaction): under a second per million entries (0018 and 0019 on
1,968,000 entries and 996,500 lines: 2.1 s, the Python start included). Upgrade with the worker
and beat stopped, as ``payrecon migrate`` is meant to run.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":  # offline (--sql) too
        op.execute(
            "ALTER TABLE ledger_entries DROP CONSTRAINT pk_ledger_entries,"
            " ADD CONSTRAINT pk_ledger_entries PRIMARY KEY (journal_id, id)"
        )
        op.drop_index("ix_ledger_entries_journal_id", table_name="ledger_entries")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":  # offline (--sql) too
        op.create_index("ix_ledger_entries_journal_id", "ledger_entries", ["journal_id"], unique=False)
        op.execute(
            "ALTER TABLE ledger_entries DROP CONSTRAINT pk_ledger_entries,"
            " ADD CONSTRAINT pk_ledger_entries PRIMARY KEY (id)"
        )
