"""Subscription lifecycle: grants of every kind (refunds, manual, revocations) with audit,
plans' grace periods, expiry reminders sent.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "subscription_reminders",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("subscription_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("days_before", sa.Integer(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_subscription_reminders_subscription_id_subscriptions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_reminders")),
        sa.UniqueConstraint(
            "subscription_id",
            "ends_at",
            "days_before",
            name=op.f("uq_subscription_reminders_subscription_id_ends_at_days_before"),
        ),
    )
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.add_column(sa.Column("grace_days", sa.Integer(), server_default="0", nullable=False))

    with op.batch_alter_table("subscription_grants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), server_default="payment", nullable=False))
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("granted_by", sa.String(length=200), nullable=True))
        batch_op.alter_column(
            "payment_id", existing_type=sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        )
        batch_op.drop_constraint(batch_op.f("uq_subscription_grants_payment_id"), type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_subscription_grants_payment_id_kind"), ["payment_id", "kind"])
        # Refunds and revocations shorten access: negative days.
        batch_op.drop_constraint(op.f("ck_subscription_grants_days_positive"), type_="check")
        batch_op.create_check_constraint("days_nonzero", sa.column("days") != 0)


def downgrade() -> None:
    with op.batch_alter_table("subscription_grants", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_subscription_grants_days_nonzero"), type_="check")
        batch_op.create_check_constraint("days_positive", sa.column("days") > 0)
        batch_op.drop_constraint(batch_op.f("uq_subscription_grants_payment_id_kind"), type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_subscription_grants_payment_id"), ["payment_id"])
        batch_op.alter_column(
            "payment_id", existing_type=sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        )
        batch_op.drop_column("granted_by")
        batch_op.drop_column("reason")
        batch_op.drop_column("kind")

    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.drop_column("grace_days")

    op.drop_table("subscription_reminders")
