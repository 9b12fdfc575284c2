"""Payments get an index on their provider, then the time that places them in a business day,
``coalesce(paid_at, registered_at, created_at)`` (``payments.business_time``): the nightly classification and
the status-API run read one provider's day of payments by it, the day-at-a-glance report each provider's (the
provider first: another provider's busy day is not read to find this one's). Without it each of them read every
payment ever stored, and a merchant's nightly run grew with its history: classification took 1.2-1.6 s to find
10,417 payments among 6,000,000 instead of 8-9 ms (``bench/day_lookup.py``, BENCHMARKS.md).

Building it holds a lock that makes writes to ``payments`` wait until the upgrade commits (all of an upgrade's
revisions are one transaction), the build about a second per million payments. Upgrade with the worker and beat
stopped, as ``payrecon migrate`` is meant to run (0018 and 0019 lock their tables whole).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_payments_business_time",
        "payments",
        ["provider", sa.text("coalesce(paid_at, registered_at, created_at)")],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_payments_business_time", table_name="payments")
