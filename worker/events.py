"""Delivery of outbox events to merchant apps: signed HTTP POSTs or Celery tasks, retried on a
schedule with jitter until delivered or given up (then dead-lettered). At least once: a
receiver deduplicates on the event id, which never changes between attempts.

HTTP deliveries are signed like Wave's and Stripe's webhooks::

    PayRecon-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
    PayRecon-Event-Id: evt_...

and the body is ``{"id", "type", "created_at", "data": {...}}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
from datetime import datetime, timedelta
from typing import Any

import requests
from sqlalchemy import and_, or_, select, true, update

from reconciliation import deadletters
from reconciliation.db import transaction
from reconciliation.dialect import insert
from reconciliation.models import OutboxDelivery, OutboxEvent
from worker.runtime import Runtime
from worker.settings import AppSettings

log = logging.getLogger(__name__)

#: Events are fanned out to the apps configured at the time, over this window.
FAN_OUT_WINDOW = timedelta(days=1)
LEASE = timedelta(seconds=120)
TIMEOUT = (3.05, 10.0)


def body(event: OutboxEvent) -> str:
    return json.dumps(
        {"id": event.id, "type": event.type, "created_at": event.created_at.isoformat(), "data": event.payload},
        ensure_ascii=False,
        sort_keys=True,
    )


def signature(secret: str, timestamp: int, raw: str) -> str:
    """``t=...,v1=...`` for ``raw`` (the exact body sent)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{raw}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def fan_out(rt: Runtime, now: datetime) -> int:
    """A pending delivery per (recent event, interested app), created once."""
    created = 0
    with transaction(rt.sessions) as session:
        for app in rt.settings.apps:
            events = select(OutboxEvent.id, OutboxEvent.created_at).where(
                OutboxEvent.created_at >= now - FAN_OUT_WINDOW,
                or_(OutboxEvent.product.is_(None), OutboxEvent.product.in_(app.products)) if app.products else true(),
                ~select(OutboxDelivery.id)
                .where(and_(OutboxDelivery.event_id == OutboxEvent.id, OutboxDelivery.app == app.name))
                .exists(),
            )
            rows = [
                {"event_id": eid, "app": app.name, "status": "pending", "attempts": 0, "next_attempt_at": at}
                for eid, at in session.execute(events).all()
            ]
            if rows:
                session.execute(
                    insert(session, OutboxDelivery)
                    .values(rows)
                    .on_conflict_do_nothing(index_elements=["event_id", "app"])
                )
                created += len(rows)
    return created


def deliver_due(rt: Runtime, now: datetime, *, limit: int = 200) -> dict[str, int]:
    """Send what is due; returns counts by result (delivered, retry, failed)."""
    with transaction(rt.sessions) as session:
        due = list(
            session.scalars(
                select(OutboxDelivery.id)
                .where(OutboxDelivery.status == "pending", OutboxDelivery.next_attempt_at <= now)
                .order_by(OutboxDelivery.next_attempt_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        if due:  # leased: another worker does not take them meanwhile
            session.execute(
                update(OutboxDelivery).where(OutboxDelivery.id.in_(due)).values(next_attempt_at=now + LEASE)
            )
    apps = {app.name: app for app in rt.settings.apps}
    results = {"delivered": 0, "retry": 0, "failed": 0}
    for delivery_id in due:
        results[_attempt(rt, delivery_id, apps, now)] += 1
    return results


def _attempt(rt: Runtime, delivery_id: int, apps: dict[str, AppSettings], now: datetime) -> str:
    with rt.sessions() as session:
        delivery = session.get(OutboxDelivery, delivery_id)
        assert delivery is not None  # noqa: S101
        event = session.get(OutboxEvent, delivery.event_id)
        assert event is not None  # noqa: S101
        app = apps.get(delivery.app)
        raw = body(event)
    error = "app no longer configured" if app is None else send(rt, app, event, raw)
    with transaction(rt.sessions) as session:
        row = session.get(OutboxDelivery, delivery_id)
        assert row is not None  # noqa: S101
        row.attempts += 1
        if error is None:
            row.status, row.delivered_at, row.last_error = "delivered", now, None
            return "delivered"
        row.last_error = error[:2000]
        schedule = rt.settings.event_retries
        if row.attempts > len(schedule):
            row.status = "failed"
            deadletters.record(
                session, task="payrecon.deliver_events", reason="event_undeliverable",
                detail=f"{row.app}: gave up after {row.attempts} attempts: {error}"[:2000], payload=raw, now=now,
            )  # fmt: skip
            return "failed"
        delay = schedule[row.attempts - 1] * random.uniform(0.8, 1.2)  # noqa: S311 - jitter
        row.next_attempt_at = now + timedelta(seconds=delay)
        return "retry"


def send(rt: Runtime, app: AppSettings, event: OutboxEvent, raw: str) -> str | None:
    """Deliver once; None on success, else why not."""
    if app.via_celery:
        queue, _, task = app.url.removeprefix("celery://").partition("/")
        from worker.app import app as celery_app

        try:
            # On this deployment's broker, explicitly: the app may have been imported with another.
            with celery_app.connection_for_write(rt.settings.broker_url) as conn:
                celery_app.send_task(
                    task or "payrecon_events.receive", kwargs={"event": json.loads(raw)}, queue=queue, connection=conn
                )
        except Exception as exc:
            return f"broker: {type(exc).__name__}: {exc}"
        return None
    assert app.secret is not None  # noqa: S101 - settings refuse an HTTP app without a secret
    headers = {
        "Content-Type": "application/json",
        "PayRecon-Event-Id": event.id,
        "PayRecon-Signature": signature(app.secret, int(time.time()), raw),
        "User-Agent": "payrecon-events/1",
    }
    try:
        response = requests.post(app.url, data=raw.encode(), headers=headers, timeout=TIMEOUT)
    except requests.RequestException as exc:
        return f"{type(exc).__name__}: {exc}"
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}: {response.text[:200]}"


def redeliver(rt: Runtime, *, event_ids: list[str] | None = None, failed: bool = False, now: datetime) -> int:
    """Send events again now (an operator's decision): given-up ones, or by id."""
    with transaction(rt.sessions) as session:
        query = update(OutboxDelivery).values(status="pending", next_attempt_at=now, attempts=0)
        if event_ids:
            query = query.where(OutboxDelivery.event_id.in_(event_ids))
        elif failed:
            query = query.where(OutboxDelivery.status == "failed")
        else:
            return 0
        return int(getattr(session.execute(query), "rowcount", 0) or 0)


def listing(rt: Runtime, *, status: str | None, limit: int) -> list[dict[str, Any]]:
    with rt.sessions() as session:
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
                "next_attempt_at": d.next_attempt_at.isoformat() if d and d.status == "pending" else None,
            }
            for e, d in session.execute(query).all()
        ]  # fmt: skip
