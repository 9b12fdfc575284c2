"""The outbox: every change a merchant app cares about, written in the transaction of the change.

An event is stored only if the change commits, and never lost once it has: delivery
(``worker.events``) reads the outbox afterwards, retries on a schedule, and never blocks
settlement. Event ids are stable (``evt_<hex>``), so receivers can deduplicate.

Delivery's state lives here too, in SQL (``worker.events`` signs and sends): a delivery per (event, app),
fanned out once; due deliveries leased with SKIP LOCKED so two workers never send one at once; each
attempt's result recorded (delivered, retried on the schedule with jitter, or given up and dead-lettered).

Types: ``payment.succeeded``, ``payment.failed``, ``payment.expired``, ``payment.refunded``,
``payment.flagged``, ``subscription.granted``, ``subscription.expired``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Table, and_, or_, select, true, update
from sqlalchemy.orm import Session

from reconciliation import bulk, deadletters
from reconciliation.db import lease_rows
from reconciliation.dialect import insert as upsert
from reconciliation.models import OutboxDelivery, OutboxEvent, Payment, Plan
from reconciliation.retries import Schedule

#: Events are fanned out to the apps configured at the time, over this window.
FAN_OUT_WINDOW = timedelta(days=1)
#: How long a worker holds the deliveries it took: longer than their sending takes.
LEASE = timedelta(seconds=120)
DELIVER_TASK = "payrecon.deliver_events"  # the dead letters' task of a delivery given up


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # to send (now or at next_attempt_at)
    DELIVERED = "delivered"
    FAILED = "failed"  # given up after the schedule: dead-lettered; ``payrecon events redeliver`` sends it again


def emit(session: Session, type_: str, *, product: str | None, data: dict[str, Any], now: datetime) -> OutboxEvent:
    event = OutboxEvent(**event_row(type_, product=product, data=data, now=now))
    session.add(event)
    return event


def event_row(type_: str, *, product: str | None, data: dict[str, Any], now: datetime) -> dict[str, Any]:
    """An event's row, for ``emit`` or for a caller inserting many at once (``emit_rows``)."""
    return {"id": f"evt_{secrets.token_hex(12)}", "type": type_, "product": product, "payload": data, "created_at": now}


def emit_rows(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert ``event_row`` rows with one statement."""
    if rows:
        bulk.insert_rows(session, cast(Table, OutboxEvent.__table__), rows)


def product_of(session: Session, payment: Payment) -> str | None:
    plan = session.get(Plan, payment.plan_code) if payment.plan_code else None
    return plan.product if plan is not None else None


def payment_data(payment: Payment) -> dict[str, Any]:
    return {
        "reference": payment.reference,
        "provider": payment.provider,
        "status": payment.status.value,
        "account": payment.account,
        "plan": payment.plan_code,
        "periods": payment.periods,
        "amount": payment.amount,
        "currency": payment.currency,
        "confirmed_amount": payment.confirmed_amount,
        "confirmed_currency": payment.confirmed_currency,
        "paid_at": payment.paid_at.isoformat() if payment.paid_at else None,
        "orphan": payment.is_orphan,
    }


# --------------------------------------------------------------------------- delivery's state


def fan_out(session: Session, apps: Sequence[tuple[str, tuple[str, ...]]], now: datetime) -> int:
    """A pending delivery per (recent event, interested app), created once; ``apps``: (name, its products,
    empty for all)."""
    created = 0
    for name, products in apps:
        events = select(OutboxEvent.id, OutboxEvent.created_at).where(
            OutboxEvent.created_at >= now - FAN_OUT_WINDOW,
            or_(OutboxEvent.product.is_(None), OutboxEvent.product.in_(products)) if products else true(),
            ~select(OutboxDelivery.id)
            .where(and_(OutboxDelivery.event_id == OutboxEvent.id, OutboxDelivery.app == name))
            .exists(),
        )
        rows = [
            {"event_id": eid, "app": name, "status": DeliveryStatus.PENDING, "attempts": 0, "next_attempt_at": at}
            for eid, at in session.execute(events).all()
        ]
        if rows:
            session.execute(
                upsert(session, OutboxDelivery).values(rows).on_conflict_do_nothing(index_elements=["event_id", "app"])
            )
            created += len(rows)
    return created


def lease_due(session: Session, now: datetime, *, limit: int) -> list[int]:
    """Due deliveries, oldest first, leased until ``now + LEASE`` (SKIP LOCKED: another worker takes others)."""
    return lease_rows(
        session, OutboxDelivery, OutboxDelivery.next_attempt_at, until=now + LEASE, limit=limit,
        where=[OutboxDelivery.status == DeliveryStatus.PENDING, OutboxDelivery.next_attempt_at <= now],
    )  # fmt: skip


def to_send(session: Session, delivery_id: int) -> tuple[str, OutboxEvent]:
    """The app and the event of a delivery."""
    delivery = session.get(OutboxDelivery, delivery_id)
    assert delivery is not None  # noqa: S101 - deliveries are never deleted
    event = session.get(OutboxEvent, delivery.event_id)
    assert event is not None  # noqa: S101
    return delivery.app, event


def record_attempt(
    session: Session, delivery_id: int, error: str | None, *, schedule: Schedule, raw: str, now: datetime
) -> str:
    """The result of one attempt: ``delivered``; ``retry`` after the schedule's next delay (jittered,
    ``reconciliation.retries.EVENT_DELIVERY``); or ``failed`` once the schedule is spent (the body
    dead-lettered with why)."""
    row = session.get(OutboxDelivery, delivery_id)
    assert row is not None  # noqa: S101
    row.attempts += 1
    if error is None:
        row.status, row.delivered_at, row.last_error = DeliveryStatus.DELIVERED, now, None
        return "delivered"
    row.last_error = error[:2000]
    if schedule.spent(row.attempts - 1):
        row.status = DeliveryStatus.FAILED
        deadletters.record(
            session, task=DELIVER_TASK, reason="event_undeliverable",
            detail=f"{row.app}: gave up after {row.attempts} attempts: {error}"[:2000], payload=raw, now=now,
        )  # fmt: skip
        return "failed"
    row.next_attempt_at = now + timedelta(seconds=schedule.delay(row.attempts - 1))
    return "retry"


def redeliver(session: Session, *, event_ids: list[str] | None = None, failed: bool = False, now: datetime) -> int:
    """Send events again now (an operator's decision): given-up ones, or by id."""
    query = update(OutboxDelivery).values(status=DeliveryStatus.PENDING, next_attempt_at=now, attempts=0)
    if event_ids:
        query = query.where(OutboxDelivery.event_id.in_(event_ids))
    elif failed:
        query = query.where(OutboxDelivery.status == DeliveryStatus.FAILED)
    else:
        return 0
    return int(getattr(session.execute(query), "rowcount", 0) or 0)


def listing(session: Session, *, status: str | None, limit: int) -> list[dict[str, Any]]:
    """Events, newest first, with each app's delivery (``status``: only deliveries in it)."""
    query = (
        select(OutboxEvent, OutboxDelivery)
        .join(OutboxDelivery, OutboxDelivery.event_id == OutboxEvent.id, isouter=True)
        .order_by(OutboxEvent.created_at.desc())
        .limit(limit)
    )
    if status:
        query = query.where(OutboxDelivery.status == status)
    return [
        {
            "id": e.id, "type": e.type, "product": e.product, "created_at": e.created_at.isoformat(),
            "app": d.app if d else None, "status": d.status if d else "not fanned out",
            "attempts": d.attempts if d else 0, "last_error": d.last_error if d else None,
            "next_attempt_at": d.next_attempt_at.isoformat() if d and d.status == DeliveryStatus.PENDING else None,
        }
        for e, d in session.execute(query).all()
    ]  # fmt: skip
