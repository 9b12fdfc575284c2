"""On PostgreSQL the statement lines that name a payout get an index by their provider's day: a run's payouts start
from the payout ids of its day's lines (``matching._DAY_PAYOUTS``), which the key ``(provider, business_date, id)``
found by reading every line of the day and keeping those with a payout id. For a provider whose statements name no
payout (CinetPay, MTN MoMo, Orange Money) that was every line for nothing: 0.37-0.40 s of a 1,000,000-line day's
classification, in one session while the other core waited (BENCHMARKS.md); the index holds none of their lines,
so costs their imports nothing. A Wave line that names its payout costs its import one entry more.

SQLite (the embedded demo) reads the day through its day index, as before.

Building the index reads the lines once and blocks writes to them until the upgrade commits (all of an upgrade's
revisions are one transaction). Upgrade with the worker and beat stopped, as ``payrecon migrate`` is meant to run.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WITH_PAYOUT = sa.text("payout_id IS NOT NULL")


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":  # offline (--sql) too
        op.create_index(
            "ix_statement_lines_payout_day",
            "statement_lines",
            ["provider", "business_date"],
            postgresql_where=WITH_PAYOUT,
        )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":  # offline (--sql) too
        op.drop_index("ix_statement_lines_payout_day", table_name="statement_lines")
