"""Provider-specific paths of the pipeline: Orange's registration race and notif_token lookup,
MoMo's 404 window, Wave's event deduplication, on real PostgreSQL against the sandbox."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from providers.base import ProviderTransientError
from providers.sandbox.client import SandboxClient
from reconciliation.models import (
    DeadLetter,
    FlagKind,
    InboxDelivery,
    InboxStatus,
    Payment,
    PaymentStatus,
    Verification,
)
from tests.conftest import _truncate as truncate
from tests.helpers import age, new_reference, registration
from worker import pipeline
from worker.pipeline import Disposition
from worker.runtime import Runtime, build_clients


def coko(reference: str, provider: str, **over: Any) -> dict[str, Any]:
    return registration(reference, **{"provider": provider, "amount": 6500, "plan": "coko-premium-monthly", **over})


def status(rt: Runtime, reference: str) -> PaymentStatus:
    with rt.sessions() as session:
        return session.scalars(select(Payment.status).where(Payment.reference == reference)).one()


def test_orange_notification_before_its_registration_waits_then_settles(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference("ORD")
    state = sandbox.create("orange_money", reference=ref, amount=6500, currency="XOF", fate="accepted")
    envelope = sandbox.notification("orange_money", ref)
    early = pipeline.ingest_webhook(rt, envelope)
    assert early.outcome is Disposition.RETRY and early.delay and "awaiting registration" in early.detail
    assert early.inbox_id is not None
    assert sandbox.get("orange_money", ref)["check_count"] == 0  # nothing spent on an unauthenticated one
    registered = pipeline.register_payment(rt, coko(ref, "orange_money", provider_data=state["provider_data"]))
    (woken,) = registered.wake  # the registration makes the waiting notification due at once
    assert woken[0] == early.inbox_id
    assert pipeline.retry_delivery(rt, early.inbox_id, version=woken[1]).outcome is Disposition.ACCEPTED
    assert status(rt, ref) is PaymentStatus.SUCCEEDED


def test_orange_notification_whose_registration_never_comes_stops_waiting(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference("ORD")
    sandbox.create("orange_money", reference=ref, amount=6500, currency="XOF", fate="accepted")
    early = pipeline.ingest_webhook(rt, sandbox.notification("orange_money", ref))
    assert early.inbox_id is not None and early.delay == 30
    again = pipeline.retry_delivery(rt, early.inbox_id, version=early.due)
    assert again.outcome is Disposition.RETRY and again.delay == 60  # the waits grow
    age(rt, early.inbox_id, rt.settings.await_registration)
    final = pipeline.retry_delivery(rt, early.inbox_id, version=again.due)
    assert final.outcome is Disposition.FORGED and "no registration arrived within 1 h" in final.detail
    with rt.sessions() as session:
        row = session.get(InboxDelivery, early.inbox_id)
        assert row is not None and row.status is InboxStatus.FORGED and row.next_attempt_at is None
        assert session.scalar(select(func.count()).select_from(DeadLetter)) == 0  # quarantined, not a dead letter
    assert sandbox.get("orange_money", ref)["check_count"] == 0


def test_orange_notification_without_order_id_is_found_by_its_notif_token(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference("ORD")
    state = sandbox.create("orange_money", reference=ref, amount=6500, currency="XOF", fate="accepted")
    pipeline.register_payment(rt, coko(ref, "orange_money", provider_data=state["provider_data"]))
    envelope = sandbox.notification("orange_money", ref, path="/orange/notify")
    result = pipeline.ingest_webhook(rt, envelope)
    assert (result.outcome, result.reference) == (Disposition.ACCEPTED, ref)
    assert status(rt, ref) is PaymentStatus.SUCCEEDED


def test_orange_notification_with_another_orders_token_is_forged(rt: Runtime, sandbox: SandboxClient) -> None:
    mine, other = new_reference("ORD"), new_reference("ORD")
    for ref in (mine, other):
        state = sandbox.create("orange_money", reference=ref, amount=6500, currency="XOF", fate="accepted")
        pipeline.register_payment(rt, coko(ref, "orange_money", provider_data=state["provider_data"]))
    envelope = sandbox.notification("orange_money", mine, forged=True)
    assert pipeline.ingest_webhook(rt, envelope).outcome is Disposition.FORGED
    assert sandbox.get("orange_money", mine)["check_count"] == 0


def test_a_provider_answer_with_a_code_longer_than_kept_is_recorded_clipped(
    rt: Runtime, sandbox: SandboxClient
) -> None:
    """MoMo fails a payment with a reason code of 90 characters; a verification keeps 64 of a code (the whole answer
    stays in its raw response): the payment fails as the provider says, the verification is recorded, nothing is
    refused by the database and retried for ever."""
    ref, reason = str(uuid.uuid4()), "PAYER_" + "VERY_" * 16 + "LONG"
    sandbox.create("mtn_momo", reference=ref, amount=6500, currency="XOF", fate="accepted")
    sandbox.set_status("mtn_momo", ref, "FAILED", reason=reason)
    pipeline.register_payment(rt, coko(ref, "mtn_momo"))
    assert pipeline.ingest_webhook(rt, sandbox.notification("mtn_momo", ref)).outcome is Disposition.ACCEPTED
    assert status(rt, ref) is PaymentStatus.FAILED
    with rt.sessions() as session:
        verification = session.scalars(select(Verification).where(Verification.outcome == "failed")).one()
    cut = reason[:53] + "\u2026" + hashlib.sha256(reason.encode()).hexdigest()[:10]
    assert verification.provider_code == cut and len(reason) == 90
    assert reason in verification.raw_response


def test_what_providers_clip_answers_to_is_what_the_columns_hold() -> None:
    from providers import base
    from reconciliation.models import StatementLine

    def length(column: Any) -> int:
        return int(column.type.length)

    assert length(Verification.__table__.c.provider_status) == length(Verification.__table__.c.provider_code)
    assert length(Verification.__table__.c.provider_code) == base.MAX_STATUS_LENGTH
    assert length(Payment.__table__.c.provider_transaction_id) == base.MAX_ID_LENGTH
    assert length(StatementLine.__table__.c.provider_txn_id) == length(StatementLine.__table__.c.payout_id)
    assert length(StatementLine.__table__.c.payout_id) == base.MAX_ID_LENGTH
    assert length(StatementLine.__table__.c.reference) == base.MAX_REFERENCE_LENGTH


def test_momo_404_right_after_registration_is_not_a_failure(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = str(uuid.uuid4())
    sandbox.create("mtn_momo", reference=ref, amount=6500, currency="XOF", fate="accepted", not_found_checks=2)
    pipeline.register_payment(rt, coko(ref, "mtn_momo"))
    callback = sandbox.notification("mtn_momo", ref)
    first = pipeline.ingest_webhook(rt, callback)
    assert first.outcome is Disposition.RETRY  # not FAILED, not dead-lettered
    with rt.sessions() as session:
        payment = session.scalars(select(Payment)).one()
        assert session.scalar(select(DeadLetter.id)) is None
    result = pipeline.verify_payment(rt, payment.id)
    assert result.outcome is Disposition.RETRY
    with rt.sessions() as session:
        last = session.scalars(select(Verification).order_by(Verification.id.desc())).first()
    assert last is not None and "not visible at the provider yet" in (last.error or "")
    assert pipeline.verify_payment(rt, payment.id).outcome is Disposition.ACCEPTED
    assert status(rt, ref) is PaymentStatus.SUCCEEDED


def test_momo_404_long_after_registration_is_a_provider_error(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = str(uuid.uuid4())
    sandbox.create("mtn_momo", reference=ref, amount=6500, currency="XOF", fate="accepted", not_found_checks=9)
    created = "2026-01-01T10:00:00+00:00"  # registered long before: the grace is over
    pipeline.register_payment(rt, coko(ref, "mtn_momo", created_at=created))
    result = pipeline.ingest_webhook(rt, sandbox.notification("mtn_momo", ref))
    assert result.outcome is Disposition.FAILED
    with rt.sessions() as session:
        assert session.scalars(select(DeadLetter.reason)).one() == "provider_error"


def test_wave_redelivered_event_is_a_duplicate(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference("CR")
    state = sandbox.create("wave", reference=ref, amount=6500, currency="XOF", fate="accepted")
    pipeline.register_payment(rt, coko(ref, "wave", provider_data=state["provider_data"]))
    first = sandbox.notification("wave", ref)
    again = sandbox.notification("wave", ref)  # Wave resends the same event id, signed anew
    assert first["body"] == again["body"]
    assert pipeline.ingest_webhook(rt, first).outcome is Disposition.ACCEPTED
    assert pipeline.ingest_webhook(rt, again).outcome is Disposition.DUPLICATE
    with rt.sessions() as session:
        assert session.scalars(select(InboxDelivery.status)).one() is InboxStatus.PROCESSED


def test_wave_stale_signature_is_forged(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference("CR")
    state = sandbox.create("wave", reference=ref, amount=6500, currency="XOF", fate="accepted")
    pipeline.register_payment(rt, coko(ref, "wave", provider_data=state["provider_data"]))
    result = pipeline.ingest_webhook(rt, sandbox.notification("wave", ref, stale=True))
    assert result.outcome is Disposition.FORGED and "stale" in result.detail


def _wave_down(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """Wave's status API answering 503 from now on: its client, and the check to put back when it answers again."""
    client = rt.client("wave")
    assert client is not None
    answer = client.check

    def down(view: Any) -> Any:
        raise ProviderTransientError("503 Service Unavailable", provider="wave", http_status=503)

    monkeypatch.setattr(client, "check", down)
    return client, answer


def test_a_wave_delivery_read_long_after_it_arrived_is_authentic_and_settles(
    rt: Runtime, sandbox: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signed and received ten minutes ago, read only now (a backlog, PostgreSQL down meanwhile), its verification
    put off by a Wave 503 and resumed: authentic at each reading, then settled. The signature's time is held against
    the delivery's arrival (``received_at``), not against the time it is read: before, the delivery was quarantined
    as forged, and Wave's resend of the event counted as its duplicate."""
    ref = new_reference("CR")
    state = sandbox.create("wave", reference=ref, amount=6500, currency="XOF", fate="accepted")
    pipeline.register_payment(rt, coko(ref, "wave", provider_data=state["provider_data"]))
    envelope = sandbox.notification("wave", ref, stale=True)  # signed ten minutes ago
    envelope["received_at"] = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()  # and received then
    client, answer = _wave_down(rt, monkeypatch)
    first = pipeline.ingest_webhook(rt, envelope)
    assert first.outcome is Disposition.RETRY, first.detail
    monkeypatch.setattr(client, "check", answer)
    with rt.sessions.begin() as session:
        row = session.get(InboxDelivery, first.inbox_id)
        assert row is not None
        row.next_attempt_at = datetime.now(UTC) - timedelta(seconds=1)
    again = pipeline.retry_delivery(rt, first.inbox_id)
    assert again.outcome is Disposition.ACCEPTED, again.detail
    assert status(rt, ref) is PaymentStatus.SUCCEEDED


def test_a_forged_copy_of_a_given_up_wave_delivery_does_not_reopen_it(
    rt: Runtime, sandbox: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wave's key is the event id alone: a copy with a bad signature is a repeat of the delivery. Given up (Wave down
    for its whole window), the delivery is reopened by an authentic copy only: a forged one takes nothing from it
    (before, it reopened the delivery, which the janitor then verified again)."""
    ref = new_reference("CR")
    state = sandbox.create("wave", reference=ref, amount=6500, currency="XOF", fate="accepted")
    pipeline.register_payment(rt, coko(ref, "wave", provider_data=state["provider_data"]))
    client, answer = _wave_down(rt, monkeypatch)
    first = pipeline.ingest_webhook(rt, sandbox.notification("wave", ref))
    assert first.outcome is Disposition.RETRY and first.inbox_id is not None
    age(rt, first.inbox_id, rt.profile("wave").give_up_after)
    assert pipeline.retry_delivery(rt, first.inbox_id, version=first.due).outcome is Disposition.FAILED
    monkeypatch.setattr(client, "check", answer)
    forged = pipeline.ingest_webhook(rt, sandbox.notification("wave", ref, forged=True))
    assert forged.outcome is Disposition.DUPLICATE and forged.inbox_id == first.inbox_id  # a repeat, taking nothing
    with rt.sessions() as session:
        row = session.get(InboxDelivery, first.inbox_id)
        assert row is not None and row.status is InboxStatus.FAILED
    assert pipeline.ingest_webhook(rt, sandbox.notification("wave", ref)).outcome is Disposition.ACCEPTED
    assert status(rt, ref) is PaymentStatus.SUCCEEDED


def test_expired_registration_without_answers_is_expired_on_the_providers_schedule(
    rt: Runtime, sandbox: SandboxClient
) -> None:
    ref = new_reference("ORD")
    state = sandbox.create("orange_money", reference=ref, amount=6500, currency="XOF", fate="waiting")
    pipeline.register_payment(rt, coko(ref, "orange_money", provider_data=state["provider_data"]))
    with rt.sessions() as session:
        payment = session.scalars(select(Payment)).one()
    assert payment.registered_at is not None
    later = payment.registered_at + timedelta(seconds=rt.profile("orange_money").give_up_after)
    pipeline.verify_payment(rt, payment.id, now=later)
    assert status(rt, ref) is PaymentStatus.EXPIRED


# --------------------------------------------------------------------------- Orange: the notif_url's shape


@pytest.fixture
def notif_url(rt: Runtime) -> Iterator[Callable[[str | None], None]]:
    """Run ``rt`` with ``ORANGE_MONEY_NOTIF_URL`` set to a shape (its Orange client built as the worker builds it)."""
    original = rt.clients["orange_money"]

    def use(shape: str | None) -> None:
        assert rt.settings.orange_money is not None
        orange = replace(rt.settings.orange_money, notif_url=shape)
        rt.clients["orange_money"] = build_clients(replace(rt.settings, orange_money=orange))["orange_money"]

    yield use
    rt.clients["orange_money"].close()
    rt.clients["orange_money"] = original


def orange_order(rt: Runtime, sandbox: SandboxClient, *, register: bool = True, **options: Any) -> dict[str, Any]:
    ref = new_reference("ORD")
    state = sandbox.create("orange_money", reference=ref, amount=6500, currency="XOF", fate="accepted", **options)
    if register:
        pipeline.register_payment(rt, coko(ref, "orange_money", provider_data=state["provider_data"]))
    return state


SHOP_NOTIF_URL = "https://shop.example/orange/notif/{order_id}"


def test_orange_wrong_token_at_a_declared_notif_url_is_forged_not_awaiting(
    rt: Runtime, sandbox: SandboxClient, notif_url: Callable[[str | None], None]
) -> None:
    """The URL shape the operator declared names a registered order: a wrong token there is forged at once."""
    notif_url("/orange/notif/{order_id}")
    state = orange_order(rt, sandbox, notif_url=SHOP_NOTIF_URL)
    envelope = sandbox.notification("orange_money", state["reference"], forged=True)
    assert envelope["path"] == f"/orange/notif/{state['reference']}"
    result = pipeline.ingest_webhook(rt, envelope)
    assert (result.outcome, result.reference) == (Disposition.FORGED, state["reference"])
    assert "notif_token does not match" in result.detail
    # The authentic one at the same URL settles it.
    genuine = pipeline.ingest_webhook(rt, sandbox.notification("orange_money", state["reference"]))
    assert genuine.outcome is Disposition.ACCEPTED
    assert status(rt, state["reference"]) is PaymentStatus.SUCCEEDED
    assert sandbox.get("orange_money", state["reference"])["check_count"] == 1  # nothing spent on the forged one


@pytest.mark.parametrize(
    ("shape", "sandbox_url"),
    [
        ("/notif/{order_id}", "/notif/{order_id}"),
        ("/webhooks/orange-money/{order_id}/", "https://shop.example/webhooks/orange-money/{order_id}/"),
        ("https://shop.example/om/callback?order={order_id}", "https://shop.example/om/callback?order={order_id}"),
        ("/orange_money/notif_url/{order_id}", "http://shop.example/orange_money/notif_url/{order_id}?lang=fr"),
    ],
)
def test_orange_url_of_one_order_with_another_registered_orders_token_is_forged(
    rt: Runtime, sandbox: SandboxClient, notif_url: Callable[[str | None], None], shape: str, sandbox_url: str
) -> None:
    """URL names E, the token is F's (valid): refused, whether E is registered or not, and F is untouched."""
    notif_url(shape)
    f = orange_order(rt, sandbox, notif_url=sandbox_url)
    e_registered = orange_order(rt, sandbox, notif_url=sandbox_url)
    e_unknown = orange_order(rt, sandbox, register=False, notif_url=sandbox_url)
    for e in (e_registered, e_unknown):
        envelope = sandbox.notification("orange_money", e["reference"], tamper={"notif_token": f["notif_token"]})
        assert e["reference"] in envelope["path"] + json.dumps(envelope["query"])
        result = pipeline.ingest_webhook(rt, envelope)
        assert (result.outcome, result.reference) == (Disposition.FORGED, e["reference"]), result.detail
    assert status(rt, f["reference"]) is PaymentStatus.REGISTERED
    assert status(rt, e_registered["reference"]) is PaymentStatus.REGISTERED
    assert sandbox.get("orange_money", f["reference"])["check_count"] == 0
    with rt.sessions() as session:
        rows = session.execute(select(InboxDelivery.reference, InboxDelivery.status, InboxDelivery.detail)).all()
    assert {(r.reference, r.status) for r in rows} == {
        (e_registered["reference"], InboxStatus.FORGED),
        (e_unknown["reference"], InboxStatus.FORGED),
    }
    unknown_detail = next(r.detail for r in rows if r.reference == e_unknown["reference"])
    assert f"names order {e_unknown['reference']!r} but the notif_token is that of order" in unknown_detail


def test_orange_url_of_an_unregistered_order_with_another_orders_token_is_forged_in_a_batch(
    rt: Runtime, sandbox: SandboxClient, notif_url: Callable[[str | None], None]
) -> None:
    notif_url("/orange/notif/{order_id}")
    f = orange_order(rt, sandbox, notif_url=SHOP_NOTIF_URL)
    e = orange_order(rt, sandbox, register=False, notif_url=SHOP_NOTIF_URL)
    forged = sandbox.notification("orange_money", e["reference"], tamper={"notif_token": f["notif_token"]})
    genuine = sandbox.notification("orange_money", f["reference"])
    results = pipeline.ingest_batch(rt, [forged, genuine])
    assert [r.outcome for r in results if isinstance(r, pipeline.Result)] == [Disposition.FORGED, Disposition.ACCEPTED]
    assert status(rt, f["reference"]) is PaymentStatus.SUCCEEDED


def test_orange_default_rules_still_read_notify_paths_and_query(
    rt: Runtime, sandbox: SandboxClient, notif_url: Callable[[str | None], None]
) -> None:
    """Without ORANGE_MONEY_NOTIF_URL: .../notify/{order_id} and ?order_id= as before; other shapes name no order."""
    notif_url(None)
    state = orange_order(rt, sandbox)
    ref = state["reference"]
    forged = pipeline.ingest_webhook(rt, sandbox.notification("orange_money", ref, forged=True))
    assert forged.outcome is Disposition.FORGED
    by_query = sandbox.notification("orange_money", ref, path=f"/om/callback?order_id={ref}", forged=True)
    assert by_query["query"] == {"order_id": ref}
    assert pipeline.ingest_webhook(rt, by_query).outcome is Disposition.FORGED
    other_shape = pipeline.ingest_webhook(rt, sandbox.notification("orange_money", ref, path=f"/orange/notif/{ref}"))
    assert (other_shape.outcome, other_shape.reference) == (Disposition.ACCEPTED, ref)  # found by its notif_token


# --------------------------------------------------------------------------- Orange: HTTP 400 from the status API


@pytest.mark.parametrize(
    ("wrong", "fragment"),
    [
        ({"provider_data": {"pay_token": "0" * 64}}, "invalid pay_token"),
        ({"amount": 13000, "periods": 2}, "amount does not match"),  # registered for more than Orange's order
    ],
)
def test_orange_400_on_a_recheck_flags_the_payment_and_stops_asking(
    rt: Runtime, sandbox: SandboxClient, wrong: dict[str, Any], fragment: str
) -> None:
    """A question Orange refuses (HTTP 400) gets the same refusal every time: not 'no answer', retried until expiry."""
    ref = new_reference("ORD")
    state = sandbox.create("orange_money", reference=ref, amount=6500, currency="XOF", fate="accepted")
    pipeline.register_payment(rt, coko(ref, "orange_money", **{"provider_data": state["provider_data"], **wrong}))
    with rt.sessions() as session:
        payment = session.scalars(select(Payment)).one()
    result = pipeline.verify_payment(rt, payment.id)
    assert result.outcome is Disposition.FAILED and "refused the question" in result.detail
    with rt.sessions() as session:
        p = session.scalars(select(Payment)).one()
        flags = {f.kind: f.detail for f in p.flags}
        last = session.scalars(select(Verification).order_by(Verification.id.desc())).first()
    assert (p.status, p.next_check_at) == (PaymentStatus.REGISTERED, None)  # not expired, not re-asked
    assert list(flags) == [FlagKind.PROVIDER_REFUSED] and "HTTP 400" in flags[FlagKind.PROVIDER_REFUSED]
    assert fragment in flags[FlagKind.PROVIDER_REFUSED]
    assert last is not None and last.error and "HTTP 400" in last.error and "no more re-checks" in last.decision
    assert pipeline.claim_due(rt, now=p.registered_at + timedelta(days=30)) == []  # beat never asks again
    assert sandbox.get("orange_money", ref)["check_count"] == 1


def test_orange_400_on_a_notification_dead_letters_it_and_flags_the_payment(
    rt: Runtime, sandbox: SandboxClient
) -> None:
    ref = new_reference("ORD")
    state = sandbox.create("orange_money", reference=ref, amount=6500, currency="XOF", fate="accepted")
    data = {**state["provider_data"], "pay_token": "0" * 64}  # the notif_token is right: it authenticates
    pipeline.register_payment(rt, coko(ref, "orange_money", provider_data=data))
    result = pipeline.ingest_webhook(rt, sandbox.notification("orange_money", ref))
    assert result.outcome is Disposition.FAILED and "provider refused the verification" in result.detail
    with rt.sessions() as session:
        letter = session.scalars(select(DeadLetter)).one()
        p = session.scalars(select(Payment)).one()
        kinds = [f.kind for f in p.flags]
    assert letter.reason == "provider_error" and "HTTP 400" in letter.detail
    assert (p.status, p.next_check_at, kinds) == (PaymentStatus.REGISTERED, None, [FlagKind.PROVIDER_REFUSED])


@pytest.mark.parametrize(("status_code", "answers"), [(503, 3), (422, 1)])  # 5xx are retried in the call
def test_an_outage_or_another_refusal_is_still_asked_again(
    rt: Runtime, sandbox: SandboxClient, status_code: int, answers: int
) -> None:
    ref = new_reference("ORD")
    faults = [{"status": status_code}] * answers
    state = sandbox.create("orange_money", reference=ref, amount=6500, currency="XOF", fate="accepted", faults=faults)
    pipeline.register_payment(rt, coko(ref, "orange_money", provider_data=state["provider_data"]))
    with rt.sessions() as session:
        payment_id = session.scalars(select(Payment.id)).one()
    assert pipeline.verify_payment(rt, payment_id).outcome is Disposition.RETRY
    with rt.sessions() as session:
        p = session.scalars(select(Payment)).one()
        assert p.next_check_at is not None and p.flags == []
    assert pipeline.verify_payment(rt, payment_id).outcome is Disposition.ACCEPTED


# --------------------------------------------------------------------------- MoMo: a run in MTN's sandbox (EUR)


def test_the_readmes_mtn_sandbox_recipe_settles_a_eur_payment(rt: Runtime, sandbox: SandboxClient) -> None:
    """MTN's sandbox only takes EUR and the catalogue is XOF: the plan in docs/providers.md makes a EUR run settle."""
    readme = (Path(__file__).resolve().parent.parent / "docs" / "providers.md").read_text(encoding="utf-8")
    section = readme[readme.index("## MTN's sandbox") :]
    sql = section[section.index("```sql") + len("```sql") : section.index("```", section.index("```sql") + 6)]
    ref = str(uuid.uuid4())
    try:
        with rt.engine.begin() as conn:
            conn.execute(text(sql))
            conn.execute(text(sql))  # idempotent
        sandbox.create("mtn_momo", reference=ref, amount=500, currency="EUR", fate="accepted")
        result = pipeline.register_payment(
            rt, coko(ref, "mtn_momo", amount=500, currency="EUR", plan="coko-premium-monthly-eur")
        )
        assert result.outcome is Disposition.CREATED, result.detail
        assert pipeline.ingest_webhook(rt, sandbox.notification("mtn_momo", ref)).outcome is Disposition.ACCEPTED
        with rt.sessions() as session:
            p = session.scalars(select(Payment)).one()
            assert (p.status, p.settled, p.confirmed_amount, p.confirmed_currency) == (
                PaymentStatus.SUCCEEDED,
                True,
                500,
                "EUR",
            )
        # The XOF plan refuses a EUR registration: the reason the recipe is needed.
        refused = pipeline.register_payment(rt, coko(str(uuid.uuid4()), "mtn_momo", amount=500, currency="EUR"))
        assert refused.outcome is Disposition.FAILED and "sold in XOF, not EUR" in refused.detail
    finally:
        truncate(rt)
        with rt.engine.begin() as conn:
            conn.execute(text("DELETE FROM plans WHERE code = 'coko-premium-monthly-eur'"))
