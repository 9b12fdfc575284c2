"""One statement file per provider and business day: the days each import gives, and an index of the payout rows.

Two imports of one day (a portal export downloaded again with a late row, two overlapping date ranges) were both
kept: every payment of the day had two lines and came out a duplicate, with no fee posted, and a payout counted on
both sides at twice its amount matched and was posted to the bank account at twice it. ``statement_import_days``
holds, per provider and day, the import that gives that day's payments (a day on which a file has only payout rows
is not one of its days): its key refuses a second one, also when two imports of the day run at once; ``payrecon
statements import --replace`` takes the new file's lines for the day instead (``statements.files.import_file``).
``ix_statement_lines_payout_rows`` indexes the payout rows alone, a few a day: an import's by day, and those of a
payout id a newer import gives again, which the newer one replaces.

The days of the imports made before are filled in from their lines: for each provider and day with a payment line
from a file, the newest import that has one (where two imports give a day already, the older one's lines stay
until it is imported again with ``--replace``). That reads every line imported from a file once. Upgrade with the
worker and beat stopped, as ``payrecon migrate`` is meant to run.

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

PAYOUT_ROWS = sa.text("status = 'payout'")


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
        sa.PrimaryKeyConstraint("provider", "business_date", name=op.f("pk_statement_import_days")),
    )
    op.create_index(op.f("ix_statement_import_days_import_id"), "statement_import_days", ["import_id"])
    op.create_index(
        "ix_statement_lines_payout_rows",
        "statement_lines",
        ["provider", "business_date", "payout_id"],
        postgresql_where=PAYOUT_ROWS,
        sqlite_where=PAYOUT_ROWS,
    )
    op.execute(
        "INSERT INTO statement_import_days (provider, business_date, import_id) "
        "SELECT l.provider, l.business_date, max(l.import_id) FROM statement_lines l "
        "JOIN statement_imports i ON i.id = l.import_id "
        "WHERE l.source = 'file' AND l.status <> 'payout' "
        "GROUP BY l.provider, l.business_date"
    )


def downgrade() -> None:
    op.drop_index("ix_statement_lines_payout_rows", table_name="statement_lines")
    op.drop_index(op.f("ix_statement_import_days_import_id"), table_name="statement_import_days")
    op.drop_table("statement_import_days")
