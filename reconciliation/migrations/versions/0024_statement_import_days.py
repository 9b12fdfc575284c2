"""The days each imported statement file has lines on, so that a newer file replaces the lines an older one gave.

Two files of one day (a portal export downloaded again with a late row, two overlapping date ranges, the demo run
twice on one database) were both kept: every payment of the day had two lines and came out a duplicate, with no
fee posted, and a payout counted on both sides at twice its amount matched and was posted to the bank account at
twice it. ``statement_import_days`` says, per provider and business day, which imports have lines on it: an
import whose days another import shares replaces that import's lines of the same transactions on those days
(``statements.files.import_file``). Where no day is shared it costs nothing more; a shared day, one pass over its
lines (a Wave file's payout row, paid the next morning, makes each day's file share a day with the next one's).

The days of the imports made before are filled in from their lines (those of committed imports). That reads
every line imported from a file once. Upgrade with the worker and beat stopped, as ``payrecon migrate`` is meant
to run. Lines two files gave before the upgrade stay twice until one of those files' days is imported again.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "statement_import_days",
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("business_date", sa.Date(), nullable=False),
        sa.Column("import_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.ForeignKeyConstraint(
            ["import_id"],
            ["statement_imports.id"],
            name=op.f("fk_statement_import_days_import_id_statement_imports"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("provider", "business_date", "import_id", name=op.f("pk_statement_import_days")),
    )
    op.create_index(op.f("ix_statement_import_days_import_id"), "statement_import_days", ["import_id"])
    op.execute(
        "INSERT INTO statement_import_days (provider, business_date, import_id) "
        "SELECT DISTINCT l.provider, l.business_date, l.import_id FROM statement_lines l "
        "JOIN statement_imports i ON i.id = l.import_id "
        "WHERE l.source = 'file'"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_statement_import_days_import_id"), table_name="statement_import_days")
    op.drop_table("statement_import_days")
