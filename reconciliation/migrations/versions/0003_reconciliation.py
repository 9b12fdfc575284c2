"""Reconciliation: statement lines and imports, runs and their classified items.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    _flag_kinds(FLAG_KINDS)

    op.create_table(
        "recon_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("business_date", sa.Date(), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "counts", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("previous_run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["previous_run_id"], ["recon_runs.id"], name=op.f("fk_recon_runs_previous_run_id_recon_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recon_runs")),
    )
    with op.batch_alter_table("recon_runs", schema=None) as batch_op:
        batch_op.create_index("ix_recon_runs_day", ["provider", "business_date"], unique=False)

    op.create_table(
        "statement_imports",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column(
            "imported_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_statement_imports")),
        sa.UniqueConstraint("provider", "sha256", name=op.f("uq_statement_imports_provider_sha256")),
    )
    op.create_table(
        "recon_items",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("cls", sa.String(length=24), nullable=False),
        sa.Column("reference", sa.String(length=100), nullable=True),
        sa.Column("payment_id", sa.BigInteger(), nullable=True),
        sa.Column("provider_txn_id", sa.String(length=200), nullable=True),
        sa.Column("internal_status", sa.String(length=16), nullable=True),
        sa.Column("internal_amount", sa.BigInteger(), nullable=True),
        sa.Column("internal_currency", sa.String(length=3), nullable=True),
        sa.Column("provider_status", sa.String(length=16), nullable=True),
        sa.Column("provider_amount", sa.BigInteger(), nullable=True),
        sa.Column("provider_currency", sa.String(length=3), nullable=True),
        sa.Column("provider_lines", sa.Integer(), nullable=False),
        sa.Column("fee", sa.BigInteger(), nullable=True),
        sa.Column("expected_fee", sa.BigInteger(), nullable=True),
        sa.Column("difference", sa.BigInteger(), nullable=True),
        sa.Column("healed", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["recon_runs.id"], name=op.f("fk_recon_items_run_id_recon_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recon_items")),
    )
    with op.batch_alter_table("recon_items", schema=None) as batch_op:
        batch_op.create_index("ix_recon_items_reference", ["reference"], unique=False)
        batch_op.create_index("ix_recon_items_run_class", ["run_id", "cls"], unique=False)

    op.create_table(
        "statement_lines",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("business_date", sa.Date(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("import_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("line_no", sa.Integer(), nullable=True),
        sa.Column("provider_txn_id", sa.String(length=200), nullable=True),
        sa.Column("reference", sa.String(length=100), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("fee", sa.BigInteger(), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("payout_id", sa.String(length=200), nullable=True),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["import_id"], ["statement_imports.id"], name=op.f("fk_statement_lines_import_id_statement_imports")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_statement_lines")),
    )
    with op.batch_alter_table("statement_lines", schema=None) as batch_op:
        batch_op.create_index("ix_statement_lines_day", ["provider", "business_date", "reference"], unique=False)


def downgrade() -> None:
    _flag_kinds(FLAG_KINDS_BEFORE)

    with op.batch_alter_table("statement_lines", schema=None) as batch_op:
        batch_op.drop_index("ix_statement_lines_day")

    op.drop_table("statement_lines")
    with op.batch_alter_table("recon_items", schema=None) as batch_op:
        batch_op.drop_index("ix_recon_items_run_class")
        batch_op.drop_index("ix_recon_items_reference")

    op.drop_table("recon_items")
    op.drop_table("statement_imports")
    with op.batch_alter_table("recon_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_recon_runs_day")

    op.drop_table("recon_runs")


FLAG_KINDS_BEFORE = (
    "orphan",
    "amount_mismatch",
    "currency_mismatch",
    "late_success",
    "adopted",
    "regression_ignored",
    "claim_disagrees",
)
FLAG_KINDS = (*FLAG_KINDS_BEFORE, "healed")


def _flag_kinds(kinds: tuple[str, ...]) -> None:
    """The payment flags' CHECK constraint, with the kinds the code knows."""
    with op.batch_alter_table("payment_flags") as batch:
        batch.drop_constraint(op.f("ck_payment_flags_flag_kind"), type_="check")
        batch.create_check_constraint("flag_kind", sa.column("kind").in_(kinds))
