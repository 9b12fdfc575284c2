"""Webhooks taken, verified and settled in batches (worker.batching, pipeline.ingest_batch): each
delivery ends as it would alone, on real PostgreSQL and over real HTTP against the sandbox; and
a real worker process consumes its messages in batches."""

from __future__ import annotations

import json
import re
import sys
import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text

from providers.base import Outcome
from providers.sandbox.client import SandboxClient
from reconciliation import ledger, payments
from reconciliation.models import (
    DeadLetter,
    InboxDelivery,
    InboxStatus,
    Payment,
    PaymentStatus,
    Subscription,
    SubscriptionGrant,
)
from tests.conftest import wait_for
from tests.helpers import new_reference, registration, resigned
from worker import pipeline
from worker.pipeline import Disposition, NotStored, Result
from worker.runtime import Runtime


def paid(rt: Runtime, sandbox: SandboxClient, ref: str, **over: Any) -> dict[str, Any]:
    faults = over.pop("faults", None)
    assert pipeline.register_payment(rt, registration(ref, **over)).outcome is Disposition.CREATED
    sandbox.create_cinetpay(ref, over.get("amount", 5000), **({"faults": faults} if faults else {}))
    return sandbox.cinetpay_notification(ref)


def outcomes(results: list[Result | NotStored]) -> list[Disposition]:
    return [r.outcome for r in results if isinstance(r, Result)]


def status(rt: Runtime, ref: str) -> PaymentStatus:
    with rt.sessions() as session:
        return session.scalars(select(Payment.status).where(Payment.reference == ref)).one()


def test_a_batch_settles_each_delivery_as_it_would_alone(rt: Runtime, sandbox: SandboxClient) -> None:
    refs = [new_reference() for _ in range(6)]
    envelopes = [paid(rt, sandbox, ref) for ref in refs]
    forged = resigned(paid(rt, sandbox, new_reference()), "wrong-secret")
    batch = [*envelopes, envelopes[0], {"schema": "payrecon.webhook/1"}, forged]

    results = pipeline.ingest_batch(rt, batch)

    assert outcomes(results) == [Disposition.ACCEPTED] * 6 + [
        Disposition.DUPLICATE,
        Disposition.MALFORMED,
        Disposition.FORGED,
    ]
    assert all(status(rt, ref) is PaymentStatus.SUCCEEDED for ref in refs)
    assert [sandbox.get_cinetpay(ref)["check_count"] for ref in refs] == [1] * 6
    with rt.sessions() as session:
        assert session.scalar(select(func.count()).select_from(SubscriptionGrant)) == 6
        assert ledger.unbalanced_journals(session) == []
        received = session.scalar(
            select(func.count()).select_from(InboxDelivery).where(InboxDelivery.status == InboxStatus.RECEIVED)
        )
        assert received == 0
        assert [d.reason for d in session.scalars(select(DeadLetter))] == ["invalid_envelope"]
        # One settlement transaction: every settled payment row was last written by the same one.
        xids = session.execute(text("SELECT count(DISTINCT xmin::text) FROM payments WHERE settled")).scalar_one()
        assert xids == 1


def test_a_batchs_checks_wait_together_in_the_batchs_own_thread(
    rt: Runtime, sandbox: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's provider checks wait for their answers together (the provider answers each in 0.3 s here), in the
    thread that runs the batch (a greenlet each, ``providers.hub``): not one after the other, and not on threads
    of their own."""
    refs = [new_reference() for _ in range(4)]
    envelopes = [paid(rt, sandbox, ref, faults=[{"delay": 0.3}]) for ref in refs]
    client = rt.client("cinetpay")
    assert client is not None
    check, seen = client.check, []

    def spied(view: Any) -> Any:
        seen.append(("asks", threading.get_ident()))
        try:
            return check(view)
        finally:
            seen.append(("answered", threading.get_ident()))

    monkeypatch.setattr(client, "check", spied)
    assert outcomes(pipeline.ingest_batch(rt, envelopes)) == [Disposition.ACCEPTED] * 4
    assert [step for step, _ in seen] == ["asks"] * 4 + ["answered"] * 4
    assert {thread for _, thread in seen} == {threading.get_ident()}
    assert [sandbox.get_cinetpay(ref)["check_count"] for ref in refs] == [1] * 4


def test_two_payments_of_one_account_in_one_batch_stack_their_periods(rt: Runtime, sandbox: SandboxClient) -> None:
    first, second = new_reference(), new_reference()
    envelopes = [
        paid(rt, sandbox, first, account="tech-stack", periods=1),
        paid(rt, sandbox, second, account="tech-stack", periods=3, amount=15000),
    ]
    assert outcomes(pipeline.ingest_batch(rt, envelopes)) == [Disposition.ACCEPTED, Disposition.ACCEPTED]
    with rt.sessions() as session:
        grants = session.scalars(select(SubscriptionGrant).order_by(SubscriptionGrant.id)).all()
        sub = session.scalars(select(Subscription).where(Subscription.account == "tech-stack")).one()
        assert len(grants) == 2
        # The second grant starts where the first ends: 1 + 3 months of access, not 3.
        assert grants[1].starts_at == grants[0].ends_at
        assert sub.ends_at == grants[1].ends_at
        assert sub.ends_at - grants[0].starts_at >= timedelta(days=4 * 28)


def test_a_second_delivery_of_a_payment_in_the_batch_spends_no_call(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    envelope = paid(rt, sandbox, ref)
    # The provider's second notification of the same payment (another delivery, same reference).
    again = resigned(envelope, cpm_trans_date="2026-12-05 10:00:01")
    results = pipeline.ingest_batch(rt, [envelope, again])
    assert outcomes(results) == [Disposition.ACCEPTED, Disposition.DUPLICATE]
    assert "of the same batch" in results[1].detail  # type: ignore[union-attr]
    assert sandbox.get_cinetpay(ref)["check_count"] == 1
    with rt.sessions() as session:
        rows = session.scalars(select(InboxDelivery.status).order_by(InboxDelivery.id)).all()
        assert rows == [InboxStatus.PROCESSED, InboxStatus.PROCESSED]


def test_a_provider_failure_in_a_batch_puts_off_that_delivery_only(rt: Runtime, sandbox: SandboxClient) -> None:
    good, bad = new_reference(), new_reference()
    envelopes = [paid(rt, sandbox, good), paid(rt, sandbox, bad, faults=[{"status": 503}] * 12)]
    results = pipeline.ingest_batch(rt, envelopes)
    assert outcomes(results) == [Disposition.ACCEPTED, Disposition.RETRY]
    put_off = results[1]
    assert isinstance(put_off, Result) and put_off.due is not None and put_off.inbox_id is not None
    assert status(rt, good) is PaymentStatus.SUCCEEDED
    assert status(rt, bad) is PaymentStatus.REGISTERED
    with rt.sessions() as session:
        row = session.get(InboxDelivery, put_off.inbox_id)
        assert row is not None and (row.status, row.attempts) == (InboxStatus.RECEIVED, 1)


def test_a_batch_that_cannot_be_settled_together_is_settled_one_by_one(
    rt: Runtime, sandbox: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    refs = [new_reference() for _ in range(3)]
    envelopes = [paid(rt, sandbox, ref) for ref in refs]

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the set-wise settlement")

    monkeypatch.setattr(pipeline, "_settle_all", broken)
    assert outcomes(pipeline.ingest_batch(rt, envelopes)) == [Disposition.ACCEPTED] * 3
    assert all(status(rt, ref) is PaymentStatus.SUCCEEDED for ref in refs)


def test_deliveries_not_stored_in_an_outage_are_handed_back(rt: Runtime, sandbox: SandboxClient) -> None:
    envelope = paid(rt, sandbox, new_reference())
    rt.engine.dispose()
    original = rt.sessions.kw["bind"]
    from sqlalchemy import create_engine

    dead = create_engine("postgresql+psycopg2://postgres@127.0.0.1:1/nowhere", pool_pre_ping=False)
    rt.sessions.configure(bind=dead)
    try:
        results = pipeline.ingest_batch(rt, [envelope, {"schema": "payrecon.webhook/1"}])
    finally:
        rt.sessions.configure(bind=original)
        dead.dispose()
    assert all(isinstance(r, NotStored) for r in results)


@pytest.mark.e2e
def test_a_worker_consumes_webhooks_in_batches(
    e2e: Runtime, sandbox: SandboxClient, producer: Any, worker_process: Any
) -> None:
    refs = [new_reference() for _ in range(60)]
    envelopes = [paid(e2e, sandbox, ref) for ref in refs]
    for envelope in envelopes:
        producer.send_task("payrecon.ingest_webhook", kwargs={"envelope": envelope}, queue="webhooks")

    def all_settled() -> bool:
        with e2e.sessions() as session:
            return session.scalar(select(func.count()).select_from(Payment).where(Payment.settled)) == len(refs)

    wait_for(all_settled, timeout=60, what="every payment settled")
    with e2e.sessions() as session:
        xids = session.execute(text("SELECT count(DISTINCT xmin::text) FROM payments WHERE settled")).scalar_one()
    assert xids < len(refs) / 2, "settled one transaction per delivery: not in batches"
    assert "batches of up to 100 messages" in worker_process.log()


def _plain(payload: dict[str, Any]) -> list[tuple[str, Any]]:
    """An event's payload without what differs between two payments (references, accounts, clocks)."""
    masked = {"reference": "REF", "payment_reference": "REF", "account": "ACCOUNT"}
    clocks = {"paid_at", "starts_at", "ends_at"}
    return sorted((k, masked.get(k, bool(v) if k in clocks else v)) for k, v in payload.items())


def _written(rt: Runtime, refs: list[str]) -> list[dict[str, Any]]:
    """What settling wrote about each payment, without ids, references and clocks."""
    from reconciliation.models import Journal, OutboxEvent, Verification

    out = []
    with rt.sessions() as session:
        for ref in refs:
            p = session.scalars(select(Payment).where(Payment.reference == ref)).one()
            s = session.scalars(select(Subscription).where(Subscription.account == p.account)).one()
            v = session.scalars(select(Verification).where(Verification.payment_id == p.id)).one()
            g = session.scalars(select(SubscriptionGrant).where(SubscriptionGrant.payment_id == p.id)).one()
            j = session.scalars(select(Journal).where(Journal.payment_id == p.id)).one()
            events = session.scalars(
                select(OutboxEvent)
                .where(OutboxEvent.payload["reference"].as_string() == ref)
                .order_by(OutboxEvent.created_at, OutboxEvent.type)
            ).all()
            granted = session.scalars(
                select(OutboxEvent).where(OutboxEvent.payload["payment_reference"].as_string() == ref)
            ).all()
            out.append(
                {
                    "payment": (p.status, p.settled, p.confirmed_amount, p.confirmed_currency, p.next_check_at,
                                p.finalized_at is not None, p.paid_at is not None, bool(p.provider_transaction_id)),
                    "verification": (v.trigger, v.outcome, v.claimed_status, v.claimed_amount, v.answered_amount,
                                     v.decision.split(", access until")[0], v.raw_response is not None,
                                     v.asked_at is not None, v.inbox_id is not None),
                    "grant": (g.periods, g.days, g.kind, g.plan_code),
                    "journal": (j.kind, j.memo.replace(ref, "REF").replace(str(p.account), "ACCOUNT"),
                                sorted((e.side, e.amount) for e in j.entries)),
                    "events": [(e.type, e.product, _plain(e.payload)) for e in [*events, *granted]],
                    "subscription": (s.active, s.plan_code, s.expired_at, round((s.ends_at - s.starts_at).days)),
                }
            )  # fmt: skip
    return out


def test_the_set_wise_settlement_writes_what_one_at_a_time_does(rt: Runtime, sandbox: SandboxClient) -> None:
    from reconciliation import facts

    noted: list[tuple[str, dict[str, Any]]] = []

    def listener(kind: str, data: dict[str, Any]) -> None:
        noted.append((kind, {k: v for k, v in data.items() if k != "seconds"}))

    facts.subscribe(listener)
    try:
        alone = [new_reference() for _ in range(3)]
        together = [new_reference() for _ in range(3)]
        alone_env = [paid(rt, sandbox, ref, account=f"a-{i}", periods=i + 1, amount=5000 * (i + 1))
                     for i, ref in enumerate(alone)]  # fmt: skip
        together_env = [paid(rt, sandbox, ref, account=f"t-{i}", periods=i + 1, amount=5000 * (i + 1))
                        for i, ref in enumerate(together)]  # fmt: skip
        noted.clear()
        assert [pipeline.ingest_webhook(rt, e).outcome for e in alone_env] == [Disposition.ACCEPTED] * 3
        one_by_one = sorted(map(repr, noted))
        noted.clear()
        assert outcomes(pipeline.ingest_batch(rt, together_env)) == [Disposition.ACCEPTED] * 3
        assert ("batch_settled", {"set_wise": 3, "one_by_one": 0}) in noted
        assert sorted(repr(fact) for fact in noted if fact[0] != "batch_settled") == one_by_one
    finally:
        facts.unsubscribe(listener)
    assert _written(rt, together) == _written(rt, alone)


def test_an_unusual_answer_in_a_batch_is_settled_one_by_one_beside_the_plain_ones(
    rt: Runtime, sandbox: SandboxClient
) -> None:
    from reconciliation import facts

    plain, short = new_reference(), new_reference()
    assert pipeline.register_payment(rt, registration(short)).outcome is Disposition.CREATED
    sandbox.create_cinetpay(short, 4000)  # the customer paid less than registered
    envelopes = [paid(rt, sandbox, plain), sandbox.cinetpay_notification(short)]
    noted: list[tuple[str, dict[str, Any]]] = []

    def listener(kind: str, data: dict[str, Any]) -> None:
        noted.append((kind, data))

    facts.subscribe(listener)
    try:
        assert outcomes(pipeline.ingest_batch(rt, envelopes)) == [Disposition.ACCEPTED, Disposition.MISMATCH]
    finally:
        facts.unsubscribe(listener)
    assert ("batch_settled", {"set_wise": 1, "one_by_one": 1}) in noted
    with rt.sessions() as session:
        balances = {(b.account, b.currency): b.balance for b in ledger.balances(session)}
        assert balances[("revenue:subscriptions", "XOF")] == -5000
        assert balances[("suspense", "XOF")] == -4000


@pytest.mark.e2e
def test_a_batch_is_not_capped_by_the_prefetch_of_its_threads(
    e2e: Runtime,
    sandbox: SandboxClient,
    sandbox_server: Any,
    pg_url: str,
    private_redis: Any,
    tmp_path: Any,
) -> None:
    """A worker of 4 threads (prefetch 4) still gathers batches of many messages: each message held for
    a batch raises the prefetch by one (PAYRECON_BATCH_PREFETCH at most), and lowers it again once done."""
    from celery import Celery

    from tests.conftest import WorkerProcess, worker_env

    refs = [new_reference() for _ in range(60)]
    envelopes = [paid(e2e, sandbox, ref) for ref in refs]
    producer = Celery("batch-test", broker=private_redis.url)
    producer.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)
    for envelope in envelopes:  # all waiting before the worker starts
        producer.send_task("payrecon.ingest_webhook", kwargs={"envelope": envelope}, queue="webhooks")
    producer.close()
    worker = WorkerProcess(
        worker_env(pg_url, private_redis.url, sandbox_server),
        tmp_path / "worker.log",
        [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "webhooks", "-P", "threads",
         "-c", "4", "-l", "info"],
    )  # fmt: skip
    worker.start()
    try:

        def all_settled() -> bool:
            with e2e.sessions() as session:
                return session.scalar(select(func.count()).select_from(Payment).where(Payment.settled)) == len(refs)

        def sizes() -> list[int]:
            return [int(n) for n in re.findall(r"batch settled: (\d+) set-wise", worker.log())]

        wait_for(all_settled, timeout=60, what="every payment settled")
        # The line is logged once the settlement has committed: it may come a moment after the rows.
        wait_for(lambda: sum(sizes()) == len(refs), timeout=10, what="every settlement logged")
        assert max(sizes()) > 4 * 3, sizes()
    finally:
        worker.stop()
    with private_redis.client() as client:  # every message acknowledged: nothing held, nothing left
        assert client.llen("webhooks") == 0 and client.hlen("unacked") == 0


class _Qos:
    """A consumer's QoS as the Batcher uses it: how far the prefetch is raised."""

    def __init__(self) -> None:
        self.raised = 0

    def increment_eventually(self) -> None:
        self.raised += 1

    def decrement_eventually(self, n: int) -> None:
        self.raised -= n


class _Message:
    payload: dict[str, Any] = {}
    headers: dict[str, Any] = {}
    channel = None

    def __init__(self, n: int) -> None:
        self.n = n

    def decode(self) -> tuple[tuple[()], dict[str, Any], dict[str, Any]]:
        return (), {"envelope": {"n": self.n}}, {}


def _consumer(jobs: list[Any]) -> Any:
    """A Celery consumer as the Batcher uses it; the batches handed to its pool wait in ``jobs`` (their callbacks)
    until the test runs them."""
    stub: Any = type("Consumer", (), {})()
    entry = type("Entry", (), {"cancel": lambda e: None})()
    stub.pool = type(
        "Pool", (), {"apply_async": lambda self, fn, args, callback, error_callback: jobs.append(callback)}
    )()
    stub.timer = type("Timer", (), {"call_after": lambda self, wait, fn: entry})()
    stub.connection_errors = ()
    stub.qos = _Qos()
    stub.call_soon_ack = None
    return stub


def test_the_prefetch_is_raised_for_at_most_the_messages_a_worker_may_hold_for_batches() -> None:
    """Each message held for a batch raises the prefetch by one until ``PAYRECON_BATCH_PREFETCH`` messages
    are held; the messages beyond wait within the worker's own prefetch, and once a batch is done the prefetch
    comes down by what was raised for it."""
    from worker.batching import Batcher

    jobs: list[Any] = []
    consumer = _consumer(jobs)
    qos = consumer.qos
    acked: list[int] = []
    batcher = Batcher(consumer, None, size=4, wait=1.0, prefetch=8)
    for m in [_Message(n) for n in range(13)]:
        batcher(m, None, lambda *a, m=m: acked.append(m.n), lambda *a, **k: None, [])
    # Three full batches went to the pool; the prefetch rose for the first two batches' messages only.
    assert len(jobs) == 3 and qos.raised == 2 * 4
    jobs.pop(0)([True] * 4)  # the first batch done: its four acknowledged, the prefetch down by four
    assert acked == [0, 1, 2, 3] and qos.raised == 4
    batcher(_Message(13), None, lambda *a: acked.append(13), lambda *a, **k: None, [])
    assert qos.raised == 5  # room again: the next message held raises it
    jobs.pop(0)([True] * 4)
    jobs.pop(0)([True] * 4)  # the third batch was held within the prefetch: nothing to lower for it
    assert qos.raised == 1
    batcher.flush()
    jobs.pop(0)([True] * 2)
    assert qos.raised == 0 and sorted(acked) == list(range(14))


def test_batches_of_a_lost_connection_do_not_lower_the_new_connections_prefetch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a reconnection Celery starts a new QoS at the base prefetch (and a new Batcher): the batches still
    running from before lower nothing on it when they end; and a message that cannot be sent back is logged, and
    still lowers what was raised for it."""
    from worker.batching import Batcher

    jobs: list[Any] = []
    consumer = _consumer(jobs)
    old = consumer.qos
    before = Batcher(consumer, None, size=4, wait=1.0, prefetch=8)
    for n in range(8):
        before(_Message(n), None, lambda *a: None, lambda *a, **k: None, [])
    assert old.raised == 8 and len(jobs) == 2
    consumer.qos = new = _Qos()  # the connection was lost: Celery's new QoS and a new Batcher
    after = Batcher(consumer, None, size=4, wait=1.0, prefetch=8)
    for n in range(8, 12):
        after(_Message(n), None, lambda *a: None, lambda *a, **k: None, [])
    assert new.raised == 4 and len(jobs) == 3
    jobs.pop(0)([True] * 4)
    jobs.pop(0)([True] * 4)  # the old batches end: the new prefetch keeps what its own batch raised
    assert new.raised == 4 and before.raised == 0

    def rejecting(*_: Any, **__: Any) -> None:
        raise RuntimeError("the message is in a state that cannot be rejected")

    after(_Message(12), None, lambda *a: None, rejecting, [])
    after.flush()
    jobs.pop()([False])  # its message sent back, which fails: what was raised for it still comes down
    assert new.raised == 4
    assert "a batched message could not be sent back" in caplog.text
    jobs.pop(0)([True] * 4)
    assert new.raised == 0 and after.raised == 0


def test_the_prefetch_comes_down_on_the_consumers_loop() -> None:
    """A batch ends in a pool thread; what it raised comes down on the consumer's event loop, where the messages
    raised it (Celery's QoS is not locked there: a decrement from another thread could be lost)."""
    from worker.batching import Batcher

    jobs: list[Any] = []
    loop: list[Any] = []  # what the consumer's loop is to run
    consumer = _consumer(jobs)
    consumer.call_soon_ack = loop.append
    batcher = Batcher(consumer, None, size=4, wait=1.0, prefetch=8)
    for n in range(4):
        batcher(_Message(n), None, lambda *a: None, lambda *a, **k: None, [])
    jobs.pop()([True] * 4)
    assert consumer.qos.raised == 4 and batcher.raised == 4  # not yet: the loop has not run
    for callback in loop:
        callback()
    assert consumer.qos.raised == 0 and batcher.raised == 0


def test_the_prefetch_comes_down_under_the_lock_its_increments_take() -> None:
    """Without an event loop (the embedded demo's broker) a batch lowers the prefetch from its pool thread at once,
    while the consumer's thread raises it: Celery's QoS lock is a dummy there, so both take the Batcher's."""
    from worker.batching import Batcher

    jobs: list[Any] = []
    consumer = _consumer(jobs)
    batcher = Batcher(consumer, None, size=4, wait=1.0, prefetch=8)
    locked: list[bool] = []
    decrement = consumer.qos.decrement_eventually
    consumer.qos.decrement_eventually = lambda n: (locked.append(batcher.lock.locked()), decrement(n))
    for n in range(4):
        batcher(_Message(n), None, lambda *a: None, lambda *a, **k: None, [])
    jobs.pop()([True] * 4)
    assert locked == [True] and consumer.qos.raised == 0


def test_a_batch_the_stopping_pool_refuses_goes_back_and_lowers_what_it_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The pool refuses a batch (it is stopping): its messages are sent back, one that cannot be is logged, and the
    prefetch comes down by what was raised for all of them."""
    from worker.batching import Batcher

    consumer = _consumer([])

    def stopping(*_: Any, **__: Any) -> None:
        raise RuntimeError("the pool is stopping")

    consumer.pool.apply_async = stopping
    sent_back: list[int] = []

    def rejecting(*_: Any, **__: Any) -> None:
        raise RuntimeError("the message is in a state that cannot be rejected")

    batcher = Batcher(consumer, None, size=3, wait=1.0, prefetch=8)
    batcher(_Message(0), None, lambda *a: None, rejecting, [])
    batcher(_Message(1), None, lambda *a: None, lambda *a, **k: sent_back.append(1), [])
    batcher(_Message(2), None, lambda *a: None, lambda *a, **k: sent_back.append(2), [])  # full: handed to the pool
    assert sent_back == [1, 2] and consumer.qos.raised == 0 and batcher.raised == 0
    assert "a batched message could not be sent back" in caplog.text


def test_a_reconnection_does_not_reset_what_batches_raised() -> None:
    """Celery's restoring of a prefetch it lowered after a reconnection (one more at each acknowledgement, up to one
    per thread) is off: it would set the QoS back to one per thread under the batches' raise, and their lowering
    would then take the prefetch to 1."""
    from types import SimpleNamespace

    from celery.worker.consumer.consumer import Consumer
    from kombu.common import QoS

    import celeryconfig

    qos = QoS(lambda **_: None, 4)  # one per thread, 4 threads
    qos.value = 4 + 300  # and 300 raised for messages held in batches
    consumer: Any = SimpleNamespace(
        app=SimpleNamespace(conf=SimpleNamespace(
            worker_enable_prefetch_count_reduction=celeryconfig.worker_enable_prefetch_count_reduction)),
        _maximum_prefetch_restored=False,  # as after a reconnection that lowered it
        qos=qos,
        max_prefetch_count=4,
        _new_prefetch_count=qos.value + 1,
    )  # fmt: skip
    Consumer._restore_prefetch_count_after_connection_restart(consumer, None)  # at an acknowledgement
    assert qos.value == 304


def test_the_worker_batches_with_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """``PAYRECON_BATCH_SIZE``, ``PAYRECON_BATCH_WAIT`` and ``PAYRECON_BATCH_PREFETCH`` reach the consumer's Batcher."""
    from worker import batching, runtime
    from worker.settings import Settings

    env = {"DATABASE_URL": "sqlite://", "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0"}
    settings = Settings.from_env(
        env | {"PAYRECON_BATCH_SIZE": "7", "PAYRECON_BATCH_WAIT": "0.3", "PAYRECON_BATCH_PREFETCH": "50"}
    )
    rt: Any = type("Runtime", (), {})()
    rt.settings = settings
    monkeypatch.setattr(runtime, "get", lambda: rt)
    monkeypatch.setattr(batching, "default_strategy", lambda *a, **k: "alone")
    task: Any = type("Task", (), {"name": "payrecon.ingest_webhook"})()
    made = batching.strategy(task, None, _consumer([]))  # type: ignore[arg-type]
    assert isinstance(made, batching.Batcher)
    assert (made.size, made.wait, made.prefetch, made.handle_alone) == (7, 0.3, 50, "alone")


def test_a_bug_reading_one_delivery_dead_letters_it_and_the_batch_goes_on(
    rt: Runtime, sandbox: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, bad = new_reference(), new_reference()
    envelopes = [paid(rt, sandbox, good), paid(rt, sandbox, bad)]
    client = rt.client("cinetpay")
    assert client is not None
    parse = client.parse_delivery

    def buggy(envelope: Any) -> Any:
        if bad in envelope.body:
            raise RuntimeError("a bug reading this delivery")
        return parse(envelope)

    monkeypatch.setattr(client, "parse_delivery", buggy)
    results = pipeline.ingest_batch(rt, envelopes)
    assert outcomes(results) == [Disposition.ACCEPTED, Disposition.FAILED]
    assert status(rt, good) is PaymentStatus.SUCCEEDED
    with rt.sessions() as session:
        letters = session.scalars(select(DeadLetter)).all()
        assert [(d.reason, bad in d.payload) for d in letters] == [("internal_error", True)]
        assert "RuntimeError: a bug reading this delivery" in letters[0].detail


def test_a_batch_takes_its_refunds_fee_locks_before_it_applies_any_answer(
    rt: Runtime, sandbox: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refund reverses its journals under the provider's fee lock (``ledger.hold_fees``). A batch takes the
    locks of all its refunds, providers in order, right after its payments' row locks: taken at each refund
    instead, two batches could each hold one provider's lock and wait for the other's (or one hold a
    subscription granted earlier in the batch while it waits for the lock): a deadlock."""
    ref = new_reference()
    refunded = {"code": "660", "message": "REFUNDED", "api_response_id": "1.0", "data": {
        "amount": "5000", "currency": "XOF", "status": "ACCEPTED", "payment_method": "OM", "description": "",
        "metadata": None, "operator_id": "MP241120.1200.A00001", "payment_date": "2026-11-20 12:00:00",
        "fund_availability_date": None,
    }}  # fmt: skip
    paid(rt, sandbox, ref, faults=[{"status": 200, "content_type": "application/json", "body": json.dumps(refunded)}])
    sandbox.set_cinetpay_status(ref, "REFUSED")  # what the notification claims: not what we hold, so we ask
    envelope = sandbox.cinetpay_notification(ref)
    with rt.sessions() as session, session.begin():  # paid before the provider refunded it
        row = session.scalars(select(Payment).where(Payment.reference == ref)).one()
        row.status, row.confirmed_amount, row.confirmed_currency = PaymentStatus.SUCCEEDED, 5000, "XOF"
        row.settled = True
    held_when_applied: list[int] = []
    real = payments.apply_answer

    def spy(session: Any, payment: Any, answer: Any, *args: Any, **kwargs: Any) -> Any:
        if answer.outcome is Outcome.REFUNDED:
            held_when_applied.append(int(session.scalar(text(
                "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory' AND granted"
            ))))  # fmt: skip
        return real(session, payment, answer, *args, **kwargs)

    monkeypatch.setattr(payments, "apply_answer", spy)
    results = pipeline.ingest_batch(rt, [envelope])
    assert held_when_applied == [1], results  # cinetpay's fee lock, taken before the answer was applied
    assert status(rt, ref) is PaymentStatus.REFUNDED
