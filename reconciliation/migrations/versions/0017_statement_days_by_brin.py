"""A day's statement lines are found by a BRIN index on (provider, business_date), not a B-tree.

Lines are appended an import (or a listing refresh) at a time, so a provider's day lies in a few runs of
pages: a block-range index finds them as well for a run's classification, the healing and the glance, at a
cost per line close to nothing, where the B-tree took an index entry per line, most of them equal. On a
1,000,000-line import (two sessions, CPU of their backends): about a tenth of the import (BENCHMARKS.md).
SQLite (the demo) keeps an ordinary index.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_statement_lines_day", table_name="statement_lines")
    op.create_index(
        "ix_statement_lines_day", "statement_lines", ["provider", "business_date"], postgresql_using="brin"
    )


def downgrade() -> None:
    op.drop_index("ix_statement_lines_day", table_name="statement_lines")
    op.create_index("ix_statement_lines_day", "statement_lines", ["provider", "business_date"])
