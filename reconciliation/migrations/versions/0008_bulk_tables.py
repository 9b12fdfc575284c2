"""The two bulk tables lose their per-row foreign-key triggers; payouts get an index.

statement_lines.import_id and recon_items.run_id: the import and the run write and own their rows
in bulk, and the constraint trigger fired per row was 30 % of a 1,000,000-row import. Lines are
found by payout id when a run matches payouts (a partial index: most lines have none).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("recon_items", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_recon_items_run_id_recon_runs"), type_="foreignkey")

    with op.batch_alter_table("statement_lines", schema=None) as batch_op:
        batch_op.create_index(
            "ix_statement_lines_payout",
            ["provider", "payout_id"],
            unique=False,
            postgresql_where=sa.text("payout_id IS NOT NULL"),
        )
        batch_op.drop_constraint(batch_op.f("fk_statement_lines_import_id_statement_imports"), type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("statement_lines", schema=None) as batch_op:
        batch_op.create_foreign_key(
            batch_op.f("fk_statement_lines_import_id_statement_imports"), "statement_imports", ["import_id"], ["id"]
        )
        batch_op.drop_index("ix_statement_lines_payout", postgresql_where=sa.text("payout_id IS NOT NULL"))

    with op.batch_alter_table("recon_items", schema=None) as batch_op:
        batch_op.create_foreign_key(batch_op.f("fk_recon_items_run_id_recon_runs"), "recon_runs", ["run_id"], ["id"])
