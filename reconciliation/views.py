"""Read models for operators and finance staff: plain dicts, JSON-ready."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from reconciliation import ledger
from reconciliation.models import (
    FINAL_STATUSES,
    DeadLetter,
    FeePosting,
    InboxDelivery,
    InboxStatus,
    Journal,
    Payment,
    PaymentStatus,
    Plan,
    ReconCase,
    ReconClass,
    ReconItem,
    ReconRun,
    Subscription,
    SubscriptionGrant,
)
from reconciliation.nightly import cases
from schemas.currency import MINOR_UNIT_EXPONENT, exponent, to_major


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def find_payments(session: Session, reference: str, provider: str | None = None) -> list[Payment]:
    query = select(Payment).where(Payment.reference == reference).order_by(Payment.provider)
    if provider:
        query = query.where(Payment.provider == provider)
    return list(session.scalars(query))


def payment_detail(session: Session, payment: Payment) -> dict[str, Any]:
    journals = session.scalars(select(Journal).where(Journal.payment_id == payment.id).order_by(Journal.id))
    grant = session.scalars(select(SubscriptionGrant).where(SubscriptionGrant.payment_id == payment.id)).first()
    fee = session.get(FeePosting, payment.id)
    deliveries = session.scalars(
        select(InboxDelivery)
        .where(InboxDelivery.provider == payment.provider, InboxDelivery.reference == payment.reference)
        .order_by(InboxDelivery.id)
    )
    return {
        "reference": payment.reference,
        "provider": payment.provider,
        "status": payment.status.value,
        "amount": payment.amount,
        "currency": payment.currency,
        "account": payment.account,
        "plan": payment.plan_code,
        "periods": payment.periods,
        "orphan": payment.is_orphan,
        "settled": payment.settled,
        "confirmed_amount": payment.confirmed_amount,
        "confirmed_currency": payment.confirmed_currency,
        # Paid, but no amount in the provider's answer (Orange's status answer has none): null when not paid.
        "amount_confirmed_by_provider": (
            payment.confirmed_amount is not None
            if payment.status in (PaymentStatus.SUCCEEDED, PaymentStatus.REFUNDED)
            else None
        ),
        "provider_transaction_id": payment.provider_transaction_id,
        "paid_at": iso(payment.paid_at),
        "registered_at": iso(payment.registered_at),
        "finalized_at": iso(payment.finalized_at),
        "next_check_at": iso(payment.next_check_at),
        "flags": [{"kind": f.kind.value, "detail": f.detail, "at": iso(f.created_at)} for f in payment.flags],
        "verifications": [
            {
                "at": iso(v.created_at),
                "trigger": v.trigger,
                "claimed": {
                    "status": v.claimed_status,
                    "amount": v.claimed_amount,
                    "currency": v.claimed_currency,
                },
                "answered": {
                    "outcome": v.outcome,
                    "provider_status": v.provider_status,
                    "provider_code": v.provider_code,
                    "amount": v.answered_amount,
                    "currency": v.answered_currency,
                },
                "error": v.error,
                "decision": v.decision,
            }
            for v in payment.verifications
        ],
        "deliveries": [
            {
                "inbox_id": d.id,
                "status": d.status.value,
                "method": d.method,
                "received_at": iso(d.received_at),
                "repeats": d.repeat_count,
                "detail": d.detail,
            }
            for d in deliveries
        ],
        # The provider's fee, once a reconciliation run posted it: the journal carrying it (that run's fees of many
        # payments, or, posted before migration 0025, a journal of this payment's own). A refund reverses it in a
        # ``fee_refund`` journal of the payment's, below.
        "fee": None
        if fee is None
        else {
            "amount": fee.amount,
            "currency": fee.currency,
            "journal": fee.journal_id,
            "run": fee.run_id,
        },
        "journals": [
            {
                "id": j.id,
                "kind": j.kind,
                "memo": j.memo,
                "at": iso(j.created_at),
                "entries": [
                    {"account": e_account, "side": e.side, "amount": e.amount, "currency": e.currency}
                    for e, e_account in _entries(session, j)
                ],
            }
            for j in journals
        ],
        "reconciliation": [
            {
                "run": run_id,
                "business_date": day.isoformat(),
                "class": cls,
                "healed": healed,
                "provider_status": provider_status,
                "provider_amount": provider_amount,
                "detail": detail,
            }
            for run_id, day, cls, healed, provider_status, provider_amount, detail in _recon_items(session, payment)
        ],
        "grant": (
            {
                "days": grant.days,
                "periods": grant.periods,
                "plan": grant.plan_code,
                "starts_at": iso(grant.starts_at),
                "ends_at": iso(grant.ends_at),
            }
            if grant
            else None
        ),
    }


def _entries(session: Session, journal: Journal) -> list[tuple[Any, str]]:
    from reconciliation.models import Account, Entry

    return [
        (entry, code)
        for entry, code in session.execute(
            select(Entry, Account.code)
            .join(Account, Account.id == Entry.account_id)
            .where(Entry.journal_id == journal.id)
            .order_by(Entry.id)
        )
    ]


def subscriptions_of(session: Session, account: str, product: str | None, now: datetime) -> list[dict[str, Any]]:
    query = select(Subscription).where(Subscription.account == account).order_by(Subscription.product)
    if product:
        query = query.where(Subscription.product == product)
    result = []
    for sub in session.scalars(query):
        grants = session.execute(
            select(SubscriptionGrant, Payment.reference, Payment.provider)
            .join(Payment, Payment.id == SubscriptionGrant.payment_id, isouter=True)
            .where(SubscriptionGrant.subscription_id == sub.id)
            .order_by(SubscriptionGrant.id)
        ).all()
        plan = session.get(Plan, sub.plan_code)
        grace = timedelta(days=plan.grace_days if plan else 0)
        result.append(
            {
                "account": sub.account,
                "product": sub.product,
                "plan": sub.plan_code,
                "active": sub.active and sub.ends_at + grace > now,
                "starts_at": iso(sub.starts_at),
                "ends_at": iso(sub.ends_at),
                "grace_until": iso(sub.ends_at + grace) if grace else None,
                "expired_at": iso(sub.expired_at),
                "grants": [
                    {
                        "kind": g.kind,
                        "payment_reference": reference,
                        "provider": provider,
                        "plan": g.plan_code,
                        "periods": g.periods,
                        "days": g.days,
                        "starts_at": iso(g.starts_at),
                        "ends_at": iso(g.ends_at),
                        "reason": g.reason,
                        "by": g.granted_by,
                    }
                    for g, reference, provider in grants
                ],
            }
        )
    return result


def balances(session: Session, *, before: datetime | None = None) -> list[dict[str, Any]]:
    """Every account's balance (debits - credits, minor units), with the balance in major units as an
    exact decimal string; ``before``: the journals posted before that instant only."""
    return [
        {
            "account": b.account,
            "currency": b.currency,
            "debits": b.debits,
            "credits": b.credits,
            "balance": b.balance,
            "balance_major": f"{to_major(b.balance, b.currency):.{exponent(b.currency)}f}"
            if b.currency in MINOR_UNIT_EXPONENT
            else None,
        }
        for b in ledger.balances(session, before=before)
    ]


def summary(session: Session, now: datetime) -> dict[str, Any]:
    """Payments by status, subscriptions, ledger health: the demo's closing report."""
    by_status = dict(session.execute(select(Payment.status, func.count()).group_by(Payment.status)).all())
    active = session.scalar(
        select(func.count()).select_from(Subscription).where(Subscription.active.is_(True), Subscription.ends_at > now)
    )
    grants = session.scalar(select(func.count()).select_from(SubscriptionGrant))
    return {
        "payments": {status.value: int(by_status.get(status, 0)) for status in PaymentStatus},
        "subscriptions_active": int(active or 0),
        "grants": int(grants or 0),
        "unbalanced_journals": len(ledger.unbalanced_journals(session)),
    }


def _recon_items(session: Session, payment: Payment) -> list[Any]:
    """The payment's reconciliation items, every run: exceptions by their (partial) reference index;
    matched items through the runs of the payment's business day (a day's items lie together)."""
    columns = (
        ReconItem.run_id,
        ReconRun.business_date,
        ReconItem.cls,
        ReconItem.healed,
        ReconItem.provider_status,
        ReconItem.provider_amount,
        ReconItem.detail,
    )
    at = payment.paid_at or payment.registered_at or payment.created_at
    near = select(ReconRun.id).where(
        ReconRun.provider == payment.provider,
        ReconRun.business_date.between(at.date() - timedelta(days=1), at.date() + timedelta(days=1)),
    )
    exceptions = (
        select(*columns)
        .join(ReconRun, ReconRun.id == ReconItem.run_id)
        .where(ReconRun.provider == payment.provider, ReconItem.reference == payment.reference)
        .where(ReconItem.cls != ReconClass.MATCHED.value)
    )
    matched = (
        select(*columns)
        .join(ReconRun, ReconRun.id == ReconItem.run_id)
        .where(ReconItem.run_id.in_(near), ReconItem.reference == payment.reference)
        .where(ReconItem.cls == ReconClass.MATCHED.value)
    )
    union = exceptions.union_all(matched).subquery()
    return list(session.execute(select(union).order_by(union.c.run_id)).all())


@dataclass(frozen=True, slots=True)
class HealthCounts:
    """What the health gauges show, counted by PostgreSQL at scrape time (true after a restart, and for work
    done by hand): each a list of rows, grouped as its name says."""

    unfinished_payments: list[tuple[str, int, datetime | None]]  # provider, count, oldest created_at
    dead_letters: list[tuple[str, int]]  # reason, count not replayed
    waiting_deliveries: list[tuple[str, int, datetime | None]]  # provider, received rows, earliest due
    last_successful_runs: list[tuple[str, datetime | None]]  # provider, when its last succeeded run finished
    open_cases: list[tuple[str, date, str, date, int]]  # provider, business day, priority, SLA date, count


def health_counts(session: Session) -> HealthCounts:
    def rows(query: Any) -> list[Any]:
        return [tuple(row) for row in session.execute(query)]

    return HealthCounts(
        unfinished_payments=rows(
            select(Payment.provider, func.count(), func.min(Payment.created_at))
            .where(Payment.status.not_in(list(FINAL_STATUSES)))
            .group_by(Payment.provider)
        ),
        dead_letters=rows(
            select(DeadLetter.reason, func.count()).where(DeadLetter.replayed_at.is_(None)).group_by(DeadLetter.reason)
        ),
        waiting_deliveries=rows(
            select(InboxDelivery.provider, func.count(), func.min(InboxDelivery.next_attempt_at))
            .where(InboxDelivery.status == InboxStatus.RECEIVED)
            .group_by(InboxDelivery.provider)
        ),
        last_successful_runs=rows(
            select(ReconRun.provider, func.max(ReconRun.finished_at))
            .where(ReconRun.status == "succeeded")
            .group_by(ReconRun.provider)
        ),
        open_cases=rows(
            select(ReconCase.provider, ReconCase.business_date, ReconCase.priority, ReconCase.sla_due, func.count())
            .where(ReconCase.status.in_(cases.OPEN_STATUSES))
            .group_by(ReconCase.provider, ReconCase.business_date, ReconCase.priority, ReconCase.sla_due)
        ),
    )
