"""The bulk tables' id sequences hand out ids 1,000 at a time to each session (PostgreSQL).

A large statement file and a large run are written by two sessions side by side; with a cache of
one, both take every id from the same sequence page, and the lock on it was their bottleneck.
Ids stay unique; they are no longer in commit order, and a session that ends leaves a gap.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEQUENCES = ("statement_lines_id_seq", "recon_items_id_seq")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in SEQUENCES:
            op.execute(f"ALTER SEQUENCE {name} CACHE 1000")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in SEQUENCES:
            op.execute(f"ALTER SEQUENCE {name} CACHE 1")
