"""Reconciliation items: a BRIN index by run and a reference index for exceptions only.

A run writes its items together, so block ranges find a run's items; the two B-trees they
replace cost a third of classifying a 1,000,000-payment day. Matched items of a payment are
found through the runs of its business day (views.payment_detail).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("recon_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recon_items_reference"))
        batch_op.drop_index(batch_op.f("ix_recon_items_run_class"))
        batch_op.create_index(
            "ix_recon_items_exception",
            ["reference"],
            unique=False,
            postgresql_where=sa.text("cls <> 'matched'"),
            sqlite_where=sa.text("cls <> 'matched'"),
        )
        batch_op.create_index("ix_recon_items_run", ["run_id"], unique=False, postgresql_using="brin")


def downgrade() -> None:
    with op.batch_alter_table("recon_items", schema=None) as batch_op:
        batch_op.drop_index("ix_recon_items_run", postgresql_using="brin")
        batch_op.drop_index(
            "ix_recon_items_exception",
            postgresql_where=sa.text("cls <> 'matched'"),
            sqlite_where=sa.text("cls <> 'matched'"),
        )
        batch_op.create_index(batch_op.f("ix_recon_items_run_class"), ["run_id", "cls"], unique=False)
        batch_op.create_index(batch_op.f("ix_recon_items_reference"), ["reference"], unique=False)
