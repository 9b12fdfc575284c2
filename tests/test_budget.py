"""The provider call budget: token buckets in real Redis, shared by every worker."""

from __future__ import annotations

import json
import secrets
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy import func, select

from providers.sandbox.client import SandboxClient
from reconciliation.models import InboxDelivery, InboxStatus, Payment, PaymentStatus, Verification
from tests.helpers import new_reference, registration
from worker import pipeline
from worker.budget import LocalBudget, RedisBudget
from worker.pipeline import Disposition
from worker.runtime import Runtime


@pytest.fixture
def bucket() -> str:
    return f"test:{secrets.token_hex(4)}"


@pytest.fixture
def budgets(redis_url: str) -> Iterator[tuple[RedisBudget, RedisBudget]]:
    first, second = RedisBudget(redis_url), RedisBudget(redis_url)  # two workers, two connections
    yield first, second
    first.close()
    second.close()


def test_burst_then_waits_at_the_refill_rate(budgets: tuple[RedisBudget, RedisBudget], bucket: str) -> None:
    budget, _ = budgets
    assert [budget.take(bucket, rate=2.0, burst=3) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = budget.take(bucket, rate=2.0, burst=3)
    assert 0.0 < wait <= 0.5  # one token every 0.5 s


def test_the_bucket_is_shared_by_every_client(budgets: tuple[RedisBudget, RedisBudget], bucket: str) -> None:
    first, second = budgets
    assert first.take(bucket, rate=0.1, burst=2) == 0.0
    assert second.take(bucket, rate=0.1, burst=2) == 0.0
    assert first.take(bucket, rate=0.1, burst=2) > 0
    assert second.take(bucket, rate=0.1, burst=2) > 0


def test_local_budget_refills_with_its_clock(bucket: str) -> None:
    now = [100.0]
    budget = LocalBudget(clock=lambda: now[0])
    assert budget.take(bucket, 1.0, 1) == 0.0
    assert budget.take(bucket, 1.0, 1) == pytest.approx(1.0)
    now[0] += 1.0
    assert budget.take(bucket, 1.0, 1) == 0.0


@pytest.fixture
def tight(rt: Runtime, bucket: str) -> Iterator[Runtime]:
    """The runtime with a CinetPay budget of 2 calls, refilled every 100 s."""
    original = rt.profiles
    rt.profiles = {**original, "cinetpay": replace(original["cinetpay"], api_rate=0.01, api_burst=2)}
    assert isinstance(rt.budget, RedisBudget)
    rt.budget.reset("api:cinetpay")
    yield rt
    rt.budget.reset("api:cinetpay")
    rt.profiles = original


def test_exhausted_budget_defers_webhooks_and_loses_none(tight: Runtime, sandbox: SandboxClient) -> None:
    refs = [new_reference() for _ in range(5)]
    results = []
    for ref in refs:
        pipeline.register_payment(tight, registration(ref))
        sandbox.create_cinetpay(ref, 5000)
        results.append(pipeline.ingest_webhook(tight, sandbox.cinetpay_notification(ref)))
    outcomes = [r.outcome for r in results]
    assert outcomes == [Disposition.ACCEPTED] * 2 + [Disposition.RETRY] * 3
    assert all(r.delay and r.delay > 1 for r in results[2:])  # wait for a refill, not an attempt
    assert "call budget" in results[2].detail
    # Each deferred delivery holds its own slot, in arrival order (one run each, no stampede).
    dues = [r.due for r in results[2:]]
    assert all(due is not None for due in dues) and dues == sorted(dues)  # type: ignore[type-var]
    assert [round(r.delay or 0) for r in results[2:]] == [100, 200, 300]
    assert sum(sandbox.get_cinetpay(ref)["check_count"] for ref in refs) == 2  # no call spent
    with tight.sessions() as session:
        waiting = session.scalars(select(InboxDelivery.status).where(InboxDelivery.status == InboxStatus.RECEIVED))
        assert len(list(waiting)) == 3  # kept, to be verified when the budget allows
    # Its wake-up comes at its slot: the token is already its own, so it takes none again.
    woken = pipeline.retry_delivery(tight, results[2].inbox_id or 0, version=results[2].due)
    assert woken.outcome is Disposition.ACCEPTED
    assert sum(sandbox.get_cinetpay(ref)["check_count"] for ref in refs) == 3


def test_exhausted_budget_defers_the_janitor_and_records_it(tight: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    pipeline.register_payment(tight, registration(ref))
    sandbox.create_cinetpay(ref, 5000)
    tight.budget.take("api:cinetpay", 0.01, 2)
    tight.budget.take("api:cinetpay", 0.01, 2)
    with tight.sessions() as session:
        payment = session.scalars(select(Payment).where(Payment.reference == ref)).one()
    result = pipeline.verify_payment(tight, payment.id)
    assert result.outcome is Disposition.RETRY and result.delay and result.delay > 1
    with tight.sessions() as session:
        after = session.scalars(select(Payment).where(Payment.reference == ref)).one()
        decision = session.scalars(select(Verification.decision)).one()
    assert after.status is PaymentStatus.REGISTERED and after.check_count == 0
    assert after.next_check_at is not None and after.next_check_at > payment.next_check_at
    assert "call budget exhausted" in decision
    assert sandbox.get_cinetpay(ref)["check_count"] == 0


def momo_callback(reference: str, status: str = "SUCCESSFUL") -> dict[str, object]:
    """A callback as anyone on the internet could PUT it: MTN signs nothing."""
    body = json.dumps({"financialTransactionId": "123", "externalId": "x", "amount": "6500", "currency": "XOF",
                       "payer": {"partyIdType": "MSISDN", "partyId": "46733123453"}, "status": status})  # fmt: skip
    return {
        "schema": "payrecon.webhook/1", "provider": "mtn_momo", "received_at": "2026-11-21T10:00:00+00:00",
        "method": "PUT", "path": f"/momo/callback/{reference}", "query": {},
        "headers": {"Content-Type": "application/json"}, "body": body,
    }  # fmt: skip


@pytest.fixture
def momo_tight(rt: Runtime) -> Iterator[Runtime]:
    """MoMo lets 3 unauthenticated callbacks through, then one per 100 s; its API budget is 5."""
    original = rt.profiles
    rt.profiles = {
        **original,
        "mtn_momo": replace(original["mtn_momo"], callback_rate=0.01, callback_burst=3, api_rate=0.01, api_burst=5),
    }
    assert isinstance(rt.budget, RedisBudget)
    for bucket in ("api:mtn_momo", "callbacks:mtn_momo"):
        rt.budget.reset(bucket)
    yield rt
    for bucket in ("api:mtn_momo", "callbacks:mtn_momo"):
        rt.budget.reset(bucket)
    rt.profiles = original


def test_a_flood_of_fake_momo_callbacks_cannot_exhaust_the_api_budget(
    momo_tight: Runtime, sandbox: SandboxClient
) -> None:
    results = [pipeline.ingest_webhook(momo_tight, momo_callback(str(uuid.uuid4()))) for _ in range(40)]
    outcomes = Counter(r.outcome for r in results)
    assert outcomes[Disposition.RETRY] == 37  # deferred, not dropped, and no API call spent on them
    assert all("rate-limited" in r.detail for r in results if r.outcome is Disposition.RETRY)
    with momo_tight.sessions() as session:
        kept = session.scalar(select(func.count()).select_from(InboxDelivery))
    assert kept == 40  # every delivery is in the inbox, to be verified later
    # Only 3 of the 5 API tokens went to the flood: a real payment is still verified.
    view = sandbox.create("mtn_momo", reference=str(uuid.uuid4()), amount=6500, currency="XOF", fate="accepted")
    pipeline.register_payment(momo_tight, registration(view["reference"], provider="mtn_momo", amount=6500,
                                                       plan="coko-premium-monthly"))  # fmt: skip
    with momo_tight.sessions() as session:
        payment = session.scalars(select(Payment).where(Payment.reference == view["reference"])).one()
    assert pipeline.verify_payment(momo_tight, payment.id).outcome is Disposition.ACCEPTED


def test_a_callback_for_a_final_momo_payment_spends_nothing(momo_tight: Runtime, sandbox: SandboxClient) -> None:
    reference = str(uuid.uuid4())
    sandbox.create("mtn_momo", reference=reference, amount=6500, currency="XOF", fate="refused")
    pipeline.register_payment(momo_tight, registration(reference, provider="mtn_momo", amount=6500,
                                                       plan="coko-premium-monthly"))  # fmt: skip
    assert pipeline.ingest_webhook(momo_tight, momo_callback(reference, "FAILED")).outcome is Disposition.ACCEPTED
    checks = sandbox.get("mtn_momo", reference)["check_count"]
    for _ in range(5):  # replays of a fake "SUCCESSFUL", each with another body
        fake = momo_callback(reference)
        fake["body"] = fake["body"].replace('"123"', f'"{uuid.uuid4()}"')  # type: ignore[union-attr]
        result = pipeline.ingest_webhook(momo_tight, fake)
        assert result.outcome is Disposition.DUPLICATE and "spends no API call" in result.detail
    assert sandbox.get("mtn_momo", reference)["check_count"] == checks
    with momo_tight.sessions() as session:
        assert session.scalars(select(Payment.status)).one() is PaymentStatus.FAILED


def test_reserving_many_at_once_is_reserving_each_in_turn(redis_url: str, bucket: str) -> None:
    """reserve_many(n): the waits and ownership n callers reserving one after the other would get, on
    Redis and in process; release_many(n) gives n back."""
    now = [100.0]
    for make in (lambda: RedisBudget(redis_url), lambda: LocalBudget(clock=lambda: now[0])):
        budget = make()
        one_by_one = [budget.reserve(bucket + "a", 1.0, 2) for _ in range(5)]
        together = budget.reserve_many(bucket + "b", 1.0, 2, 5)
        assert [own for _, own in together] == [own for _, own in one_by_one] == [True] * 5
        assert [w for w, _ in together] == pytest.approx([w for w, _ in one_by_one], abs=0.05)
        assert [round(w) for w, _ in together] == [0, 0, 1, 2, 3]
        budget.release_many(bucket + "b", 1.0, 2, 5)  # back to the burst: the next two are free
        assert [
            round(w) for w in (budget.reserve(bucket + "b", 1.0, 2)[0], budget.reserve(bucket + "b", 1.0, 2)[0])
        ] == [0, 0]
        if isinstance(budget, RedisBudget):
            budget.reset(bucket + "a")
            budget.reset(bucket + "b")
            budget.close()


def test_a_batch_reserves_its_calls_in_one_step_with_each_deliverys_slot(
    tight: Runtime, sandbox: SandboxClient
) -> None:
    """A batch of 5 under a budget of 2: as one at a time (2 verified, 3 put off, each with its own slot in
    arrival order), with one round trip to the budget's store."""
    assert isinstance(tight.budget, RedisBudget)
    refs = [new_reference() for _ in range(5)]
    envelopes = []
    for ref in refs:
        pipeline.register_payment(tight, registration(ref))
        sandbox.create_cinetpay(ref, 5000)
        envelopes.append(sandbox.cinetpay_notification(ref))
    calls: list[int] = []
    original = tight.budget.reserve_many
    tight.budget.reserve_many = lambda *a: calls.append(a[3]) or original(*a)  # type: ignore[method-assign]
    try:
        results = pipeline.ingest_batch(tight, envelopes)
    finally:
        del tight.budget.reserve_many
    assert calls == [5]
    assert [r.outcome for r in results if isinstance(r, pipeline.Result)] == [Disposition.ACCEPTED] * 2 + [
        Disposition.RETRY
    ] * 3
    deferred = [r for r in results if isinstance(r, pipeline.Result) and r.outcome is Disposition.RETRY]
    assert [round(r.delay or 0) for r in deferred] == [100, 200, 300]
    assert sum(sandbox.get_cinetpay(ref)["check_count"] for ref in refs) == 2


def test_a_batch_reserves_tokens_by_chunks_and_none_for_a_payments_repeats(
    rt: Runtime, sandbox: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokens are reserved for what the batch can spend, a chunk at a time: a repeat of a payment in the batch
    (it waits for the first delivery's answer) reserves nothing, and other workers never see the bucket
    lowered by a whole batch's worth of tokens it will not use."""
    assert isinstance(rt.budget, RedisBudget)
    monkeypatch.setattr(pipeline, "RESERVE_CHUNK", 4)
    refs = [new_reference() for _ in range(10)]
    envelopes = []
    for ref in refs:
        pipeline.register_payment(rt, registration(ref))
        sandbox.create_cinetpay(ref, 5000)
        envelopes.append(sandbox.cinetpay_notification(ref))
    repeats = [sandbox.cinetpay_notification(refs[0]) for _ in range(3)]
    calls: list[int] = []
    original = rt.budget.reserve_many
    rt.budget.reserve_many = lambda *a: calls.append(a[3]) or original(*a)  # type: ignore[method-assign]
    try:
        results = pipeline.ingest_batch(rt, envelopes + repeats)
    finally:
        del rt.budget.reserve_many
    assert calls == [4, 4, 2]
    assert [r.outcome for r in results[:10] if isinstance(r, pipeline.Result)] == [Disposition.ACCEPTED] * 10
    assert sum(sandbox.get_cinetpay(ref)["check_count"] for ref in refs) == 10
