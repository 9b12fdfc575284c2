"""Payment flag ``provider_refused``: the provider refused the status question for the payment's own data
(Orange's HTTP 400 when the registered pay_token or amount is not the order's). Asking again changes
nothing, so the payment is no longer re-checked on schedule (nor expired: its status is unknown) and is
flagged for a person; the statement at reconciliation, or a replayed delivery, decides it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FLAG_KINDS_BEFORE = (
    "orphan",
    "amount_mismatch",
    "currency_mismatch",
    "late_success",
    "adopted",
    "regression_ignored",
    "claim_disagrees",
    "healed",
)
FLAG_KINDS = (*FLAG_KINDS_BEFORE, "provider_refused")


def upgrade() -> None:
    _flag_kinds(FLAG_KINDS)


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM payment_flags WHERE kind = 'provider_refused'"))
    _flag_kinds(FLAG_KINDS_BEFORE)


def _flag_kinds(kinds: tuple[str, ...]) -> None:
    """The payment flags' CHECK constraint, with the kinds the code knows."""
    with op.batch_alter_table("payment_flags") as batch:
        batch.drop_constraint(op.f("ck_payment_flags_flag_kind"), type_="check")
        batch.create_check_constraint("flag_kind", sa.column("kind").in_(kinds))
