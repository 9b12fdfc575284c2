"""The payment state machine, as a table (docs/payments.md)."""

from __future__ import annotations

import pytest

from providers.base import Outcome
from reconciliation.models import FlagKind, PaymentStatus
from reconciliation.states import transition

S = PaymentStatus
O = Outcome  # noqa: E741


@pytest.mark.parametrize(
    ("current", "answer", "status", "money", "flag"),
    [
        (S.REGISTERED, O.SUCCEEDED, S.SUCCEEDED, True, None),
        (S.REGISTERED, O.FAILED, S.FAILED, False, None),
        (S.REGISTERED, O.PENDING, S.PENDING, False, None),
        (S.PENDING, O.SUCCEEDED, S.SUCCEEDED, True, None),
        (S.PENDING, O.FAILED, S.FAILED, False, None),
        (S.PENDING, O.PENDING, S.PENDING, False, None),
        # a success after a refusal or expiry is honoured: the money moved
        (S.FAILED, O.SUCCEEDED, S.SUCCEEDED, True, FlagKind.LATE_SUCCESS),
        (S.EXPIRED, O.SUCCEEDED, S.SUCCEEDED, True, FlagKind.LATE_SUCCESS),
        (S.FAILED, O.PENDING, S.FAILED, False, None),
        (S.EXPIRED, O.FAILED, S.EXPIRED, False, None),
        # nothing after a success takes it back, except a refund
        (S.SUCCEEDED, O.PENDING, S.SUCCEEDED, False, None),
        (S.SUCCEEDED, O.FAILED, S.SUCCEEDED, False, FlagKind.REGRESSION_IGNORED),
        (S.SUCCEEDED, O.SUCCEEDED, S.SUCCEEDED, False, None),
        (S.SUCCEEDED, O.REFUNDED, S.REFUNDED, False, None),
        (S.REFUNDED, O.SUCCEEDED, S.REFUNDED, False, None),
    ],
)
def test_transition_table(
    current: PaymentStatus, answer: Outcome, status: PaymentStatus, money: bool, flag: FlagKind | None
) -> None:
    step = transition(current, answer)
    assert (step.status, step.money_moved, step.flag) == (status, money, flag)
    assert step.note
