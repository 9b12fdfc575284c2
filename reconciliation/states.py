"""The payment state machine as a pure function (docs/payments.md).

``registered -> pending -> succeeded | failed | expired``; later ``succeeded -> refunded``.
The provider's answer drives it. A success after failed/expired is honoured and
flagged; a pending or failed answer after a success changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from providers.base import Outcome
from reconciliation.models import FlagKind, PaymentStatus

S = PaymentStatus


@dataclass(frozen=True, slots=True)
class Transition:
    status: PaymentStatus  # the status after the answer (may equal the current one)
    money_moved: bool = False  # post the settlement now (first confirmed success)
    flag: FlagKind | None = None
    note: str = ""


def transition(current: PaymentStatus, answer: Outcome) -> Transition:
    """What a verified provider answer does to a payment in ``current`` status."""
    if current in (S.REGISTERED, S.PENDING):
        if answer is Outcome.SUCCEEDED:
            return Transition(S.SUCCEEDED, money_moved=True, note="confirmed paid")
        if answer is Outcome.FAILED:
            return Transition(S.FAILED, note="confirmed failed")
        if answer is Outcome.PENDING:
            return Transition(S.PENDING, note="still pending")
        # A refund of a payment we never saw paid: the money came and went.
        return Transition(S.REFUNDED, note="refunded before we saw it paid", flag=FlagKind.LATE_SUCCESS)
    if current in (S.FAILED, S.EXPIRED):
        if answer is Outcome.SUCCEEDED:
            return Transition(
                S.SUCCEEDED,
                money_moved=True,
                flag=FlagKind.LATE_SUCCESS,
                note=f"success after {current.value}: honoured, the money moved",
            )
        if answer is Outcome.REFUNDED:
            return Transition(S.REFUNDED, flag=FlagKind.LATE_SUCCESS, note=f"refunded after {current.value}")
        return Transition(current, note=f"{answer.value} answer leaves a {current.value} payment as it is")
    if current is S.SUCCEEDED:
        if answer is Outcome.SUCCEEDED:
            return Transition(S.SUCCEEDED, note="already succeeded")
        if answer is Outcome.REFUNDED:
            return Transition(S.REFUNDED, note="refunded by the provider")
        if answer is Outcome.PENDING:
            # Push-confirm operators notify WAITING after the fact; nothing to see.
            return Transition(S.SUCCEEDED, note="pending answer after success ignored")
        return Transition(
            S.SUCCEEDED,
            flag=FlagKind.REGRESSION_IGNORED,
            note="failed answer after success ignored",
        )
    # REFUNDED is terminal.
    return Transition(current, note=f"{answer.value} answer after refund ignored")
