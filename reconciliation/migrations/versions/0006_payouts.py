"""Payouts matched to the payments they settle, per reconciliation run.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "recon_payouts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("payout_id", sa.String(length=200), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("payout_amount", sa.BigInteger(), nullable=True),
        sa.Column("settled_net", sa.BigInteger(), nullable=True),
        sa.Column("payments", sa.Integer(), nullable=False),
        sa.Column("difference", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["recon_runs.id"], name=op.f("fk_recon_payouts_run_id_recon_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recon_payouts")),
    )
    with op.batch_alter_table("recon_payouts", schema=None) as batch_op:
        batch_op.create_index("ix_recon_payouts_run", ["run_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("recon_payouts", schema=None) as batch_op:
        batch_op.drop_index("ix_recon_payouts_run")

    op.drop_table("recon_payouts")
