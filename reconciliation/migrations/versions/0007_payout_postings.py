"""Matched payouts posted to the ledger, once per (provider, payout id).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "payout_postings",
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("payout_id", sa.String(length=200), nullable=False),
        sa.Column("journal_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "posted_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["journal_id"], ["ledger_journals.id"], name=op.f("fk_payout_postings_journal_id_ledger_journals")
        ),
        sa.ForeignKeyConstraint(["run_id"], ["recon_runs.id"], name=op.f("fk_payout_postings_run_id_recon_runs")),
        sa.PrimaryKeyConstraint("provider", "payout_id", name=op.f("pk_payout_postings")),
        sa.UniqueConstraint("journal_id", name=op.f("uq_payout_postings_journal_id")),
    )


def downgrade() -> None:
    op.drop_table("payout_postings")
