"""Durable work: a received inbox row is work with a due time and a lease, claimed by any worker.

- inbox.next_attempt_at: when a ``received`` row is due, or when the lease of the worker that
  holds it ends; a partial index over ``received`` rows finds the due ones. Its server default is
  "now": rows already waiting when this migration runs, and rows a worker of the previous version
  inserts during a rolling upgrade, are due at once, so nothing a broker message held is lost;
- inbox.opened_at: when the row's work began (its arrival, or a reopening after a give-up): the
  give-up and awaiting-registration windows count from it;
- inbox.attempts / errors / deferrals: provider failures, internal errors and waits that are not
  failures (call budget, awaiting a registration), so that the schedule lives in the row;
- inbox.budget_slot: the call-budget stage whose token the row already holds;
- inbox.awaiting_registration: put off until its registration arrives, which wakes it;
- verifications.asked_at: when the provider was asked, so that a delivery that arrived later is
  never taken as answered by it;
- retention (``payrecon purge``) finds old rows by inbox.last_seen_at, dead_letters.created_at
  and verifications.created_at; verifications.inbox_id is indexed, so unlinking purged rows is cheap.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RECEIVED = sa.text("status = 'received'")


def upgrade() -> None:
    with op.batch_alter_table("inbox", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True)
        )
        batch_op.add_column(
            sa.Column("opened_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=True)
        )
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("errors", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("deferrals", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("budget_slot", sa.String(length=16), nullable=True))
        batch_op.add_column(
            sa.Column("awaiting_registration", sa.Boolean(), server_default=sa.text("false"), nullable=False)
        )
        batch_op.create_index(
            "ix_inbox_due", ["next_attempt_at"], unique=False, postgresql_where=RECEIVED, sqlite_where=RECEIVED
        )
        batch_op.create_index("ix_inbox_last_seen_at", ["last_seen_at"], unique=False)
    # Adding the columns gave every existing row "now"; only unfinished work keeps a due time.
    op.execute("UPDATE inbox SET next_attempt_at = NULL, opened_at = NULL WHERE status <> 'received'")
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dead_letters_created_at"), ["created_at"], unique=False)
    with op.batch_alter_table("verifications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("asked_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_verifications_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_verifications_inbox_id"), ["inbox_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("verifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_verifications_inbox_id"))
        batch_op.drop_index(batch_op.f("ix_verifications_created_at"))
        batch_op.drop_column("asked_at")
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dead_letters_created_at"))
    with op.batch_alter_table("inbox", schema=None) as batch_op:
        batch_op.drop_index("ix_inbox_last_seen_at")
        batch_op.drop_index("ix_inbox_due", postgresql_where=RECEIVED, sqlite_where=RECEIVED)
        batch_op.drop_column("awaiting_registration")
        batch_op.drop_column("budget_slot")
        batch_op.drop_column("deferrals")
        batch_op.drop_column("errors")
        batch_op.drop_column("attempts")
        batch_op.drop_column("opened_at")
        batch_op.drop_column("next_attempt_at")
