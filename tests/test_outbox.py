"""The outbox (``reconciliation.outbox``): events written in the transaction of their change, and each
delivery's state (fanned out once, leased, each attempt's result, redelivery). Real PostgreSQL, the module
called directly; signing and sending are ``tests/test_events.py``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from providers.sandbox.client import SandboxClient
from reconciliation import outbox, retries
from reconciliation.db import transaction
from reconciliation.models import DeadLetter, OutboxDelivery, OutboxEvent
from reconciliation.outbox import DeliveryStatus
from reconciliation.subscriptions import expire_due
from tests.test_events import paid, types
from worker.runtime import Runtime

T0 = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
SCHEDULE = retries.Schedule((60, 120), repeat_last=False)


def emit(rt: Runtime, type_: str = "payment.succeeded", *, product: str | None = "depannage", at: datetime = T0) -> str:
    with transaction(rt.sessions) as session:
        return outbox.emit(session, type_, product=product, data={"reference": "R"}, now=at).id


def fan_out(rt: Runtime, apps: list[tuple[str, tuple[str, ...]]], now: datetime = T0) -> int:
    with transaction(rt.sessions) as session:
        return outbox.fan_out(session, apps, now)


def deliveries(rt: Runtime) -> list[tuple[str, str, str]]:
    with rt.sessions() as session:
        rows = session.execute(select(OutboxDelivery.event_id, OutboxDelivery.app, OutboxDelivery.status)).all()
    return sorted((e, a, str(s)) for e, a, s in rows)


def delivery(rt: Runtime, event_id: str) -> OutboxDelivery:
    with rt.sessions() as session:
        return session.scalars(select(OutboxDelivery).where(OutboxDelivery.event_id == event_id)).one()


def attempt(rt: Runtime, delivery_id: int, error: str | None, now: datetime) -> str:
    with transaction(rt.sessions) as session:
        return outbox.record_attempt(session, delivery_id, error, schedule=SCHEDULE, raw='{"id": "x"}', now=now)


def test_each_app_gets_one_delivery_per_event_of_its_products_within_the_window(rt: Runtime) -> None:
    mine, general = emit(rt), emit(rt, "payment.failed", product=None)
    emit(rt, product="coko")  # another product
    emit(rt, at=T0 - outbox.FAN_OUT_WINDOW - timedelta(seconds=1))  # older than the window
    apps = [("depannage", ("depannage",)), ("everything", ())]
    assert fan_out(rt, apps) == 2 + 3  # depannage: its product and the general one; everything: all but the old
    assert fan_out(rt, apps) == 0  # once
    mine_only = [(e, a) for e, a, _ in deliveries(rt) if a == "depannage"]
    assert sorted(mine_only) == sorted([(mine, "depannage"), (general, "depannage")])
    assert {s for _, _, s in deliveries(rt)} == {"pending"}


def test_due_deliveries_are_leased_so_that_no_other_worker_sends_them_meanwhile(rt: Runtime) -> None:
    first, later = emit(rt), emit(rt, at=T0 + timedelta(minutes=5))
    fan_out(rt, [("depannage", ())], now=T0 + timedelta(minutes=5))
    with transaction(rt.sessions) as session:
        leased = outbox.lease_due(session, T0 + timedelta(minutes=1), limit=10)
    assert leased == [delivery(rt, first).id]  # the later one is not due yet
    assert delivery(rt, first).next_attempt_at == T0 + timedelta(minutes=1) + outbox.LEASE
    with transaction(rt.sessions) as session:
        assert outbox.lease_due(session, T0 + timedelta(minutes=2), limit=10) == []  # leased, and not due
    with transaction(rt.sessions) as session:  # the first's lease ran out (its worker died): due again, oldest first
        leased = outbox.lease_due(session, T0 + timedelta(minutes=5), limit=10)
    assert leased == [delivery(rt, first).id, delivery(rt, later).id]


def test_a_failed_attempt_waits_its_jittered_delay_and_the_last_gives_up_with_a_dead_letter(rt: Runtime) -> None:
    event_id = emit(rt)
    fan_out(rt, [("depannage", ())])
    delivery_id = delivery(rt, event_id).id
    assert attempt(rt, delivery_id, "HTTP 500: oops", T0) == "retry"
    due = delivery(rt, event_id).next_attempt_at
    assert due is not None and T0 + timedelta(seconds=48) <= due <= T0 + timedelta(seconds=72)  # 60 s +-20 %
    assert attempt(rt, delivery_id, "HTTP 500: oops", T0) == "retry"
    assert T0 + timedelta(seconds=96) <= delivery(rt, event_id).next_attempt_at <= T0 + timedelta(seconds=144)  # type: ignore[operator]
    assert attempt(rt, delivery_id, "x" * 3000, T0) == "failed"
    given_up = delivery(rt, event_id)
    assert (given_up.status, given_up.attempts, len(given_up.last_error or "")) == (DeliveryStatus.FAILED, 3, 2000)
    with rt.sessions() as session:
        letter = session.scalars(select(DeadLetter)).one()
    assert (letter.task, letter.reason, letter.payload) == (outbox.DELIVER_TASK, "event_undeliverable", '{"id": "x"}')
    assert letter.detail.startswith("depannage: gave up after 3 attempts: xxx")


def test_a_delivered_attempt_clears_the_error(rt: Runtime) -> None:
    event_id = emit(rt)
    fan_out(rt, [("depannage", ())])
    delivery_id = delivery(rt, event_id).id
    attempt(rt, delivery_id, "timeout", T0)
    assert attempt(rt, delivery_id, None, T0 + timedelta(minutes=2)) == "delivered"
    done = delivery(rt, event_id)
    assert (done.status, done.attempts, done.last_error, done.delivered_at) == (
        DeliveryStatus.DELIVERED,
        2,
        None,
        T0 + timedelta(minutes=2),
    )


def test_redelivery_takes_the_named_or_the_given_up_events_and_nothing_unasked(rt: Runtime) -> None:
    given_up, named, untouched = emit(rt), emit(rt), emit(rt)
    fan_out(rt, [("depannage", ())])
    for event_id in (given_up, named, untouched):
        for _ in range(3):
            attempt(rt, delivery(rt, event_id).id, "down", T0)
    now = T0 + timedelta(days=1)
    with transaction(rt.sessions) as session:
        assert outbox.redeliver(session, now=now) == 0
        assert outbox.redeliver(session, event_ids=[named], now=now) == 1
    with transaction(rt.sessions) as session:
        assert outbox.redeliver(session, failed=True, now=now) == 2  # the two still given up
    again = delivery(rt, named)
    assert (again.status, again.attempts, again.next_attempt_at) == (DeliveryStatus.PENDING, 0, now)


@pytest.mark.parametrize("status", [None, "failed"])
def test_the_listing_is_newest_first_with_each_apps_delivery(rt: Runtime, status: str | None) -> None:
    old, new = emit(rt), emit(rt, at=T0 + timedelta(minutes=1))
    fan_out(rt, [("depannage", ())], now=T0 + timedelta(minutes=1))
    for _ in range(3):
        attempt(rt, delivery(rt, old).id, "down", T0)
    not_fanned = emit(rt, at=T0 + timedelta(minutes=2))
    with rt.sessions() as session:
        listed = outbox.listing(session, status=status, limit=10)
    shown = [(e["id"], e["status"], e["attempts"]) for e in listed]
    if status is None:
        assert shown == [(not_fanned, "not fanned out", 0), (new, "pending", 0), (old, "failed", 3)]
        assert listed[1]["next_attempt_at"] is not None and listed[2]["next_attempt_at"] is None
    else:
        assert shown == [(old, "failed", 3)] and listed[0]["last_error"] == "down"


def test_events_are_written_with_the_change(rt: Runtime, sandbox: SandboxClient) -> None:
    paid(rt, sandbox)
    assert sorted(types(rt)) == ["payment.succeeded", "subscription.granted"]
    with rt.sessions() as session:
        granted = session.scalars(select(OutboxEvent).where(OutboxEvent.type == "subscription.granted")).one()
    assert granted.product == "depannage" and granted.payload["days"] == 30 and granted.payload["ends_at"]


def test_a_rolled_back_change_writes_no_event(rt: Runtime, sandbox: SandboxClient) -> None:
    paid(rt, sandbox)
    later = datetime.now(UTC) + timedelta(days=40)
    with pytest.raises(RuntimeError), transaction(rt.sessions) as session:
        assert len(expire_due(session, later)) == 1
        raise RuntimeError("forced rollback")
    assert "subscription.expired" not in types(rt)
    with transaction(rt.sessions) as session:
        expire_due(session, later)
    assert "subscription.expired" in types(rt)
