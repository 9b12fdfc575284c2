"""The day at a glance: one business day across every provider, for finance staff (docs/reports.md).

``day_glance`` reads what the page shows, as plain data (rendered by ``reconciliation.reports.glance_render``): per
provider, the day's payments, amount paid, success rate, matched share, exceptions by class with the amount
at stake, payouts and fees (from the day's latest run); the open exception cases of every age and day,
oldest and largest first; and the series the charts draw: the success rate per provider and the amount we
settled against the amount the provider reported, day by day over the last 30 days, the day's exceptions by
class, and the open cases by age bucket.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Date, cast, func, select
from sqlalchemy.orm import Session

from reconciliation.models import (
    CaseStatus,
    Payment,
    PaymentStatus,
    ReconCase,
    ReconClass,
    ReconItem,
    ReconRun,
    StatementLine,
)
from reconciliation.nightly import cases
from reconciliation.nightly.runs import business_window
from reconciliation.payments import business_time
from reconciliation.reports import run as reports
from reconciliation.reports.common import class_rank
from reconciliation.statements.files import visible
from schemas.messages import PROVIDER_NAMES

#: Days the trend charts look back (the day itself included).
TREND_DAYS = 30
FINAL_STATUSES = (PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.EXPIRED, PaymentStatus.REFUNDED)


def _paid_amount() -> Any:
    return func.coalesce(Payment.confirmed_amount, Payment.amount)


def _paid_currency() -> Any:
    return func.coalesce(Payment.confirmed_currency, Payment.currency)


def latest_runs(session: Session, day: date) -> dict[str, ReconRun]:
    """The latest run of each provider for ``day`` (a succeeded one when there is one)."""
    found: dict[str, ReconRun] = {}
    for run in session.scalars(select(ReconRun).where(ReconRun.business_date == day).order_by(ReconRun.id)):
        held = found.get(run.provider)
        if held is None or run.status == "succeeded" or held.status != "succeeded":
            found[run.provider] = run
    return found


def _of_window(start: datetime, end: datetime) -> tuple[Any, ...]:
    """Payments of every provider in the business window [start, end): the providers named, so that each one's
    window is read through ``ix_payments_business_time`` (provider first), not every payment ever stored."""
    return (Payment.provider.in_(PROVIDER_NAMES), business_time() >= start, business_time() < end)


def _payments_of_day(session: Session, day: date, tz: ZoneInfo) -> dict[str, dict[str, Any]]:
    start, end = business_window(day, tz)
    rows = session.execute(
        select(Payment.provider, Payment.status, _paid_currency(), func.count(), func.sum(_paid_amount()))
        .where(*_of_window(start, end))
        .group_by(Payment.provider, Payment.status, _paid_currency())
    ).all()
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"count": 0, "by_status": {}, "paid": {}})
    for provider, status, currency, n, amount in rows:
        entry = out[provider]
        entry["count"] += int(n)
        entry["by_status"][status.value] = entry["by_status"].get(status.value, 0) + int(n)
        if status is PaymentStatus.SUCCEEDED and currency:
            entry["paid"][currency] = entry["paid"].get(currency, 0) + int(amount or 0)
    for entry in out.values():
        entry["success_rate"] = _rate(entry["by_status"])
    return dict(out)


def _rate(by_status: dict[str, int]) -> float | None:
    """Succeeded (and later refunded) among the final payments; None when none is final yet."""
    final = sum(by_status.get(s.value, 0) for s in FINAL_STATUSES)
    paid = by_status.get(PaymentStatus.SUCCEEDED.value, 0) + by_status.get(PaymentStatus.REFUNDED.value, 0)
    return round(paid / final, 4) if final else None


def run_exceptions(session: Session, run_id: int) -> dict[str, dict[str, Any]]:
    """The run's exceptions by class: how many, the amount at stake per currency (``cases.exposure`` of each
    item, as its case holds it), and their references. Read from the run's own items: a case of the day the
    run no longer finds (matched since, or cleared) is not counted."""
    found: dict[str, dict[str, Any]] = {}
    items = session.execute(
        select(*cases.ITEM_COLUMNS).where(ReconItem.run_id == run_id, ReconItem.cls != ReconClass.MATCHED.value)
    )
    for item in items:
        row = found.setdefault(item.cls, {"count": 0, "at_stake": {}, "references": set()})
        row["count"] += 1
        row["references"].add(item.reference)
        amount, currency = cases.exposure(item)
        if amount is not None and currency:
            row["at_stake"][currency] = row["at_stake"].get(currency, 0) + amount
    return found


def _provider_day(session: Session, run: ReconRun | None, payments: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "payments": payments.get("count", 0),
        "by_status": payments.get("by_status", {}),
        "paid": payments.get("paid", {}),
        "success_rate": payments.get("success_rate"),
        "run": None,
        "matched_share": None,
        "exceptions": [],
        "fees": {},
        "payouts": [],
    }
    if run is None:
        return entry
    summ = reports.summary(session, run.id)
    counts = summ["counts"]
    entry["run"] = {"id": run.id, "status": run.status, "error": run.error}
    entry["matched_share"] = (
        round(counts["by_class"].get("matched", 0) / counts["items"], 4) if counts["items"] else None
    )
    for total in summ["totals"]:
        if total["class"] == "matched" or (total["class"] == "fee_variance" and total["currency"]):
            entry["fees"][total["currency"]] = entry["fees"].get(total["currency"], 0) + total["fee_total_minor"]
    exceptions = run_exceptions(session, run.id)
    entry["exceptions"] = [
        {"class": cls, "count": row["count"], "at_stake": row["at_stake"]}
        for cls, row in sorted(exceptions.items(), key=lambda kv: class_rank(kv[0]))
    ]
    entry["payouts"] = summ["payouts"]
    return entry


def _trend(session: Session, day: date, tz: ZoneInfo) -> dict[str, Any]:
    """Per provider and day over ``TREND_DAYS``: success rate, amount we settled and amount the provider
    reported paid (per currency). Days are business days in ``tz``."""
    first = day - timedelta(days=TREND_DAYS - 1)
    days = [first + timedelta(days=n) for n in range(TREND_DAYS)]
    start, _ = business_window(first, tz)
    _, end = business_window(day, tz)
    rates: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    settled: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for provider, status, currency, local, n, amount in _daily_payments(session, start, end, tz):
        by_status = rates[provider][local]
        by_status[status.value] = by_status.get(status.value, 0) + n
        if status is PaymentStatus.SUCCEEDED and currency:
            settled[currency][local][provider] = settled[currency][local].get(provider, 0) + amount
    reported: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for provider, business_date, currency, amount in session.execute(
        select(
            StatementLine.provider, StatementLine.business_date, StatementLine.currency, func.sum(StatementLine.amount)
        )
        .where(
            StatementLine.business_date >= first,
            StatementLine.business_date <= day,
            StatementLine.status == "succeeded",
            visible(),
        )
        .group_by(StatementLine.provider, StatementLine.business_date, StatementLine.currency)
    ):
        if currency:
            reported[currency][business_date.isoformat()][provider] = int(amount or 0)
    labels = [d.isoformat() for d in days]
    return {
        "days": labels,
        "success_rate": {
            provider: [_rate(per_day.get(d, {})) for d in labels] for provider, per_day in sorted(rates.items())
        },
        "settled": {
            currency: {
                "ours": [sum(settled[currency].get(d, {}).values()) for d in labels],
                "theirs": [sum(reported[currency].get(d, {}).values()) for d in labels],
            }
            for currency in sorted(set(settled) | set(reported))
        },
    }


def _daily_payments(
    session: Session, start: datetime, end: datetime, tz: ZoneInfo
) -> list[tuple[str, PaymentStatus, str | None, str, int, int]]:
    """Final payments between ``start`` and ``end`` per (provider, status, currency, business day in ``tz``):
    count and amount. PostgreSQL groups them itself; SQLite (the demo) in Python."""
    columns = (Payment.provider, Payment.status, _paid_currency())
    final = (*_of_window(start, end), Payment.status.in_(FINAL_STATUSES))
    if session.get_bind().dialect.name == "postgresql":
        local = cast(func.timezone(tz.key, business_time()), Date)
        rows = session.execute(
            select(*columns, local, func.count(), func.sum(_paid_amount())).where(*final).group_by(*columns, local)
        )
        return [(p, st, cur, d.isoformat(), int(n), int(a or 0)) for p, st, cur, d, n, a in rows]
    totals: dict[tuple[str, PaymentStatus, str | None, str], list[int]] = defaultdict(lambda: [0, 0])
    for provider, status, currency, when, amount in session.execute(
        select(*columns, business_time(), _paid_amount()).where(*final)
    ):
        key = (provider, status, currency, _as_utc(when).astimezone(tz).date().isoformat())
        totals[key][0] += 1
        totals[key][1] += int(amount or 0)
    return [(*key, n, a) for key, (n, a) in totals.items()]


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def day_glance(session: Session, day: date, tz: ZoneInfo, *, today: date | None = None) -> dict[str, Any]:
    """Everything the day's page shows (module text), as plain data; amounts in minor units per currency."""
    today = today or datetime.now(tz).date()
    runs = latest_runs(session, day)
    payments = _payments_of_day(session, day, tz)
    providers = sorted(set(runs) | set(payments))
    open_cases = cases.listing(session, today, cases.Filter(statuses=cases.OPEN_STATUSES))
    by_age: dict[str, dict[str, int]] = {name: {} for name, _, _ in cases.AGE_BUCKETS}
    for c in open_cases:
        by_age[c["age_bucket"]][c["priority"]] = by_age[c["age_bucket"]].get(c["priority"], 0) + 1
    open_refs = {
        (provider, reference)
        for provider, reference in session.execute(
            select(ReconCase.provider, ReconCase.reference).where(
                ReconCase.business_date == day, ReconCase.status.in_(cases.OPEN_STATUSES)
            )
        )
    }
    by_class: dict[str, dict[str, Any]] = {}
    for provider, run in runs.items():  # the day's exceptions: each provider's latest run's
        for cls, found in run_exceptions(session, run.id).items():
            row = by_class.setdefault(cls, {"class": cls, "count": 0, "open": 0, "at_stake": {}})
            row["count"] += found["count"]
            row["open"] += sum((provider, ref) in open_refs for ref in found["references"])
            for currency, amount in found["at_stake"].items():
                row["at_stake"][currency] = row["at_stake"].get(currency, 0) + amount
    return {
        "business_date": day.isoformat(),
        "timezone": tz.key,
        "today": today.isoformat(),
        "providers": {p: _provider_day(session, runs.get(p), payments.get(p, {})) for p in providers},
        "open_cases": open_cases,
        "charts": {
            "exceptions_by_class": sorted(by_class.values(), key=lambda r: class_rank(r["class"])),
            "open_by_age": by_age,
            **_trend(session, day, tz),
        },
        "statuses": [s.value for s in CaseStatus],
    }
