"""Subscriptions: one grant row per paid payment, stacked after the current end.

Periods are counted in days of the business time zone (``PAYRECON_TIMEZONE``):
a 30-day grant starting 10:00 local time ends 10:00 local time 30 days later,
whatever daylight-saving changes lie between.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from reconciliation import facts, outbox
from reconciliation.dialect import insert
from reconciliation.models import Payment, Plan, Subscription, SubscriptionGrant


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
    days = payment.periods * plan.period_days
    start = max(now, sub.ends_at) if sub.active else now
    end = add_days(start, days, tz)
    grant = SubscriptionGrant(
        subscription_id=sub.id,
        payment_id=payment.id,
        plan_code=plan.code,
        periods=payment.periods,
        days=days,
        starts_at=start,
        ends_at=end,
    )
    session.add(grant)
    if not sub.active:
        sub.starts_at = start
    sub.ends_at = end
    sub.plan_code = plan.code
    sub.active = True
    sub.expired_at = None
    sub.updated_at = now
    session.flush()
    facts.note(session, "grant", product=plan.product, days=days)
    outbox.emit(
        session,
        "subscription.granted",
        product=plan.product,
        data={
            "account": sub.account, "product": plan.product, "plan": plan.code, "days": days,
            "periods": payment.periods, "starts_at": start.isoformat(), "ends_at": end.isoformat(),
            "payment_reference": payment.reference, "provider": payment.provider,
        },
        now=now,
    )  # fmt: skip
    return GrantResult(grant, sub)


def expire_due(session: Session, now: datetime) -> list[int]:
    """Switch off every subscription whose end has passed. Returns their ids."""
    result = session.execute(
        update(Subscription)
        .where(Subscription.active.is_(True), Subscription.ends_at <= now)
        .values(active=False, expired_at=now, updated_at=now)
        .returning(Subscription.id, Subscription.product, Subscription.account, Subscription.plan_code,
                   Subscription.ends_at)
    ).all()  # fmt: skip
    for _, product, account, plan_code, ends_at in result:
        facts.note(session, "expiry", product=product)
        outbox.emit(
            session,
            "subscription.expired",
            product=product,
            data={"account": account, "product": product, "plan": plan_code, "ended_at": ends_at.isoformat()},
            now=now,
        )
    return [row[0] for row in result]
