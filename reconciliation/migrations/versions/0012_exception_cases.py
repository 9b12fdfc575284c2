"""Exceptions as work: a case per (provider, business day, reference) carried across the runs of its day,
and its audit trail (``recon_case_events``, appended to only: ``payrecon migrate --grant-to`` gives the
application role INSERT and SELECT on it, no UPDATE or DELETE).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "recon_cases",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("business_date", sa.Date(), nullable=False),
        sa.Column("reference", sa.String(length=100), nullable=False),
        sa.Column("cls", sa.String(length=24), nullable=False),
        sa.Column("payment_id", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("internal_amount", sa.BigInteger(), nullable=True),
        sa.Column("internal_currency", sa.String(length=3), nullable=True),
        sa.Column("provider_amount", sa.BigInteger(), nullable=True),
        sa.Column("provider_currency", sa.String(length=3), nullable=True),
        sa.Column("internal_status", sa.String(length=16), nullable=True),
        sa.Column("provider_status", sa.String(length=16), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("priority", sa.String(length=8), nullable=False),
        sa.Column("sla_due", sa.Date(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "open",
                "investigating",
                "resolved",
                "written_off",
                name="case_status",
                native_enum=False,
                create_constraint=True,
                length=24,
            ),
            nullable=False,
        ),
        sa.Column("assignee", sa.String(length=100), nullable=True),
        sa.Column(
            "resolution",
            sa.Enum(
                "healed",
                "matched_later",
                "cleared",
                "refunded",
                "written_off",
                "dismissed",
                name="case_resolution",
                native_enum=False,
                create_constraint=True,
                length=24,
            ),
            nullable=True,
        ),
        sa.Column("resolution_note", sa.Text(), nullable=True),
        sa.Column("resolved_by", sa.String(length=100), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("journal_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("opened_run_id", sa.BigInteger(), nullable=False),
        sa.Column("last_run_id", sa.BigInteger(), nullable=False),
        sa.Column("runs_seen", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(status IN ('resolved', 'written_off')) = (resolution IS NOT NULL)",
            name=op.f("ck_recon_cases_closed_has_resolution"),
        ),
        sa.CheckConstraint("priority IN ('high', 'medium', 'low')", name=op.f("ck_recon_cases_priority_valid")),
        sa.ForeignKeyConstraint(
            ["journal_id"], ["ledger_journals.id"], name=op.f("fk_recon_cases_journal_id_ledger_journals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recon_cases")),
        sa.UniqueConstraint(
            "provider", "business_date", "reference", name=op.f("uq_recon_cases_provider_business_date_reference")
        ),
    )
    with op.batch_alter_table("recon_cases", schema=None) as batch_op:
        batch_op.create_index("ix_recon_cases_open", ["status", "business_date"], unique=False)

    op.create_table(
        "recon_case_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("case_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=24), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["recon_cases.id"], name=op.f("fk_recon_case_events_case_id_recon_cases")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recon_case_events")),
    )
    with op.batch_alter_table("recon_case_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_recon_case_events_case_id"), ["case_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("recon_case_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recon_case_events_case_id"))

    op.drop_table("recon_case_events")
    with op.batch_alter_table("recon_cases", schema=None) as batch_op:
        batch_op.drop_index("ix_recon_cases_open")

    op.drop_table("recon_cases")
