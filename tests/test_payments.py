"""Payments (``reconciliation.payments``): registration, flags, the re-check schedule and lease, what a run
asks the provider about, and provider answers settled on the payment row. Real PostgreSQL, the module called
directly; the whole webhook path is ``tests/test_pipeline.py``, the state machine's table ``tests/test_states.py``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from providers.base import Outcome, VerifiedStatus
from providers.sandbox.client import SandboxClient
from reconciliation import ledger, payments
from reconciliation.db import transaction
from reconciliation.models import FlagKind, OutboxEvent, Payment, PaymentFlag, PaymentStatus
from schemas.messages import PaymentRegistration
from tests.helpers import new_reference, registration
from tests.test_lifecycle import events, settled, subscription
from worker.runtime import Runtime

T0 = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


def context(rt: Runtime, now: datetime = T0) -> payments.Context:
    return payments.Context(now=now, tz=rt.settings.timezone, policy=payments.RecheckPolicy((60, 300), 3600))


def register(rt: Runtime, reference: str, now: datetime = T0, **over: Any) -> tuple[payments.RegisterOutcome, int]:
    with transaction(rt.sessions) as session:
        reg = PaymentRegistration.model_validate(registration(reference, **over))
        outcome, payment = payments.register(session, reg, "{}", context(rt, now))
        return outcome, payment.id


def row(rt: Runtime, payment_id: int) -> Payment:
    with rt.sessions() as session:
        found = session.get(Payment, payment_id)
        assert found is not None
        return found


def test_the_next_check_follows_the_schedule_and_its_last_delay_repeats() -> None:
    policy = payments.RecheckPolicy(schedule=(60, 300, 900), give_up_after=86400)
    assert [policy.next_check(n, T0) - T0 for n in (0, 1, 2, 3, 10)] == [
        timedelta(seconds=s) for s in (60, 300, 900, 900, 900)
    ]


def test_a_registration_is_stored_once_and_due_for_its_first_check(rt: Runtime) -> None:
    ref = new_reference()
    outcome, payment_id = register(rt, ref)
    stored = row(rt, payment_id)
    assert outcome is payments.RegisterOutcome.CREATED
    assert (stored.status, stored.registered_at, stored.next_check_at) == (
        PaymentStatus.REGISTERED,
        T0,
        T0 + timedelta(seconds=60),
    )
    again, same = register(rt, ref, now=T0 + timedelta(minutes=5))  # the app sent it twice: nothing changes
    assert (again, same) == (payments.RegisterOutcome.DUPLICATE, payment_id)
    assert row(rt, payment_id).next_check_at == T0 + timedelta(seconds=60)


def test_the_same_reference_with_other_data_is_refused_naming_what_is_registered(rt: Runtime) -> None:
    ref = new_reference()
    register(rt, ref)
    with pytest.raises(payments.RegistrationConflict, match="other data \\(amount 5000 XOF, account 'tech-42'"):
        register(rt, ref, amount=6000)
    with pytest.raises(payments.RegistrationConflict, match="is sold in XOF, not XAF"):
        register(rt, new_reference(), currency="XAF")
    with rt.sessions() as session:
        assert session.scalars(select(Payment.amount)).all() == [5000]  # neither wrote anything


def test_a_flag_is_raised_once_per_kind_and_keeps_its_first_detail(rt: Runtime) -> None:
    _, payment_id = register(rt, new_reference())
    for detail in ("first", "second"):
        with transaction(rt.sessions) as session:
            payment = session.get(Payment, payment_id)
            assert payment is not None
            payments.flag(session, payment, FlagKind.AMOUNT_MISMATCH, detail)
    with rt.sessions() as session:
        flags = session.execute(select(PaymentFlag.kind, PaymentFlag.detail)).all()
        told = session.scalars(select(OutboxEvent.payload).where(OutboxEvent.type == "payment.flagged")).all()
    assert flags == [(FlagKind.AMOUNT_MISMATCH, "first")]
    assert [(e["flag"], e["detail"]) for e in told] == [("amount_mismatch", "first")]  # told once


@pytest.mark.parametrize(
    ("claimed", "read"),
    [(" successful ", "succeeded"), ("COMPLETE/SUCCEEDED", "succeeded"), ("refused", "failed"),
     ("TRANSACTION_CANCEL", "failed"), ("waiting_for_customer", "pending"), ("PAID!", "other"), ("", "other")],
)  # fmt: skip
def test_a_callbacks_status_word_reads_as_one_of_four(claimed: str, read: str) -> None:
    assert payments.normalize_claim(claimed) == read


def test_due_payments_are_leased_oldest_first_and_final_or_later_ones_are_not(rt: Runtime) -> None:
    ids = [register(rt, new_reference(), now=T0 + timedelta(seconds=n))[1] for n in range(4)]
    with transaction(rt.sessions) as session:
        final = session.get(Payment, ids[0])
        assert final is not None
        final.status = PaymentStatus.FAILED
    now = T0 + timedelta(seconds=62)  # the first three are due (60 s after each registration)
    with transaction(rt.sessions) as session:
        leased = payments.lease_due(session, now, limit=10, lease=timedelta(minutes=5))
    assert leased == [ids[1], ids[2]]
    assert row(rt, ids[1]).next_check_at == now + timedelta(minutes=5)
    with transaction(rt.sessions) as session:
        assert payments.lease_due(session, now, limit=10, lease=timedelta(minutes=5)) == []


def test_a_run_without_a_statement_asks_about_the_unfinished_and_the_successes_of_its_window(rt: Runtime) -> None:
    start, end = T0, T0 + timedelta(days=1)
    refs = {name: new_reference() for name in ("pending", "paid", "failed", "before", "paid_later", "wave")}
    ids = {name: register(rt, ref, now=start + timedelta(hours=1))[1] for name, ref in refs.items() if name != "wave"}
    register(rt, refs["wave"], provider="wave", now=start + timedelta(hours=1))
    with transaction(rt.sessions) as session:
        for name, status, paid_at in (
            ("pending", PaymentStatus.PENDING, None), ("paid", PaymentStatus.SUCCEEDED, start + timedelta(hours=2)),
            ("failed", PaymentStatus.FAILED, None), ("paid_later", PaymentStatus.SUCCEEDED, end + timedelta(hours=1)),
        ):  # fmt: skip
            payment = session.get(Payment, ids[name])
            assert payment is not None
            payment.status, payment.paid_at = status, paid_at
        before = session.get(Payment, ids["before"])
        assert before is not None
        before.registered_at = start - timedelta(seconds=1)
    with rt.sessions() as session:
        asked = {p.reference for p in payments.to_confirm(session, "cinetpay", start, end)}
    assert asked == {refs["pending"], refs["paid"]}  # paid the next day: that day's; failed: final


def test_a_refund_reported_by_the_provider_has_the_same_effects(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = settled(rt, sandbox, "tech-2")
    with transaction(rt.sessions) as session:
        payment = payments.find(session, "cinetpay", ref, lock=True)
        assert payment is not None
        answer = VerifiedStatus(reference=ref, outcome=Outcome.REFUNDED, provider_status="REFUNDED",
                                provider_code="660", amount=5000, currency="XOF")  # fmt: skip
        payments.apply_answer(session, payment, answer, rt.context("cinetpay"), trigger="recheck")
    sub = subscription(rt, "tech-2")
    assert sub.active is False  # its only 30 days taken back: access ends now
    with rt.sessions() as session:
        assert {b.account: b.balance for b in ledger.balances(session)}["revenue:subscriptions"] == 0
    assert len(events(rt, "payment.refunded")) == 1 and len(events(rt, "subscription.shortened")) == 1
