"""On PostgreSQL a run's items lose their primary key's B-tree: each item's id went into it, the two classifying
sessions into one hot page at its right edge. Their ids still come from one sequence, unique as the statement lines'
and ledger entries' are (0018, 0019); items are read by their run, through a BRIN index now over ``(run_id, id)``,
and an exception by its id or reference through partial indexes over the exceptions only (healing and refunds:
``runs.exception_item``; a case). A fee chunk's range of ids within its run reads the whole run while the run's
pages are not summarized in the BRIN index yet (until a vacuum), where the key read only its range. Two classifying
sessions side by side, rolled back, alternated: 2.88-3.05 s with the key, 2.46-2.63 s without; the whole bench at
1,000,000 payments: classification 3.59-3.83 -> 2.94-2.95 s, fees 7.14-7.21 -> 7.59-7.60 s (BENCHMARKS.md).

SQLite (the embedded demo) keeps ``id`` as its key and its index by run.

Dropping the key and building the indexes locks the items whole until the upgrade commits (all of an upgrade's
revisions are one transaction): about a second per million items. Upgrade with the worker and beat stopped, as
``payrecon migrate`` is meant to run.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EXCEPTIONS = sa.text("cls <> 'matched'")


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":  # offline (--sql) too
        op.execute("ALTER TABLE recon_items DROP CONSTRAINT pk_recon_items")
        op.drop_index("ix_recon_items_run", table_name="recon_items")
        op.create_index("ix_recon_items_run_id", "recon_items", ["run_id", "id"], postgresql_using="brin")
        op.create_index("ix_recon_items_exception_id", "recon_items", ["id"], unique=True, postgresql_where=EXCEPTIONS)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":  # offline (--sql) too
        op.drop_index("ix_recon_items_exception_id", table_name="recon_items")
        op.drop_index("ix_recon_items_run_id", table_name="recon_items")
        op.create_index("ix_recon_items_run", "recon_items", ["run_id"], postgresql_using="brin")
        op.execute("ALTER TABLE recon_items ADD CONSTRAINT pk_recon_items PRIMARY KEY (id)")
