"""The ledger entries' index on ``account_id`` goes: nothing reads entries by account alone (balances and the
chart's accounts aggregate every entry, or reach entries from their journals by ``journal_id``), and with a
handful of accounts taking every entry it could not narrow a scan anyway. It was left from the foreign key
to the accounts (0013 made the references set-based; accounts are never deleted). Each entry paid for it:
about 15 % of inserting a fee chunk's 200,000 entries, and its WAL (BENCHMARKS.md).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_ledger_entries_account_id", table_name="ledger_entries")


def downgrade() -> None:
    op.create_index("ix_ledger_entries_account_id", "ledger_entries", ["account_id"], unique=False)
