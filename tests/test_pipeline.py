"""The webhook pipeline and the state machine on real PostgreSQL, verifying over real HTTP
against the sandbox. Pipeline functions are called in-process here; tests/test_e2e.py runs
the same flows through a real worker process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from providers.sandbox.client import SandboxClient
from reconciliation.models import (
    DeadLetter,
    FlagKind,
    InboxDelivery,
    InboxStatus,
    Journal,
    Payment,
    PaymentStatus,
    SubscriptionGrant,
    Verification,
)
from reconciliation.views import balances
from tests.helpers import age, new_reference, registration, resigned
from worker import pipeline
from worker.pipeline import Disposition
from worker.runtime import Runtime


def payment(rt: Runtime, reference: str) -> Payment:
    with rt.sessions() as session:
        found = session.scalars(select(Payment).where(Payment.reference == reference)).one()
        found.flags  # noqa: B018 - load before the session closes
        return found


def flags(rt: Runtime, reference: str) -> set[FlagKind]:
    return {f.kind for f in payment(rt, reference).flags}


def count(rt: Runtime, model: Any, *where: Any) -> int:
    with rt.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def ledger(rt: Runtime) -> dict[str, int]:
    with rt.sessions() as session:
        return {row["account"]: row["balance"] for row in balances(session) if row["balance"]}


def register(rt: Runtime, reference: str, **over: Any) -> pipeline.Result:
    return pipeline.register_payment(rt, registration(reference, **over))


def paid(sandbox: SandboxClient, reference: str, amount: int = 5000, **options: Any) -> dict[str, Any]:
    sandbox.create_cinetpay(reference, amount, fate=options.pop("fate", "accepted"), **options)
    return sandbox.cinetpay_notification(reference)


def test_accepted_payment_settles_with_ledger_and_subscription(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    assert register(rt, ref).outcome is Disposition.CREATED
    result = pipeline.ingest_webhook(rt, paid(sandbox, ref))
    assert result.outcome is Disposition.ACCEPTED
    p = payment(rt, ref)
    assert (p.status, p.settled, p.confirmed_amount, p.confirmed_currency) == (
        PaymentStatus.SUCCEEDED,
        True,
        5000,
        "XOF",
    )
    assert p.paid_at is not None and p.provider_transaction_id
    assert ledger(rt) == {"provider_clearing:cinetpay": 5000, "revenue:subscriptions": -5000}
    assert count(rt, SubscriptionGrant) == 1
    with rt.sessions() as session:
        v = session.scalars(select(Verification)).one()
    assert (v.trigger, v.outcome, v.provider_status, v.claimed_amount, v.answered_amount) == (
        "webhook",
        "succeeded",
        "ACCEPTED",
        5000,
        5000,
    )


def test_refused_payment_fails_without_money_or_access(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    register(rt, ref)
    sandbox.create_cinetpay(ref, 5000, fate="refused")
    pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(ref))
    assert payment(rt, ref).status is PaymentStatus.FAILED
    assert ledger(rt) == {}
    assert count(rt, SubscriptionGrant) == 0


def test_pending_then_accepted_without_a_second_callback(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    register(rt, ref)
    sandbox.create_cinetpay(ref, 5000, fate="waiting_then_accepted", pending_checks=1)
    pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(ref))
    p = payment(rt, ref)
    assert p.status is PaymentStatus.PENDING and p.next_check_at is not None
    # The janitor finds it once due, with no further webhook.
    later = p.next_check_at + timedelta(seconds=1)
    due = pipeline.claim_due(rt, now=later)
    assert due == [p.id]
    assert pipeline.claim_due(rt, now=later) == []  # leased: not handed out twice
    assert pipeline.verify_payment(rt, p.id, now=later).outcome is Disposition.ACCEPTED
    assert payment(rt, ref).status is PaymentStatus.SUCCEEDED
    assert count(rt, SubscriptionGrant) == 1
    assert count(rt, Verification) == 2


def test_rechecks_back_off_and_give_up_as_expired(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    register(rt, ref)
    sandbox.create_cinetpay(ref, 5000, fate="waiting")
    start = payment(rt, ref).registered_at
    assert start is not None
    delays = []
    now = start
    for _ in range(3):
        pipeline.verify_payment(rt, payment(rt, ref).id, now=now)
        p = payment(rt, ref)
        assert p.status is PaymentStatus.PENDING
        delays.append((p.next_check_at - now).total_seconds())
        now = p.next_check_at
    assert delays == [1, 1, 2]  # PAYRECON_RECHECK_SCHEDULE=1,1,2, then the last delay repeats
    give_up = start + timedelta(seconds=rt.profile("cinetpay").give_up_after)
    pipeline.verify_payment(rt, payment(rt, ref).id, now=give_up)
    p = payment(rt, ref)
    assert p.status is PaymentStatus.EXPIRED and p.next_check_at is None
    with rt.sessions() as session:
        last = session.scalars(select(Verification).order_by(Verification.id.desc())).first()
    assert last is not None and "expired" in last.decision


def test_forged_notification_is_quarantined_without_an_api_call(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    register(rt, ref)
    sandbox.create_cinetpay(ref, 5000)
    result = pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(ref, forged=True))
    assert result.outcome is Disposition.FORGED
    assert sandbox.get_cinetpay(ref)["check_count"] == 0
    assert payment(rt, ref).status is PaymentStatus.REGISTERED
    assert count(rt, InboxDelivery, InboxDelivery.status == InboxStatus.FORGED) == 1
    assert ledger(rt) == {}


def test_unsigned_notification_is_forged(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    register(rt, ref)
    sandbox.create_cinetpay(ref, 5000)
    envelope = sandbox.cinetpay_notification(ref)
    envelope["headers"] = {k: v for k, v in envelope["headers"].items() if k.lower() != "x-token"}
    assert pipeline.ingest_webhook(rt, envelope).outcome is Disposition.FORGED
    assert sandbox.get_cinetpay(ref)["check_count"] == 0


@pytest.mark.parametrize(
    ("options", "flag", "held"),
    [
        ({"confirm_amount": 100}, FlagKind.AMOUNT_MISMATCH, 100),
        ({"confirm_currency": "XAF"}, FlagKind.CURRENCY_MISMATCH, 5000),
    ],
)
def test_mismatch_grants_nothing_and_holds_the_money_in_suspense(
    rt: Runtime, sandbox: SandboxClient, options: dict[str, Any], flag: FlagKind, held: int
) -> None:
    ref = new_reference()
    register(rt, ref)
    sandbox.create_cinetpay(ref, 5000, **options)
    assert pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(ref)).outcome is Disposition.MISMATCH
    p = payment(rt, ref)
    assert (p.status, p.settled) == (PaymentStatus.SUCCEEDED, False)
    assert flag in flags(rt, ref)
    assert count(rt, SubscriptionGrant) == 0
    assert ledger(rt) == {"provider_clearing:cinetpay": held, "suspense": -held}


def test_tampered_notification_amount_never_decides(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    register(rt, ref)
    sandbox.create_cinetpay(ref, 5000)
    envelope = sandbox.cinetpay_notification(ref, tamper={"cpm_amount": "1"})
    assert pipeline.ingest_webhook(rt, envelope).outcome is Disposition.FORGED
    assert payment(rt, ref).status is PaymentStatus.REGISTERED


def test_unknown_reference_is_an_orphan_in_suspense(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    assert pipeline.ingest_webhook(rt, paid(sandbox, ref)).outcome is Disposition.ORPHAN
    p = payment(rt, ref)
    assert p.is_orphan and p.status is PaymentStatus.SUCCEEDED
    assert FlagKind.ORPHAN in flags(rt, ref)
    assert ledger(rt) == {"provider_clearing:cinetpay": 5000, "suspense": -5000}


def test_registration_after_its_webhook_adopts_the_orphan(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    pipeline.ingest_webhook(rt, paid(sandbox, ref))
    assert register(rt, ref).outcome is Disposition.ADOPTED
    p = payment(rt, ref)
    assert (p.status, p.settled, p.is_orphan) == (PaymentStatus.SUCCEEDED, True, False)
    assert {FlagKind.ORPHAN, FlagKind.ADOPTED} <= flags(rt, ref)
    assert count(rt, SubscriptionGrant) == 1
    with rt.sessions() as session:
        kinds = list(session.scalars(select(Journal.kind).order_by(Journal.id)))
    assert kinds == ["suspense", "settlement", "suspense_reversal"]
    assert ledger(rt) == {"provider_clearing:cinetpay": 5000, "revenue:subscriptions": -5000}


def test_adopted_orphan_with_other_amount_stays_in_suspense(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    pipeline.ingest_webhook(rt, paid(sandbox, ref, amount=1000))
    assert register(rt, ref).outcome is Disposition.ADOPTED
    assert FlagKind.AMOUNT_MISMATCH in flags(rt, ref)
    assert count(rt, SubscriptionGrant) == 0
    assert ledger(rt) == {"provider_clearing:cinetpay": 1000, "suspense": -1000}


def test_identical_deliveries_are_counted_and_settle_once(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    register(rt, ref)
    envelope = paid(sandbox, ref)
    results = [pipeline.ingest_webhook(rt, envelope) for _ in range(3)]
    assert [r.outcome for r in results] == [Disposition.ACCEPTED, Disposition.DUPLICATE, Disposition.DUPLICATE]
    with rt.sessions() as session:
        row = session.scalars(select(InboxDelivery)).one()
    assert row.repeat_count == 2
    assert sandbox.get_cinetpay(ref)["check_count"] == 1


def test_an_authentic_delivery_agreeing_with_a_final_payment_spends_no_call(
    rt: Runtime, sandbox: SandboxClient
) -> None:
    ref = new_reference()
    register(rt, ref)
    envelope = paid(sandbox, ref)
    assert pipeline.ingest_webhook(rt, envelope).outcome is Disposition.ACCEPTED
    # CinetPay notifies again, signed, with another date: a new delivery that says what we know.
    again = resigned(envelope, cpm_trans_date="2026-12-05 10:00:00")
    result = pipeline.ingest_webhook(rt, again)
    assert result.outcome is Disposition.DUPLICATE and "as the delivery says" in result.detail
    assert sandbox.get_cinetpay(ref)["check_count"] == 1
    # One that claims something else is verified.
    refused = resigned(envelope, cpm_result="01", cpm_trans_date="2026-12-05 11:00:00")
    assert pipeline.ingest_webhook(rt, refused).outcome is Disposition.ACCEPTED
    assert sandbox.get_cinetpay(ref)["check_count"] == 2


def test_first_raw_delivery_is_never_overwritten(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    register(rt, ref)
    envelope = paid(sandbox, ref)
    pipeline.ingest_webhook(rt, envelope)
    replay = {**envelope, "received_at": "2030-01-01T00:00:00+00:00", "receiver": "replayer"}
    assert pipeline.ingest_webhook(rt, replay).outcome is Disposition.DUPLICATE
    with rt.sessions() as session:
        row = session.scalars(select(InboxDelivery)).one()
    assert row.body == envelope["body"]
    assert "replayer" not in row.envelope_raw and row.received_at.year != 2030


def test_concurrent_distinct_deliveries_for_one_payment_settle_once(rt: Runtime, sandbox: SandboxClient) -> None:
    """Different bodies (no inbox dedupe) racing: the payment row lock and the unique keys hold."""
    ref = new_reference()
    register(rt, ref)
    sandbox.create_cinetpay(ref, 5000)
    envelopes = [resigned(sandbox.cinetpay_notification(ref), cpm_designation=f"attempt {i}") for i in range(5)]
    barrier = threading.Barrier(5)
    outcomes: list[Disposition] = []

    def run(envelope: dict[str, Any]) -> None:
        barrier.wait()
        outcomes.append(pipeline.ingest_webhook(rt, envelope).outcome)

    threads = [threading.Thread(target=run, args=(e,)) for e in envelopes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 5
    assert count(rt, SubscriptionGrant) == 1
    assert count(rt, Journal) == 1
    assert ledger(rt) == {"provider_clearing:cinetpay": 5000, "revenue:subscriptions": -5000}


def test_five_identical_deliveries_at_once_settle_once(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    register(rt, ref)
    envelope = paid(sandbox, ref)
    barrier = threading.Barrier(5)
    outcomes: list[Disposition] = []

    def run() -> None:
        barrier.wait()
        outcomes.append(pipeline.ingest_webhook(rt, envelope).outcome)

    threads = [threading.Thread(target=run) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == sorted([Disposition.ACCEPTED] + [Disposition.DUPLICATE] * 4)
    assert count(rt, SubscriptionGrant) == 1
    assert sandbox.get_cinetpay(ref)["check_count"] == 1
    assert ledger(rt) == {"provider_clearing:cinetpay": 5000, "revenue:subscriptions": -5000}


def test_provider_500_then_429_then_success_is_retried_inside_the_call(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    register(rt, ref)
    sandbox.create_cinetpay(ref, 5000, faults=[{"status": 500}, {"status": 429, "retry_after": 0}])
    assert pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(ref)).outcome is Disposition.ACCEPTED
    assert sandbox.get_cinetpay(ref)["check_count"] == 3
    assert payment(rt, ref).status is PaymentStatus.SUCCEEDED


def test_provider_down_is_a_wait_in_the_inbox_then_a_dead_letter_after_its_window(
    rt: Runtime, sandbox: SandboxClient
) -> None:
    ref = new_reference()
    register(rt, ref)
    sandbox.create_cinetpay(ref, 5000, faults=[{"status": 503}] * 12)
    result = pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(ref))
    assert result.outcome is Disposition.RETRY and result.inbox_id is not None and result.due is not None
    with rt.sessions() as session:
        row = session.get(InboxDelivery, result.inbox_id)
        assert row is not None
        assert (row.status, row.attempts, row.next_attempt_at) == (InboxStatus.RECEIVED, 1, result.due)
    assert pipeline.retry_delivery(rt, result.inbox_id).outcome is Disposition.DUPLICATE  # not due yet
    again = pipeline.retry_delivery(rt, result.inbox_id, version=result.due)  # its wake-up
    assert again.outcome is Disposition.RETRY and again.due is not None
    age(rt, result.inbox_id, rt.profile("cinetpay").give_up_after)  # the provider's give-up window passes
    final = pipeline.retry_delivery(rt, result.inbox_id, version=again.due)
    assert final.outcome is Disposition.FAILED
    with rt.sessions() as session:
        letter = session.scalars(select(DeadLetter)).one()
        errors = list(session.scalars(select(Verification.error)))
    assert letter.reason == "provider_unavailable" and "503" in letter.detail and "48 h" in letter.detail
    assert ref in letter.payload  # the raw delivery is kept for replay
    assert len(errors) == 3 and all(errors)
    assert payment(rt, ref).status is PaymentStatus.REGISTERED  # the janitor will still look


def test_retry_after_recovery_settles(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    register(rt, ref)
    sandbox.create_cinetpay(ref, 5000, faults=[{"status": 503}] * 3)
    result = pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(ref))
    assert result.outcome is Disposition.RETRY and result.inbox_id is not None
    assert pipeline.retry_delivery(rt, result.inbox_id, version=result.due).outcome is Disposition.ACCEPTED
    assert payment(rt, ref).settled


def test_a_maintenance_page_for_an_answer_is_an_outage_waited_out_not_a_refusal(
    rt: Runtime, sandbox: SandboxClient
) -> None:
    """CinetPay answers its status question with an HTML page and 200 (a maintenance page, a proxy's): the delivery
    waits and is tried again, as for a 503, and settles once the answers are JSON again. Before, the page
    dead-lettered the delivery at once."""
    ref = new_reference()
    register(rt, ref)
    page = {"status": 200, "body": "<html><body>Maintenance en cours</body></html>"}
    sandbox.create_cinetpay(ref, 5000, fate="accepted", faults=[page])
    result = pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(ref))
    assert result.outcome is Disposition.RETRY and "not JSON" in result.detail, result.detail
    with rt.sessions() as session:
        assert session.scalars(select(DeadLetter)).all() == []
    assert pipeline.retry_delivery(rt, result.inbox_id, version=result.due).outcome is Disposition.ACCEPTED
    assert payment(rt, ref).settled


@pytest.mark.parametrize(
    "payload",
    [
        "not an object",
        {"schema": "payrecon.webhook/1"},
        {
            "schema": "payrecon.webhook/1",
            "provider": "cinetpay",
            "received_at": "yesterday",
            "method": "POST",
            "path": "/",
            "body": "",
        },
    ],
)
def test_malformed_envelope_is_dead_lettered_with_the_raw_input(rt: Runtime, payload: Any) -> None:
    result = pipeline.ingest_webhook(rt, payload)
    assert result.outcome is Disposition.MALFORMED
    with rt.sessions() as session:
        letter = session.scalars(select(DeadLetter)).one()
    assert letter.reason == "invalid_envelope"
    assert letter.detail.startswith("invalid webhook envelope")
    assert letter.payload  # raw input kept


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"cpm_trans_id": "X"}', ""),
        ("cpm_site_id=445160&cpm_amount=100&cpm_currency=XOF", "cpm_trans_id"),
        ("cpm_site_id=445160&cpm_trans_id=T&cpm_amount=10.5&cpm_currency=XOF", "cpm_amount"),
    ],
)
def test_malformed_body_is_kept_and_dead_lettered(rt: Runtime, sandbox: SandboxClient, body: str, message: str) -> None:
    ref = new_reference()
    sandbox.create_cinetpay(ref, 5000)
    envelope = {**sandbox.cinetpay_notification(ref), "body": body}
    assert pipeline.ingest_webhook(rt, envelope).outcome is Disposition.MALFORMED
    with rt.sessions() as session:
        row = session.scalars(select(InboxDelivery)).one()
        letter = session.scalars(select(DeadLetter)).one()
    assert (row.status, row.body) == (InboxStatus.MALFORMED, body)
    assert letter.reason == "malformed_body" and message in letter.detail


def test_ping_is_recorded_and_ignored(rt: Runtime, sandbox: SandboxClient) -> None:
    assert pipeline.ingest_webhook(rt, sandbox.cinetpay_ping()).outcome is Disposition.PING
    assert count(rt, Payment) == 0


def test_success_after_refusal_is_honoured_and_flagged(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    register(rt, ref)
    sandbox.create_cinetpay(ref, 5000, fate="refused")
    pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(ref))
    assert payment(rt, ref).status is PaymentStatus.FAILED
    sandbox.set_cinetpay_status(ref, "ACCEPTED")
    pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(ref))  # CinetPay notifies each change
    p = payment(rt, ref)
    assert (p.status, p.settled) == (PaymentStatus.SUCCEEDED, True)
    assert FlagKind.LATE_SUCCESS in flags(rt, ref)
    assert count(rt, SubscriptionGrant) == 1


def test_pending_after_success_changes_nothing(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    register(rt, ref)
    pipeline.ingest_webhook(rt, paid(sandbox, ref))
    before = payment(rt, ref)
    sandbox.set_cinetpay_status(ref, "WAITING_FOR_CUSTOMER")
    pipeline.verify_payment(rt, before.id, trigger="manual")
    after = payment(rt, ref)
    assert (after.status, after.settled, after.finalized_at) == (PaymentStatus.SUCCEEDED, True, before.finalized_at)
    assert count(rt, SubscriptionGrant) == 1
    assert flags(rt, ref) == set()


def test_registration_conflict_and_unknown_plan_are_dead_lettered(rt: Runtime) -> None:
    ref = new_reference()
    register(rt, ref)
    assert register(rt, ref).outcome is Disposition.DUPLICATE
    assert register(rt, ref, amount=10000).outcome is Disposition.FAILED
    assert register(rt, new_reference(), plan="gold").outcome is Disposition.FAILED
    with rt.sessions() as session:
        reasons = sorted(session.scalars(select(DeadLetter.reason)))
    assert reasons == ["registration_conflict", "unknown_plan"]


def test_invalid_registration_is_dead_lettered(rt: Runtime) -> None:
    result = pipeline.register_payment(rt, registration("TXN-1", amount=50.5))
    assert result.outcome is Disposition.MALFORMED
    assert "amount" in result.detail


def test_expire_subscriptions(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    register(rt, ref)
    pipeline.ingest_webhook(rt, paid(sandbox, ref))
    assert pipeline.expire_subscriptions(rt) == 0
    assert pipeline.expire_subscriptions(rt, now=datetime.now(UTC) + timedelta(days=31)) == 1


def test_a_given_up_delivery_is_verified_again_when_it_arrives_again(rt: Runtime, sandbox: SandboxClient) -> None:
    """Provider redelivery or ``payrecon dead-letters replay`` after a give-up: not a mere duplicate."""
    ref = new_reference()
    register(rt, ref)
    sandbox.create_cinetpay(ref, 5000, faults=[{"status": 503}] * 6)  # 3 attempts per call
    envelope = sandbox.cinetpay_notification(ref)
    first = pipeline.ingest_webhook(rt, envelope)
    assert first.inbox_id is not None
    age(rt, first.inbox_id, rt.profile("cinetpay").give_up_after)
    assert pipeline.retry_delivery(rt, first.inbox_id, version=first.due).outcome is Disposition.FAILED
    assert pipeline.ingest_webhook(rt, envelope).outcome is Disposition.ACCEPTED
    assert payment(rt, ref).settled
    assert pipeline.ingest_webhook(rt, envelope).outcome is Disposition.DUPLICATE


@pytest.fixture
def seen() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Facts published after commit, as the worker's metrics receive them."""
    from reconciliation import facts

    published: list[tuple[str, dict[str, Any]]] = []

    def listener(kind: str, data: dict[str, Any]) -> None:
        published.append((kind, data))

    facts.subscribe(listener)
    yield published
    facts.unsubscribe(listener)


def test_a_payment_is_counted_final_once(
    rt: Runtime, sandbox: SandboxClient, seen: list[tuple[str, dict[str, Any]]]
) -> None:
    ref = new_reference()
    register(rt, ref)
    sandbox.create_cinetpay(ref, 5000, fate="refused")
    pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(ref))
    sandbox.set_cinetpay_status(ref, "ACCEPTED")  # a late success: honoured, flagged, not a second final
    pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(ref))
    finals = [data for kind, data in seen if kind == "payment_final" and data["provider"] == "cinetpay"]
    assert [f["status"] for f in finals] == ["failed"]
    assert ("grant", {"product": "depannage", "days": 30}) in seen  # the late success still granted


def test_rolled_back_settlement_publishes_no_fact(rt: Runtime, seen: list[tuple[str, dict[str, Any]]]) -> None:
    from reconciliation import facts
    from reconciliation.db import transaction

    with pytest.raises(RuntimeError), transaction(rt.sessions) as session:
        facts.note(session, "payment_final", provider="cinetpay", status="succeeded", seconds=1.0)
        raise RuntimeError("rolled back")
    with transaction(rt.sessions) as session:
        facts.note(session, "grant", product="depannage", days=30)
    assert [kind for kind, _ in seen] == ["grant"]
