"""Subscription periods in the business time zone; grants, stacking and expiry on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select

from reconciliation import payments
from reconciliation.db import transaction
from reconciliation.models import Subscription
from reconciliation.subscriptions import add_days, expire_due, grant_for_payment
from schemas.messages import PaymentRegistration
from tests.helpers import new_reference, registration
from worker.runtime import Runtime


def test_add_days_keeps_local_wall_clock_across_dst() -> None:
    paris = ZoneInfo("Europe/Paris")
    start = datetime(2026, 3, 20, 9, 0, tzinfo=UTC)  # 10:00 in Paris (CET)
    end = add_days(start, 30, paris)
    assert end.astimezone(paris).hour == 10  # still 10:00 local after the switch to CEST
    assert end == datetime(2026, 4, 19, 8, 0, tzinfo=UTC)


def test_add_days_in_abidjan_is_plain_days() -> None:
    start = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert add_days(start, 90, ZoneInfo("Africa/Abidjan")) == start + timedelta(days=90)


def _registered(rt: Runtime, **over: object) -> int:
    with transaction(rt.sessions) as session:
        reg = PaymentRegistration.model_validate(registration(new_reference(), **over))
        _, payment = payments.register(session, reg, "{}", rt.context())
        return payment.id


def _grant(rt: Runtime, payment_id: int, now: datetime) -> tuple[datetime, datetime]:
    from reconciliation.models import Payment

    with transaction(rt.sessions) as session:
        payment = session.get(Payment, payment_id)
        assert payment is not None
        result = grant_for_payment(session, payment, now, ZoneInfo("Africa/Abidjan"))
        return result.grant.starts_at, result.grant.ends_at


def test_three_months_grant_ninety_days_and_renewals_stack(rt: Runtime) -> None:
    now = datetime(2026, 11, 21, 10, tzinfo=UTC)
    first = _registered(rt, periods=3, amount=15000, account="tech-7")
    second = _registered(rt, periods=1, amount=5000, account="tech-7")
    start1, end1 = _grant(rt, first, now)
    assert (start1, end1) == (now, now + timedelta(days=90))
    start2, end2 = _grant(rt, second, now + timedelta(days=1))
    assert start2 == end1  # stacked after the current end, not from today
    assert end2 == end1 + timedelta(days=30)


def test_grant_after_expiry_starts_now(rt: Runtime) -> None:
    now = datetime(2026, 11, 21, 10, tzinfo=UTC)
    _grant(rt, _registered(rt, account="tech-8"), now)
    later = now + timedelta(days=45)
    with transaction(rt.sessions) as session:
        assert len(expire_due(session, later)) == 1
    start, end = _grant(rt, _registered(rt, account="tech-8"), later)
    assert (start, end) == (later, later + timedelta(days=30))


def test_expiry_switches_off_exactly_the_ended_ones(rt: Runtime) -> None:
    now = datetime(2026, 11, 21, 10, tzinfo=UTC)
    _grant(rt, _registered(rt, account="a"), now)
    _grant(rt, _registered(rt, account="b", periods=2, amount=10000), now)
    with transaction(rt.sessions) as session:
        assert expire_due(session, now + timedelta(days=30) - timedelta(seconds=1)) == []
        expired = expire_due(session, now + timedelta(days=30))
    with rt.sessions() as session:
        active = dict(session.execute(select(Subscription.account, Subscription.active)).all())
    assert len(expired) == 1
    assert active == {"a": False, "b": True}
