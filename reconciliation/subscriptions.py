"""Subscriptions: one grant row per paid payment, stacked after the current end.

Periods are counted in days of the business time zone (``PAYRECON_TIMEZONE``):
a 30-day grant starting 10:00 local time ends 10:00 local time 30 days later,
whatever daylight-saving changes lie between.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import Table, select, text, tuple_, update
from sqlalchemy.orm import Session

from reconciliation import bulk, facts, outbox
from reconciliation.db import is_postgres
from reconciliation.dialect import insert
from reconciliation.models import Payment, Plan, Subscription, SubscriptionGrant, SubscriptionReminder


class UnknownPlan(ValueError):
    """The registration names a plan that is not in the catalogue."""


def add_days(start: datetime, days: int, tz: ZoneInfo) -> datetime:
    """``start`` plus ``days`` calendar days of wall-clock time in ``tz``; returned in UTC."""
    local = start.astimezone(tz)
    naive_end = local.replace(tzinfo=None) + timedelta(days=days)
    return naive_end.replace(tzinfo=tz).astimezone(ZoneInfo("UTC"))


def get_plan(session: Session, code: str) -> Plan:
    plan = session.get(Plan, code)
    if plan is None or not plan.active:
        raise UnknownPlan(f"plan {code!r} is not in the catalogue (or not active)")
    return plan


def plans(session: Session, codes: Collection[str]) -> dict[str, Plan]:
    """The plans ``codes`` (one query for a batch), by code. Held by the caller, they stay in the session's
    identity map, so ``get_plan`` of one of them asks the database nothing."""
    if not codes:
        return {}
    return {plan.code: plan for plan in session.scalars(select(Plan).where(Plan.code.in_(codes)))}


def _locked_subscription(session: Session, product: str, account: str, plan_code: str, now: datetime) -> Subscription:
    # Create-if-missing without a check-then-act race, then lock the row.
    session.execute(
        insert(session, Subscription)
        .values(product=product, account=account, plan_code=plan_code, starts_at=now, ends_at=now, active=False)
        .on_conflict_do_nothing(index_elements=["product", "account"])
    )
    sub = session.scalars(
        select(Subscription)
        .where(Subscription.product == product, Subscription.account == account)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    return sub


@dataclass(frozen=True, slots=True)
class GrantResult:
    grant: SubscriptionGrant
    subscription: Subscription


def grant_for_payment(session: Session, payment: Payment, now: datetime, tz: ZoneInfo) -> GrantResult:
    """Grant ``periods x plan period`` for a confirmed payment. The caller holds the payment lock;
    the unique grant per payment makes a second grant impossible anyway."""
    if payment.plan_code is None or payment.account is None:
        raise ValueError(f"payment {payment.reference} has no plan or account to grant")
    plan = get_plan(session, payment.plan_code)
    sub = _locked_subscription(session, plan.product, payment.account, plan.code, now)
    grant = grant_locked(session, sub, plan, payment, now=now, tz=tz)
    session.flush()
    return GrantResult(grant, sub)


@dataclass(slots=True)
class Held:
    """A subscription row locked by ``lock_many``: granted to in memory (``grant_held``), written
    back by ``write_held``, without the ORM's unit of work (the set-wise settlement of a batch)."""

    id: int
    product: str
    account: str
    plan_code: str
    starts_at: datetime
    ends_at: datetime
    active: bool
    expired_at: datetime | None
    updated_at: datetime | None


def lock_many(session: Session, keys: list[tuple[str, str, str]], now: datetime) -> dict[tuple[str, str], Held]:
    """The subscriptions of many (product, account, plan) keys, created if missing and locked, with
    two statements (in key order, then id order: two callers never wait on each other in a cycle)."""
    if not keys:
        return {}
    keys = sorted(set(keys))
    table = cast(Table, Subscription.__table__)
    new = [
        {"product": product, "account": account, "plan_code": plan, "starts_at": now, "ends_at": now, "active": False}
        for product, account, plan in keys
    ]
    if is_postgres(session):
        # One statement each over arrays, the rows found by the (product, account) key: a row-wise IN list
        # of a batch's hundred pairs became a hundred-armed OR, planned in ~7 ms among 100,000 subscriptions,
        # and read by a sequential scan comparing every row with each pair while the table looked small.
        bulk.insert_rows(session, table, new, tail="ON CONFLICT (product, account) DO NOTHING")
        pairs = sorted({(product, account) for product, account, _ in keys})
        rows = session.execute(_LOCK_MANY, {"products": [p for p, _ in pairs], "accounts": [a for _, a in pairs]}).all()
    else:
        session.execute(insert(session, table).on_conflict_do_nothing(index_elements=["product", "account"]), new)
        rows = session.execute(
            select(*(table.c[name] for name in Held.__slots__))
            .where(tuple_(table.c.product, table.c.account).in_({(p, a) for p, a, _ in keys}))
            .order_by(table.c.id)
            .with_for_update()
        ).all()
    return {(row.product, row.account): Held(*row) for row in rows}


#: The subscriptions of (product, account) pairs given as two arrays, locked in id order: each pair's id
#: found through the (product, account) key (a subquery per pair: an index probe each, but on a table of a
#: few pages, where a scan costs less), then the rows through the primary key. The names are ``Held``'s
#: fields; every value is a bound parameter.
_LOCK_MANY = text(
    f"SELECT {', '.join('s.' + name for name in Held.__slots__)} FROM subscriptions s"  # noqa: S608
    " WHERE s.id = ANY (ARRAY(SELECT (SELECT x.id FROM subscriptions x"
    " WHERE x.product = k.product AND x.account = k.account)"
    " FROM unnest(CAST(:products AS text[]), CAST(:accounts AS text[])) AS k (product, account)))"
    " ORDER BY s.id FOR UPDATE"
)


def _granted(
    sub: Subscription | Held, plan: Plan, payment: Payment, *, now: datetime, tz: ZoneInfo
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The grant of ``payment`` on ``sub`` (its row values, and the ``subscription.granted`` event's
    data): access from the end of the current period (or now), ``periods x plan period`` long.
    ``sub`` is extended accordingly."""
    days = payment.periods * plan.period_days
    start = max(now, sub.ends_at) if sub.active else now
    end = add_days(start, days, tz)
    if not sub.active:
        sub.starts_at = start
    sub.ends_at = end
    sub.plan_code = plan.code
    sub.active = True
    sub.expired_at = None
    sub.updated_at = now
    grant = {"subscription_id": sub.id, "payment_id": payment.id, "plan_code": plan.code,
             "periods": payment.periods, "days": days, "starts_at": start, "ends_at": end}  # fmt: skip
    data = {
        "account": sub.account, "product": plan.product, "plan": plan.code, "days": days,
        "periods": payment.periods, "starts_at": start.isoformat(), "ends_at": end.isoformat(),
        "payment_reference": payment.reference, "provider": payment.provider,
    }  # fmt: skip
    return grant, data


def grant_locked(
    session: Session, sub: Subscription, plan: Plan, payment: Payment, *, now: datetime, tz: ZoneInfo
) -> SubscriptionGrant:
    """The grant of a confirmed payment on its locked subscription; noted and announced. Not flushed."""
    values, data = _granted(sub, plan, payment, now=now, tz=tz)
    grant = SubscriptionGrant(**values)
    session.add(grant)
    facts.note(session, "grant", product=plan.product, days=values["days"])
    outbox.emit(session, "subscription.granted", product=plan.product, data=data, now=now)
    return grant


def grant_held(
    session: Session, sub: Held, plan: Plan, payment: Payment, *, now: datetime, tz: ZoneInfo
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``grant_locked`` on a ``Held`` row: the grant's row and its event's row, for the caller to
    insert with the others of its batch (``write_held`` writes the subscriptions)."""
    values, data = _granted(sub, plan, payment, now=now, tz=tz)
    facts.note(session, "grant", product=plan.product, days=values["days"])
    return values, outbox.event_row("subscription.granted", product=plan.product, data=data, now=now)


def write_held(session: Session, held: list[Held], grants: list[dict[str, Any]]) -> None:
    """Write ``held`` subscriptions back (one multi-row statement) and insert their ``grants``."""
    table = cast(Table, Subscription.__table__)
    changed = [{"id": sub.id, **{name: getattr(sub, name) for name in _WRITTEN}} for sub in held]
    bulk.update_rows(session, table, changed)
    bulk.insert_rows(session, cast(Table, SubscriptionGrant.__table__), grants)
    # ORM copies of these rows the session may hold (a one-by-one settlement of the same batch) are stale.
    ids = {sub.id for sub in held}
    for obj in list(session.identity_map.values()):
        if isinstance(obj, Subscription) and obj.id in ids:
            session.expire(obj)


#: What a grant changes on a subscription.
_WRITTEN = ("starts_at", "ends_at", "plan_code", "active", "expired_at", "updated_at")


def expire_due(session: Session, now: datetime) -> list[int]:
    """Switch off every subscription whose end (plus its plan's grace) has passed. Returns their ids."""
    expired: list[int] = []
    for grace in sorted(set(session.scalars(select(Plan.grace_days)))):
        plans = select(Plan.code).where(Plan.grace_days == grace)
        result = session.execute(
            update(Subscription)
            .where(
                Subscription.active.is_(True),
                Subscription.ends_at <= now - timedelta(days=grace),
                Subscription.plan_code.in_(plans),
            )
            .values(active=False, expired_at=now, updated_at=now)
            .returning(Subscription.id, Subscription.product, Subscription.account, Subscription.plan_code,
                       Subscription.ends_at)
        ).all()  # fmt: skip
        for sub_id, product, account, plan_code, ends_at in result:
            facts.note(session, "expiry", product=product)
            outbox.emit(
                session,
                "subscription.expired",
                product=product,
                data={"account": account, "product": product, "plan": plan_code, "ended_at": ends_at.isoformat(),
                      "grace_days": grace},
                now=now,
            )  # fmt: skip
            expired.append(sub_id)
    return expired


def _locked(session: Session, product: str, account: str) -> Subscription | None:
    return session.scalars(
        select(Subscription)
        .where(Subscription.product == product, Subscription.account == account)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()


def _event(session: Session, sub: Subscription, grant: SubscriptionGrant, now: datetime, **extra: object) -> None:
    kind = "subscription.granted" if grant.days > 0 else "subscription.shortened"
    outbox.emit(
        session,
        kind,
        product=sub.product,
        data={
            "account": sub.account, "product": sub.product, "plan": sub.plan_code, "days": grant.days,
            "ends_at": sub.ends_at.isoformat(), "active": sub.active, "source": grant.kind, "reason": grant.reason,
            "by": grant.granted_by, **extra,
        },
        now=now,
    )  # fmt: skip


def grant_manual(
    session: Session,
    account: str,
    plan_code: str,
    periods: int,
    *,
    reason: str,
    by: str,
    now: datetime,
    tz: ZoneInfo,
    kind: str = "manual",
) -> SubscriptionGrant:
    """Periods of access without a payment (an operator's decision, recorded with who and why)."""
    plan = get_plan(session, plan_code)
    sub = _locked_subscription(session, plan.product, account, plan.code, now)
    days = periods * plan.period_days
    start = max(now, sub.ends_at) if sub.active else now
    end = add_days(start, days, tz)
    grant = SubscriptionGrant(
        subscription_id=sub.id, payment_id=None, kind=kind, reason=reason, granted_by=by, plan_code=plan.code,
        periods=periods, days=days, starts_at=start, ends_at=end,
    )  # fmt: skip
    session.add(grant)
    if not sub.active:
        sub.starts_at = start
    sub.ends_at, sub.plan_code, sub.active, sub.expired_at, sub.updated_at = end, plan.code, True, None, now
    session.flush()
    _event(session, sub, grant, now)
    return grant


def shorten(
    session: Session,
    product: str,
    account: str,
    days: int,
    *,
    kind: str,
    reason: str,
    by: str | None,
    now: datetime,
    tz: ZoneInfo,
    payment_id: int | None = None,
) -> SubscriptionGrant | None:
    """Take ``days`` of access back (a refund, a revocation), never below now. None: no subscription."""
    sub = _locked(session, product, account)
    if sub is None:
        return None
    new_end = max(now, add_days(sub.ends_at, -days, tz))
    removed = round((sub.ends_at - new_end).total_seconds() / 86400)
    grant = SubscriptionGrant(
        subscription_id=sub.id, payment_id=payment_id, kind=kind, reason=reason, granted_by=by,
        plan_code=sub.plan_code, periods=0, days=-max(removed, 1), starts_at=new_end, ends_at=sub.ends_at,
    )  # fmt: skip
    session.add(grant)
    sub.ends_at, sub.updated_at = new_end, now
    if new_end <= now and sub.active:
        sub.active, sub.expired_at = False, now
    session.flush()
    _event(session, sub, grant, now, removed_days=removed)
    return grant


def send_reminders(session: Session, now: datetime, days_before: tuple[int, ...]) -> int:
    """``subscription.expiring`` N days before the end, once per (subscription, end, N); when several
    are due at once only the nearest is sent (and the others counted as sent)."""
    if not days_before:
        return 0
    horizon = now + timedelta(days=max(days_before))
    subs = session.scalars(
        select(Subscription).where(
            Subscription.active.is_(True), Subscription.ends_at > now, Subscription.ends_at <= horizon
        )
    ).all()
    sent = 0
    for sub in subs:
        due = sorted(n for n in days_before if sub.ends_at - now <= timedelta(days=n))
        if not due:
            continue
        fresh = []
        for n in due:
            inserted = session.execute(
                insert(session, SubscriptionReminder)
                .values(subscription_id=sub.id, ends_at=sub.ends_at, days_before=n, sent_at=now)
                .on_conflict_do_nothing(index_elements=["subscription_id", "ends_at", "days_before"])
                .returning(SubscriptionReminder.id)
            ).first()
            if inserted is not None:
                fresh.append(n)
        if fresh and min(fresh) == due[0]:
            outbox.emit(
                session,
                "subscription.expiring",
                product=sub.product,
                data={"account": sub.account, "product": sub.product, "plan": sub.plan_code,
                      "ends_at": sub.ends_at.isoformat(), "days_before": due[0]},
                now=now,
            )  # fmt: skip
            sent += 1
    return sent
