"""Nothing is lost when processes die (#10): PostgreSQL holds the work, the broker only brings
input in and wakes workers. Real PostgreSQL, real Redis, the sandbox over real HTTP, and a real
process killed with SIGKILL."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

import celeryconfig
from providers.sandbox.client import SandboxClient
from providers.sandbox.server import SandboxServer
from reconciliation import inbox
from reconciliation.models import DeadLetter, InboxDelivery, InboxStatus, Payment, PaymentStatus, Plan
from schemas.messages import WebhookEnvelope
from schemas.producer import INGEST_TASK
from tests.conftest import ROOT, wait_for, worker_env
from tests.helpers import new_reference, registration, resigned
from worker import pipeline, tasks
from worker.budget import RedisBudget
from worker.pipeline import Disposition
from worker.runtime import Runtime


def row(rt: Runtime, inbox_id: int) -> InboxDelivery:
    with rt.sessions() as session:
        found = session.get(InboxDelivery, inbox_id)
        assert found is not None
        return found


def letters(rt: Runtime) -> list[DeadLetter]:
    with rt.sessions() as session:
        return list(session.scalars(select(DeadLetter).order_by(DeadLetter.id)))


def settled(rt: Runtime, reference: str) -> bool:
    with rt.sessions() as session:
        return bool(session.scalar(select(Payment.settled).where(Payment.reference == reference)))


def end_lease(rt: Runtime, inbox_id: int) -> None:
    """The lease of the worker that held the delivery runs out."""
    with rt.sessions.begin() as session:
        session.execute(
            update(InboxDelivery)
            .where(InboxDelivery.id == inbox_id)
            .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
        )


# --------------------------------------------------------------------------- a worker dies mid-work

INGEST_ONE = (
    "import json, sys; from worker import pipeline, runtime; "
    "pipeline.ingest_webhook(runtime.get(), json.load(sys.stdin))"
)


@pytest.fixture
def killed_mid_call(
    rt: Runtime, sandbox: SandboxClient, pg_url: str, redis_url: str, sandbox_server: SandboxServer
) -> tuple[str, dict[str, Any], int]:
    """A process stored a CinetPay delivery and was SIGKILLed while the provider answered slowly."""
    ref = new_reference()
    pipeline.register_payment(rt, registration(ref))
    sandbox.create_cinetpay(ref, 5000, faults=[{"delay": 30}])
    envelope = sandbox.cinetpay_notification(ref)
    env = {**os.environ, **worker_env(pg_url, redis_url, sandbox_server, PAYRECON_HTTP_TIMEOUT="60,60")}
    proc = subprocess.Popen([sys.executable, "-c", INGEST_ONE], cwd=ROOT, env=env, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(envelope).encode())
    proc.stdin.close()

    def stored() -> int | None:
        with rt.sessions() as session:
            return session.scalar(select(InboxDelivery.id).where(InboxDelivery.reference == ref))

    inbox_id = wait_for(stored, what="the delivery in the inbox")
    wait_for(lambda: sandbox.get_cinetpay(ref)["check_count"] >= 1, what="the provider call")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert row(rt, inbox_id).status is InboxStatus.RECEIVED and not settled(rt, ref)
    return ref, envelope, inbox_id


def test_a_redelivered_message_goes_on_with_the_work_a_killed_worker_left(
    rt: Runtime, killed_mid_call: tuple[str, dict[str, Any], int]
) -> None:
    ref, envelope, inbox_id = killed_mid_call
    # The broker hands the message to another worker: while the lease runs, the work is not taken twice...
    assert pipeline.ingest_webhook(rt, envelope).outcome is Disposition.DUPLICATE
    end_lease(rt, inbox_id)
    # ... and once it has run out, the redelivery finishes it (it used to be dropped as a duplicate).
    assert pipeline.ingest_webhook(rt, envelope).outcome is Disposition.ACCEPTED
    assert settled(rt, ref) and row(rt, inbox_id).status is InboxStatus.PROCESSED


def test_the_janitor_takes_up_the_work_a_killed_worker_left(
    rt: Runtime, killed_mid_call: tuple[str, dict[str, Any], int]
) -> None:
    ref, _, inbox_id = killed_mid_call
    assert pipeline.claim_due_deliveries(rt) == []  # the lease still runs
    end_lease(rt, inbox_id)
    ((claimed, version),) = pipeline.claim_due_deliveries(rt)
    assert claimed == inbox_id and pipeline.claim_due_deliveries(rt) == []  # leased to the janitor's message
    assert pipeline.retry_delivery(rt, inbox_id).outcome is Disposition.DUPLICATE  # a stale message cannot take it
    assert pipeline.retry_delivery(rt, inbox_id, version=version).outcome is Disposition.ACCEPTED
    assert settled(rt, ref)


def test_due_deliveries_are_taken_oldest_first_and_only_when_due(rt: Runtime, sandbox: SandboxClient) -> None:
    refs = [new_reference() for _ in range(3)]
    ids = []
    for ref in refs:
        pipeline.register_payment(rt, registration(ref))
        sandbox.create_cinetpay(ref, 5000, faults=[{"status": 503}] * 3)
        result = pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(ref))
        assert result.outcome is Disposition.RETRY and result.inbox_id is not None
        ids.append(result.inbox_id)
    assert pipeline.claim_due_deliveries(rt) == []
    later = datetime.now(UTC) + timedelta(minutes=1)  # past every retry's due time (5 s, jittered)
    with rt.sessions() as session:
        order = list(
            session.scalars(select(InboxDelivery.id).order_by(InboxDelivery.next_attempt_at, InboxDelivery.id))
        )
    claimed = pipeline.claim_due_deliveries(rt, now=later)
    assert [inbox_id for inbox_id, _ in claimed] == order and sorted(order) == sorted(ids)
    assert all(version == later + inbox.LEASE for _, version in claimed)


def test_work_nobody_takes_shows_in_the_metrics(rt: Runtime, killed_mid_call: tuple[str, dict[str, Any], int]) -> None:
    """A dead worker's delivery, due for 5 minutes and not taken (no janitor running): an operator sees it."""
    from worker.observability import StateCollector

    _, _, inbox_id = killed_mid_call
    with rt.sessions.begin() as session:
        session.execute(
            update(InboxDelivery)
            .where(InboxDelivery.id == inbox_id)
            .values(next_attempt_at=datetime.now(UTC) - timedelta(minutes=5))
        )
    gauges = {
        (family.name, sample.labels.get("provider")): sample.value
        for family in StateCollector(rt.sessions, None).collect()
        for sample in family.samples
    }
    assert gauges["payrecon_waiting_deliveries", "cinetpay"] == 1
    assert 300 <= gauges["payrecon_delivery_overdue_seconds", "cinetpay"] < 330
    assert gauges["payrecon_delivery_overdue_seconds", "wave"] == 0


# --------------------------------------------------------------------------- outages are waits


def test_an_unreachable_budget_store_is_a_wait_not_a_dead_letter(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    pipeline.register_payment(rt, registration(ref))
    sandbox.create_cinetpay(ref, 5000)
    envelope = sandbox.cinetpay_notification(ref)
    down = dataclasses.replace(rt, budget=RedisBudget("redis://127.0.0.1:1/0"))  # nothing listens there
    result = pipeline.ingest_webhook(down, envelope)
    assert result.outcome is Disposition.RETRY and "budget store unavailable: ConnectionError" in result.detail
    assert result.delay == pipeline.BUDGET_OUTAGE_WAIT and result.inbox_id is not None
    assert letters(rt) == [] and sandbox.get_cinetpay(ref)["check_count"] == 0
    waiting = row(rt, result.inbox_id)
    assert (waiting.status, waiting.deferrals, waiting.attempts) == (InboxStatus.RECEIVED, 1, 0)
    # The store is back: the wake-up settles it.
    assert pipeline.retry_delivery(rt, result.inbox_id, version=result.due).outcome is Disposition.ACCEPTED


def test_broker_settings_bring_a_killed_workers_messages_back_within_about_a_minute() -> None:
    """Nothing waits on the broker longer than the visibility timeout, which is short."""
    options = celeryconfig.broker_transport_options
    timeout = options["visibility_timeout"]
    assert timeout <= 60
    assert timeout + options["unacked_restore_interval"] * options["unacked_restore_throttle"] <= 70
    assert tasks.WAKE_UP_MAX + tasks.WEBHOOK_PATH_LIMITS["time_limit"] < timeout
    # One message per thread; a batch raises it by what it holds (worker.batching), PAYRECON_BATCH_PREFETCH
    # messages at most.
    assert celeryconfig.worker_prefetch_multiplier == 1
    for name in ("ingest_webhook", "register_payment", "retry_delivery", "verify_payment"):
        task = getattr(tasks, name)
        assert task.time_limit == tasks.WEBHOOK_PATH_LIMITS["time_limit"]
    # The long jobs are acknowledged on receipt and re-driven from the database.
    for name in ("reconcile", "nightly_reconciliation", "recheck_due", "deliver_events"):
        assert getattr(tasks, name).acks_late is False


def test_a_row_written_by_a_worker_of_the_previous_version_is_due_at_once(rt: Runtime) -> None:
    """During a rolling upgrade, old workers insert received rows without the new columns."""
    with rt.sessions.begin() as session:
        session.execute(
            InboxDelivery.__table__.insert().values(
                provider="cinetpay",
                dedupe_key="old-worker",
                status="received",
                method="POST",
                path="/",
                headers={},
                body="",
                envelope_raw="{}",
                received_at=datetime.now(UTC),
                repeat_count=0,
                detail="",
            )
        )
    ((_, version),) = pipeline.claim_due_deliveries(rt, now=datetime.now(UTC) + timedelta(seconds=1))
    assert version is not None


def test_a_forged_copy_of_an_unfinished_delivery_takes_nothing(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = f"WAVE-{uuid.uuid4().hex[:12]}"
    sandbox.create("wave", reference=ref, amount=5000, currency="XOF", fate="accepted", faults=[{"status": 503}] * 3)
    pipeline.register_payment(rt, registration(ref, provider="wave", amount=5000))
    genuine = sandbox.notification("wave", ref)
    first = pipeline.ingest_webhook(rt, genuine)
    assert first.outcome is Disposition.RETRY and first.inbox_id is not None
    end_lease(rt, first.inbox_id)
    before = row(rt, first.inbox_id).next_attempt_at
    forged = {**genuine, "headers": {**genuine["headers"], "Wave-Signature": "t=1,v1=" + "0" * 64}}
    assert pipeline.ingest_webhook(rt, forged).outcome is Disposition.DUPLICATE
    assert row(rt, first.inbox_id).next_attempt_at == before  # still due: the genuine work is not held up
    assert pipeline.ingest_webhook(rt, genuine).outcome is Disposition.ACCEPTED


def test_an_erroring_budget_store_is_a_wait_too(rt: Runtime, sandbox: SandboxClient, private_redis: Any) -> None:
    """Out of memory, read-only after a failover: Redis answers, with an error. Still a wait."""
    ref, envelope = cinetpay_envelope(sandbox)
    pipeline.register_payment(rt, registration(ref))
    with private_redis.client() as client:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)
    full = dataclasses.replace(rt, budget=RedisBudget(private_redis.url))
    result = pipeline.ingest_webhook(full, envelope)
    assert result.outcome is Disposition.RETRY and "budget store unavailable: OutOfMemoryError" in result.detail
    assert result.delay == pipeline.BUDGET_OUTAGE_WAIT and result.inbox_id is not None
    waiting = row(rt, result.inbox_id)
    assert (waiting.deferrals, waiting.errors, waiting.attempts) == (1, 0, 0)  # a wait, not an error
    assert letters(rt) == []


def test_internal_errors_are_counted_apart_from_provider_failures(
    rt: Runtime, sandbox: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = new_reference()
    pipeline.register_payment(rt, registration(ref))
    sandbox.create_cinetpay(ref, 5000, faults=[{"status": 503}] * 3)
    first = pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(ref))
    with rt.sessions.begin() as session:  # a long provider outage before
        session.execute(update(InboxDelivery).values(attempts=rt.settings.verify_max_retries + 5))

    def broken(view: Any) -> Any:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(rt.client("cinetpay"), "check", broken)
    assert pipeline.retry_delivery(rt, first.inbox_id or 0, version=first.due).outcome is Disposition.RETRY
    assert letters(rt) == []


# --------------------------------------------------------------------------- bounded cost


@pytest.fixture
def momo_one_callback(rt: Runtime) -> Iterator[Runtime]:
    """MoMo lets one unauthenticated callback through per 100 s."""
    original = rt.profiles
    rt.profiles = {
        **original,
        "mtn_momo": dataclasses.replace(original["mtn_momo"], callback_rate=0.01, callback_burst=1),
    }
    assert isinstance(rt.budget, RedisBudget)
    rt.budget.reset("callbacks:mtn_momo")
    yield rt
    rt.budget.reset("callbacks:mtn_momo")
    rt.profiles = original


def momo_callback(reference: str, note: str) -> dict[str, Any]:
    payer = {"partyIdType": "MSISDN", "partyId": "46733123453"}
    body = json.dumps(
        {"financialTransactionId": note, "externalId": reference, "amount": "6500", "currency": "XOF", "payer": payer,
         "status": "SUCCESSFUL"}
    )  # fmt: skip
    return {
        "schema": "payrecon.webhook/1", "provider": "mtn_momo", "received_at": "2026-12-05T10:00:00+00:00",
        "method": "PUT", "path": f"/momo/callback/{reference}", "query": {},
        "headers": {"Content-Type": "application/json"}, "body": body,
    }  # fmt: skip


def test_many_callbacks_for_one_payment_cost_one_status_call(
    momo_one_callback: Runtime, sandbox: SandboxClient
) -> None:
    rt = momo_one_callback
    reference = str(uuid.uuid4())
    sandbox.create("mtn_momo", reference=reference, amount=6500, currency="XOF", fate="accepted", pending_checks=1)
    pipeline.register_payment(
        rt, registration(reference, provider="mtn_momo", amount=6500, plan="coko-premium-monthly")
    )
    rt.budget.reserve("callbacks:mtn_momo", 0.01, 1)  # someone else had the only free slot
    waiting = [pipeline.ingest_webhook(rt, momo_callback(reference, str(n))) for n in range(8)]
    assert all(r.outcome is Disposition.RETRY and r.due is not None for r in waiting)
    assert sandbox.get("mtn_momo", reference)["check_count"] == 0
    first, *rest = waiting
    assert pipeline.retry_delivery(rt, first.inbox_id or 0, version=first.due).outcome is Disposition.ACCEPTED
    # The provider's answer came after the other seven arrived: it covers them, no call of their own.
    woken = [pipeline.retry_delivery(rt, r.inbox_id or 0, version=r.due).outcome for r in rest]
    assert woken == [Disposition.DUPLICATE] * 7
    assert sandbox.get("mtn_momo", reference)["check_count"] == 1
    with rt.sessions() as session:
        statuses = set(session.scalars(select(InboxDelivery.status)))
        details = list(session.scalars(select(InboxDelivery.detail).where(InboxDelivery.id != first.inbox_id)))
    assert statuses == {InboxStatus.PROCESSED}
    assert all("after this one arrived" in d for d in details)
    # The seven slots they did not use were given back: the next callback waits 2 turns, not 9.
    wait, own = rt.budget.reserve("callbacks:mtn_momo", 0.01, 1)
    assert own and 150 < wait < 250


@pytest.fixture
def cinetpay_one_call(rt: Runtime) -> Iterator[Runtime]:
    """CinetPay's budget lets one status call through per 100 s."""
    original = rt.profiles
    rt.profiles = {**original, "cinetpay": dataclasses.replace(original["cinetpay"], api_rate=0.01, api_burst=1)}
    assert isinstance(rt.budget, RedisBudget)
    rt.budget.reset("api:cinetpay")
    yield rt
    rt.budget.reset("api:cinetpay")
    rt.profiles = original


def test_a_re_check_finishes_the_callbacks_waiting_for_their_turn(
    momo_one_callback: Runtime, sandbox: SandboxClient
) -> None:
    rt = momo_one_callback
    reference = str(uuid.uuid4())
    sandbox.create("mtn_momo", reference=reference, amount=6500, currency="XOF", fate="accepted")
    pipeline.register_payment(
        rt, registration(reference, provider="mtn_momo", amount=6500, plan="coko-premium-monthly")
    )
    rt.budget.reserve("callbacks:mtn_momo", 0.01, 1)  # the only free slot went elsewhere
    waiting = [pipeline.ingest_webhook(rt, momo_callback(reference, str(n))) for n in range(3)]
    assert all(r.outcome is Disposition.RETRY for r in waiting)
    with rt.sessions() as session:
        payment_id = session.scalar(select(Payment.id).where(Payment.reference == reference))
    assert pipeline.verify_payment(rt, payment_id or 0).outcome is Disposition.ACCEPTED  # beat's re-check
    with rt.sessions() as session:
        assert set(session.scalars(select(InboxDelivery.status))) == {InboxStatus.PROCESSED}
    assert sandbox.get("mtn_momo", reference)["check_count"] == 1
    wait, own = rt.budget.reserve("callbacks:mtn_momo", 0.01, 1)
    assert own and 50 < wait < 150  # their three slots were given back: one turn to wait, not four


def test_a_delivery_that_arrived_while_the_provider_was_answering_is_verified(
    cinetpay_one_call: Runtime, sandbox: SandboxClient
) -> None:
    """The answer reflects the payment when the provider was asked, not when it was stored."""
    rt = cinetpay_one_call
    ref = new_reference()
    pipeline.register_payment(rt, registration(ref))
    sandbox.create_cinetpay(ref, 5000, fate="waiting_then_accepted", pending_checks=1, faults=[{"delay": 1.5}])
    envelope = sandbox.cinetpay_notification(ref)
    results: list[pipeline.Result] = []
    first = threading.Thread(target=lambda: results.append(pipeline.ingest_webhook(rt, envelope)))
    first.start()
    wait_for(lambda: sandbox.get_cinetpay(ref)["check_count"] >= 1 or results, what="the first call")
    # Meanwhile the customer pays and CinetPay notifies again: it waits for its budget turn.
    second = pipeline.ingest_webhook(rt, resigned(envelope, cpm_trans_date="2026-12-05 10:00:00"))
    first.join()
    assert results[0].outcome is Disposition.ACCEPTED and second.outcome is Disposition.RETRY
    with rt.sessions() as session:
        assert session.scalar(select(Payment.status).where(Payment.reference == ref)) is PaymentStatus.PENDING
    assert pipeline.retry_delivery(rt, second.inbox_id or 0, version=second.due).outcome is Disposition.ACCEPTED
    assert settled(rt, ref) and sandbox.get_cinetpay(ref)["check_count"] == 2


def test_a_notification_whose_registration_commits_while_a_worker_holds_it_is_not_left_waiting(
    rt: Runtime, sandbox: SandboxClient
) -> None:
    ref = new_reference("ORD")
    state = sandbox.create("orange_money", reference=ref, amount=6500, currency="XOF", fate="accepted")
    early = pipeline.ingest_webhook(rt, sandbox.notification("orange_money", ref))
    assert early.outcome is Disposition.RETRY and early.inbox_id is not None
    # A worker takes it again and finds no registration; the registration commits before it puts it off.
    with rt.sessions.begin() as session:
        work = inbox.take(session, early.inbox_id, datetime.now(UTC), version=early.due)
    assert work is not None
    client = rt.client("orange_money")
    assert client is not None
    delivery = client.parse_delivery(WebhookEnvelope.model_validate_json(work.envelope_raw))
    registered = pipeline.register_payment(
        rt, registration(ref, provider="orange_money", amount=6500, plan="coko-premium-monthly",
                         provider_data=state["provider_data"])
    )  # fmt: skip
    ((woken, version),) = registered.wake  # still not authenticated, so woken even while held
    assert woken == early.inbox_id
    held = pipeline._await_registration(rt, client, delivery, work, "awaiting registration")
    assert held.outcome is Disposition.DUPLICATE  # its lease went with the wake-up: it puts nothing off
    assert pipeline.retry_delivery(rt, early.inbox_id, version=version).outcome is Disposition.ACCEPTED


def test_a_forged_notification_waiting_for_its_registration_is_never_finished_by_another_ones_answer(
    rt: Runtime, sandbox: SandboxClient
) -> None:
    ref = new_reference("ORD")
    state = sandbox.create("orange_money", reference=ref, amount=6500, currency="XOF", fate="accepted")
    genuine = sandbox.notification("orange_money", ref)
    forged = sandbox.notification("orange_money", ref, forged=True)
    early = pipeline.ingest_webhook(rt, forged)  # before the registration: cannot be told forged yet
    assert early.outcome is Disposition.RETRY and early.inbox_id is not None
    pipeline.register_payment(
        rt, registration(ref, provider="orange_money", amount=6500, plan="coko-premium-monthly",
                         provider_data=state["provider_data"])
    )  # fmt: skip
    assert pipeline.ingest_webhook(rt, genuine).outcome is Disposition.ACCEPTED  # the provider answers
    assert row(rt, early.inbox_id).status is InboxStatus.RECEIVED  # not taken as answered
    woken = pipeline.retry_delivery(rt, early.inbox_id, version=datetime.now(UTC))
    assert woken.outcome is Disposition.FORGED and row(rt, early.inbox_id).status is InboxStatus.FORGED


def test_an_unsigned_callback_about_a_payment_the_provider_does_not_know_is_quarantined(
    rt: Runtime, sandbox: SandboxClient
) -> None:
    result = pipeline.ingest_webhook(rt, momo_callback(str(uuid.uuid4()), "1"))
    assert result.outcome is Disposition.FORGED and "does not know this payment" in result.detail
    assert letters(rt) == []


# --------------------------------------------------------------------------- bad input


def cinetpay_envelope(sandbox: SandboxClient) -> tuple[str, dict[str, Any]]:
    ref = new_reference()
    sandbox.create_cinetpay(ref, 5000)
    return ref, sandbox.cinetpay_notification(ref)


def test_an_oversized_envelope_is_dead_lettered_with_its_head_and_digest(rt: Runtime, sandbox: SandboxClient) -> None:
    _, envelope = cinetpay_envelope(sandbox)
    envelope["body"] += "&padding=" + "x" * rt.settings.max_envelope_bytes
    result = pipeline.ingest_webhook(rt, envelope)
    assert result.outcome is Disposition.MALFORMED and "PAYRECON_MAX_ENVELOPE_BYTES" in result.detail
    (letter,) = letters(rt)
    raw = json.dumps(envelope, ensure_ascii=False, sort_keys=True)
    assert letter.reason == "oversized_envelope" and letter.provider == "cinetpay"
    assert hashlib.sha256(raw.encode()).hexdigest() in letter.detail
    assert letter.payload == raw[: pipeline.OVERSIZED_HEAD]
    with rt.sessions() as session:
        assert session.scalar(select(func.count()).select_from(InboxDelivery)) == 0


def test_a_lone_surrogate_is_dead_lettered_with_the_input_kept_whole(rt: Runtime, sandbox: SandboxClient) -> None:
    _, envelope = cinetpay_envelope(sandbox)
    envelope["body"] += "&name=\udce9"  # a receiver that decoded Latin-1 bytes with surrogateescape
    result = pipeline.ingest_webhook(rt, envelope)
    assert result.outcome is Disposition.MALFORMED and "body: Input should be a valid string" in result.detail
    (letter,) = letters(rt)
    assert letter.reason == "invalid_envelope" and json.loads(letter.payload) == envelope  # replayable as it came


def test_nul_characters_are_stored_escaped_and_the_delivery_is_processed(rt: Runtime, sandbox: SandboxClient) -> None:
    ref, envelope = cinetpay_envelope(sandbox)
    pipeline.register_payment(rt, registration(ref))
    envelope["headers"] = {**envelope["headers"], "X-Note": "a\x00b"}
    envelope["path"] += "\x00"
    result = pipeline.ingest_webhook(rt, envelope)
    assert result.outcome is Disposition.ACCEPTED and result.inbox_id is not None
    stored = row(rt, result.inbox_id)
    assert stored.headers["X-Note"] == "a\\u0000b" and stored.path.endswith("\\u0000")
    assert json.loads(stored.envelope_raw) == envelope  # the raw envelope reads back exactly
    assert pipeline.ingest_webhook(rt, envelope).outcome is Disposition.DUPLICATE
    assert row(rt, result.inbox_id).repeat_count == 1


def test_a_too_long_reference_is_a_malformed_delivery_with_an_inbox_row(rt: Runtime, sandbox: SandboxClient) -> None:
    _, envelope = cinetpay_envelope(sandbox)
    body = envelope["body"].split("&")
    envelope["body"] = "&".join(f"cpm_trans_id={'R' * 101}" if p.startswith("cpm_trans_id=") else p for p in body)
    for _ in range(2):
        result = pipeline.ingest_webhook(rt, envelope)
        assert result.outcome is Disposition.MALFORMED and "limit is 100" in result.detail
    assert result.inbox_id is not None and row(rt, result.inbox_id).repeat_count == 1  # repeats are counted
    assert [letter.reason for letter in letters(rt)] == ["malformed_body"]


# --------------------------------------------------------------------------- replay works for every reason


def replay(rt: Runtime, letter: DeadLetter) -> pipeline.Result:
    """What ``payrecon dead-letters replay`` sends, run as its task runs it."""
    payload = json.loads(letter.payload)
    if letter.task == INGEST_TASK:
        return pipeline.ingest_webhook(rt, payload)
    return pipeline.register_payment(rt, payload)


def test_replay_after_the_provider_was_configured(rt: Runtime, sandbox: SandboxClient) -> None:
    ref, envelope = cinetpay_envelope(sandbox)
    pipeline.register_payment(rt, registration(ref))
    bare = dataclasses.replace(rt, clients={})
    assert pipeline.ingest_webhook(bare, envelope).outcome is Disposition.FAILED
    (letter,) = letters(rt)
    assert letter.reason == "provider_not_configured"
    assert replay(rt, letter).outcome is Disposition.ACCEPTED and settled(rt, ref)


def test_replay_after_the_provider_came_back(rt: Runtime, sandbox: SandboxClient) -> None:
    from tests.helpers import age

    ref = new_reference()
    pipeline.register_payment(rt, registration(ref))
    sandbox.create_cinetpay(ref, 5000, faults=[{"status": 503}] * 6)  # two calls of three tries each
    first = pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(ref))
    assert first.inbox_id is not None
    age(rt, first.inbox_id, rt.profile("cinetpay").give_up_after)
    assert pipeline.retry_delivery(rt, first.inbox_id, version=first.due).outcome is Disposition.FAILED
    (letter,) = letters(rt)
    assert letter.reason == "provider_unavailable"
    assert replay(rt, letter).outcome is Disposition.ACCEPTED and settled(rt, ref)


def test_replay_after_a_bug_was_fixed(rt: Runtime, sandbox: SandboxClient, monkeypatch: pytest.MonkeyPatch) -> None:
    ref, envelope = cinetpay_envelope(sandbox)
    pipeline.register_payment(rt, registration(ref))
    client = rt.client("cinetpay")

    def broken(view: Any) -> Any:
        raise ZeroDivisionError("a bug in the client")

    monkeypatch.setattr(client, "check", broken)  # the only stand-in: a bug cannot be made real
    result = pipeline.ingest_webhook(rt, envelope)
    while result.outcome is Disposition.RETRY:  # internal errors retry like provider failures, then give up
        result = pipeline.retry_delivery(rt, result.inbox_id or 0, version=result.due)
    assert result.outcome is Disposition.FAILED
    (letter,) = letters(rt)
    assert letter.reason == "internal_error" and "ZeroDivisionError" in letter.detail
    assert row(rt, result.inbox_id or 0).errors == rt.settings.verify_max_retries - 1
    monkeypatch.undo()
    assert replay(rt, letter).outcome is Disposition.ACCEPTED and settled(rt, ref)


def test_replay_of_a_registration_after_its_plan_was_added(rt: Runtime) -> None:
    ref = new_reference()
    assert pipeline.register_payment(rt, registration(ref, plan="not-yet")).outcome is Disposition.FAILED
    (letter,) = letters(rt)
    assert letter.reason == "unknown_plan"
    with rt.sessions.begin() as session:
        session.add(Plan(code="not-yet", product="depannage", name="Later", price=5000, currency="XOF", period_days=30))
    assert replay(rt, letter).outcome is Disposition.CREATED
    with rt.sessions() as session:
        assert session.scalar(select(Payment.status).where(Payment.reference == ref)) is PaymentStatus.REGISTERED


def test_replay_after_the_provider_stopped_refusing(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    pipeline.register_payment(rt, registration(ref))
    sandbox.create_cinetpay(ref, 5000, faults=[{"status": 403}])  # a refusal, not an outage
    assert pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(ref)).outcome is Disposition.FAILED
    (letter,) = letters(rt)
    assert letter.reason == "provider_error" and "403" in letter.detail
    assert replay(rt, letter).outcome is Disposition.ACCEPTED and settled(rt, ref)


@pytest.mark.parametrize("reason", ["invalid_registration", "registration_conflict"])
def test_replay_of_a_registration_refused_for_good_says_so_again(rt: Runtime, reason: str) -> None:
    ref = new_reference()
    if reason == "registration_conflict":
        pipeline.register_payment(rt, registration(ref))
        payload = registration(ref, amount=10000, periods=2)  # the same reference, other terms
    else:
        payload = {"schema": "payrecon.payment/1", "reference": ref, "amount": "5000"}
    assert pipeline.register_payment(rt, payload).outcome in (Disposition.FAILED, Disposition.MALFORMED)
    (letter,) = letters(rt)
    assert letter.reason == reason
    replay(rt, letter)
    assert [d.reason for d in letters(rt)] == [reason, reason]  # refused again, the same way, kept again


@pytest.mark.parametrize(
    ("payload", "reason", "again", "letters_after"),
    [
        ({"schema": "payrecon.webhook/1"}, "invalid_envelope", Disposition.MALFORMED, 2),
        (
            {
                "schema": "payrecon.webhook/1",
                "provider": "cinetpay",
                "received_at": "2026-12-05T10:00:00+00:00",
                "method": "POST",
                "path": "/",
                "query": {},
                "headers": {},
                "body": "not=a&cinetpay=notification",
            },
            "malformed_body",
            Disposition.MALFORMED,
            1,
        ),
    ],
)
def test_replay_of_input_that_can_never_be_processed_says_so_again(
    rt: Runtime, payload: Any, reason: str, again: Disposition, letters_after: int
) -> None:
    """Replayed unchanged, such input is refused the same way: a new letter, or a repeat counted on
    its inbox row, whose letter is not written twice (fixed input is sent as a new message)."""
    pipeline.ingest_webhook(rt, payload)
    (letter,) = letters(rt)
    assert letter.reason == reason
    assert replay(rt, letter).outcome is again
    assert len(letters(rt)) == letters_after
