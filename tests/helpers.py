"""Builders for contract messages used across the tests."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, text

from reconciliation.models import InboxDelivery

if TYPE_CHECKING:
    from worker.runtime import Runtime


@contextmanager
def scratch_database(base: str, prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the server at ``base`` (its URL), dropped afterwards
    together with any connection still open to it."""
    name = f"{prefix}_{secrets.token_hex(3)}"
    admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def new_reference(prefix: str = "TXN") -> str:
    """A fresh merchant reference in the marketplace's own format (TXN- + 12 upper hex)."""
    return f"{prefix}-{secrets.token_hex(6).upper()}"


def registration(
    reference: str,
    *,
    amount: int = 5000,
    currency: str = "XOF",
    account: str = "tech-42",
    plan: str = "depannage-monthly",
    periods: int = 1,
    provider: str = "cinetpay",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "schema": "payrecon.payment/1",
        "provider": provider,
        "reference": reference,
        "amount": amount,
        "currency": currency,
        "account": account,
        "plan": plan,
        "periods": periods,
        "provider_data": {},
        **extra,
    }


def age(rt: Runtime, inbox_id: int, seconds: float) -> None:
    """Let time pass for a delivery's work: its arrival and the start of its work move back."""
    with rt.sessions.begin() as session:
        row = session.get(InboxDelivery, inbox_id)
        assert row is not None and row.opened_at is not None
        row.first_seen_at -= timedelta(seconds=seconds)
        row.opened_at -= timedelta(seconds=seconds)
