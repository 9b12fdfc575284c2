"""Statement lines: a BRIN index by import.

A large statement file is loaded by side sessions whose lines wait for their import to commit;
a load whose process died leaves lines that the next import deletes by import id.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("statement_lines", schema=None) as batch_op:
        batch_op.create_index("ix_statement_lines_import", ["import_id"], unique=False, postgresql_using="brin")


def downgrade() -> None:
    with op.batch_alter_table("statement_lines", schema=None) as batch_op:
        batch_op.drop_index("ix_statement_lines_import", postgresql_using="brin")
