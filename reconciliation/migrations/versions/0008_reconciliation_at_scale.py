"""Reconciliation at scale: the bulk tables lose per-row triggers and costly B-trees.

A 1,000,000-payment day writes a million statement lines and a million reconciliation items,
each in two sessions side by side. Measured per million rows (BENCHMARKS.md):

- statement_lines.import_id and recon_items.run_id lose their foreign keys: the import and the
  run write and own these rows in bulk, and the constraint trigger fired per row was 30 % of an
  import;
- statement_lines are read by (provider, business day), never by reference alone: the day index
  drops the reference, whose random keys cost more than the rest of an import; payouts get a
  partial index; a BRIN index by import finds the lines of a load that never committed;
- recon_items: a run writes its items together, so a BRIN index finds them by block range; the
  reference index covers exceptions only (matched items are found through their run);
- both tables' id sequences hand out 1,000 ids per session (PostgreSQL): with one, the two
  sessions queued on the sequence page.

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

SEQUENCES = ("statement_lines_id_seq", "recon_items_id_seq")
NOT_MATCHED = sa.text("cls <> 'matched'")
WITH_PAYOUT = sa.text("payout_id IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("recon_items", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_recon_items_run_id_recon_runs"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_recon_items_reference"))
        batch_op.drop_index(batch_op.f("ix_recon_items_run_class"))
        batch_op.create_index(
            "ix_recon_items_exception", ["reference"], postgresql_where=NOT_MATCHED, sqlite_where=NOT_MATCHED
        )
        batch_op.create_index("ix_recon_items_run", ["run_id"], postgresql_using="brin")

    with op.batch_alter_table("statement_lines", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_statement_lines_import_id_statement_imports"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_statement_lines_day"))
        batch_op.create_index("ix_statement_lines_day", ["provider", "business_date"])
        batch_op.create_index("ix_statement_lines_payout", ["provider", "payout_id"], postgresql_where=WITH_PAYOUT)
        batch_op.create_index("ix_statement_lines_import", ["import_id"], postgresql_using="brin")

    if op.get_bind().dialect.name == "postgresql":
        for name in SEQUENCES:
            op.execute(f"ALTER SEQUENCE {name} CACHE 1000")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for name in SEQUENCES:
            op.execute(f"ALTER SEQUENCE {name} CACHE 1")
        # Loads that never committed left lines without an import (and their stage tables): the
        # foreign key restored below would refuse them.
        stages = bind.execute(
            sa.text("SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE 'payrecon\\_stage\\_%'")
        ).scalars()
        for name in list(stages):
            op.execute(f'DROP TABLE IF EXISTS "{name}"')
    op.execute(
        "DELETE FROM statement_lines WHERE import_id IS NOT NULL "
        "AND import_id NOT IN (SELECT id FROM statement_imports)"
    )
    op.execute("DELETE FROM recon_items WHERE run_id NOT IN (SELECT id FROM recon_runs)")

    with op.batch_alter_table("statement_lines", schema=None) as batch_op:
        batch_op.drop_index("ix_statement_lines_import", postgresql_using="brin")
        batch_op.drop_index("ix_statement_lines_payout", postgresql_where=WITH_PAYOUT)
        batch_op.drop_index("ix_statement_lines_day")
        batch_op.create_index(batch_op.f("ix_statement_lines_day"), ["provider", "business_date", "reference"])
        batch_op.create_foreign_key(
            batch_op.f("fk_statement_lines_import_id_statement_imports"), "statement_imports", ["import_id"], ["id"]
        )

    with op.batch_alter_table("recon_items", schema=None) as batch_op:
        batch_op.drop_index("ix_recon_items_run", postgresql_using="brin")
        batch_op.drop_index("ix_recon_items_exception", postgresql_where=NOT_MATCHED, sqlite_where=NOT_MATCHED)
        batch_op.create_index(batch_op.f("ix_recon_items_run_class"), ["run_id", "cls"])
        batch_op.create_index(batch_op.f("ix_recon_items_reference"), ["reference"])
        batch_op.create_foreign_key(batch_op.f("fk_recon_items_run_id_recon_runs"), "recon_runs", ["run_id"], ["id"])
