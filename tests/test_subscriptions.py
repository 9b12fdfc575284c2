"""Subscription periods in the business time zone; grants, stacking and expiry on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from reconciliation import payments
from reconciliation.db import transaction
from reconciliation.models import Subscription
from reconciliation.subscriptions import add_days, expire_due, grant_for_payment
from schemas.messages import PaymentRegistration
from tests.helpers import new_reference, plan_nodes, registration
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


def test_a_batch_s_subscriptions_are_locked_through_their_key(rt: Runtime) -> None:
    """``lock_many`` (a batch's settlement) creates the missing subscriptions and locks all of them with one
    statement each whose text does not depend on how many there are, each found through the (product,
    account) key: never a row-wise IN list (a hundred-armed OR, planned in milliseconds, read by a
    sequential scan while the table looked small). Among 20,000 subscriptions; the batch rolled back."""
    from sqlalchemy import event, text

    from reconciliation.subscriptions import lock_many

    now = datetime(2026, 11, 21, 10, tzinfo=UTC)
    with transaction(rt.sessions) as session:
        session.execute(
            text(
                "INSERT INTO subscriptions (product, account, plan_code, starts_at, ends_at, active) "
                "SELECT 'depannage', 'old-' || n, 'depannage-monthly', :now, :now, false "
                "FROM generate_series(1, 20000) AS n"
            ),
            {"now": now},
        )
    with transaction(rt.sessions) as session:
        session.execute(text("ANALYZE subscriptions"))
        statements: list[tuple[str, Any]] = []

        def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
            statements.append((statement, parameters))

        engine = session.get_bind()
        event.listen(engine, "before_cursor_execute", record)
        try:
            few = lock_many(session, [("depannage", f"old-{n}", "depannage-monthly") for n in (7, 3)], now)
            texts = [statement for statement, _ in statements]
            statements.clear()
            keys = [("depannage", f"old-{n}", "depannage-monthly") for n in range(100, 150)]
            keys += [("depannage", f"new-{n}", "depannage-monthly") for n in range(50)]
            many = lock_many(session, keys, now)
        finally:
            event.remove(engine, "before_cursor_execute", record)
        assert [statement for statement, _ in statements] == texts and len(texts) == 2
        assert set(few) == {("depannage", "old-7"), ("depannage", "old-3")}
        assert set(many) == {(product, account) for product, account, _ in keys}
        assert [held.id for held in many.values()] == sorted(held.id for held in many.values())  # id order
        assert all(not held.active for held in many.values())
        with rt.engine.connect() as other, pytest.raises(OperationalError, match="could not obtain lock"):
            other.execute(text("SELECT id FROM subscriptions WHERE account = 'old-120' FOR UPDATE NOWAIT"))
        cursor = session.connection().connection.cursor()
        cursor.execute("EXPLAIN (FORMAT JSON) " + statements[-1][0], statements[-1][1])
        nodes = plan_nodes(cursor.fetchone()[0][0]["Plan"])
        scans = {(n["Node Type"], n.get("Index Name")) for n in nodes if n.get("Relation Name") == "subscriptions"}
        assert scans == {("Index Scan", "uq_subscriptions_product_account"), ("Index Scan", "pk_subscriptions")}, nodes
        session.rollback()
