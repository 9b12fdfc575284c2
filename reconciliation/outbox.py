"""The outbox: every change a merchant app cares about, written in the transaction of the change.

An event is stored only if the change commits, and never lost once it has: delivery
(``worker.events``) reads the outbox afterwards, retries on a schedule, and never blocks
settlement. Event ids are stable (``evt_<hex>``), so receivers can deduplicate.

Types: ``payment.succeeded``, ``payment.failed``, ``payment.expired``, ``payment.refunded``,
``payment.flagged``, ``subscription.granted``, ``subscription.expired``.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

from reconciliation.models import OutboxEvent, Payment, Plan


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
        session.execute(insert(cast(Table, OutboxEvent.__table__)), rows)


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
