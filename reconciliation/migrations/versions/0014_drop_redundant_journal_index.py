"""The ledger journals' index on ``payment_id`` alone goes: the unique key on ``(payment_id, kind)`` starts
with the same column and serves every lookup by payment (the guard's, a refund's, a payment's detail).
Each journal paid for both: posting a million fee journals kept the second B-tree up to date for nothing
(about 15 % of ``runs.post_fees``, BENCHMARKS.md).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_ledger_journals_payment_id", table_name="ledger_journals")


def downgrade() -> None:
    op.create_index("ix_ledger_journals_payment_id", "ledger_journals", ["payment_id"], unique=False)
