"""On PostgreSQL, a function that summarizes the new page ranges of the items' BRIN index (0020), run as its owner:
a run's fees read its items a range of ids at a time (``runs._FEES_DUE``, ten chunks for a million items), and
until its pages are summarized (a vacuum, or this) the index gives each chunk every page written since the last
summary, the whole run, where the key read only the chunk's range. ``brin_summarize_new_values`` may be called by
the index's owner only, which the application role is not (docs/database-roles.md): ``recon_items_summarize()``
runs as the migration role (``SECURITY DEFINER``) and does only that, its ``search_path`` pinned to the tables'
schema as the ledger guard's functions are (0013), so it cannot be made to summarize another index; only the
application role may run it (``migrate --grant-to``).

SQLite (the embedded demo) has no BRIN index: nothing to add.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    schema = op.get_bind().execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
    op.execute(
        "CREATE FUNCTION recon_items_summarize() RETURNS integer LANGUAGE sql SECURITY DEFINER"
        f" SET search_path = pg_catalog, {schema}, pg_temp"
        " AS $$ SELECT brin_summarize_new_values('ix_recon_items_run_id'::regclass) $$"
    )
    # Summarizing locks the items against vacuums and other summaries until the caller's transaction ends: the
    # application role is granted it (``migrate --grant-to``), not every role that may connect.
    op.execute("REVOKE EXECUTE ON FUNCTION recon_items_summarize() FROM PUBLIC")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP FUNCTION recon_items_summarize()")
