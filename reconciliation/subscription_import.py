"""``payrecon subscriptions import FILE.csv``: adopt payrecon on a live platform.

Columns (by header name): ``account``, ``plan``, ``ends_at`` (``YYYY-MM-DD``: access through that
day in the business time zone; or an ISO 8601 time), optional ``payment_reference``. Every bad row
is reported with its line number and nothing is imported unless every row is good. An account that
already has a subscription to the plan's product in payrecon is an error, not an overwrite.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from reconciliation import outbox
from reconciliation.models import Payment, Plan, Subscription, SubscriptionGrant

REQUIRED = ("account", "plan", "ends_at")


@dataclass
class SubscriptionImportError(Exception):
    message: str
    errors: list[tuple[int, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join([self.message, *(f"  line {n}: {m}" for n, m in self.errors[:50])])


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    account: str
    plan: Plan
    ends_at: datetime
    payment_reference: str | None


def _end(value: str, tz: ZoneInfo) -> datetime:
    text = value.strip()
    if len(text) == 10:
        day = date.fromisoformat(text)
        return datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)  # through that whole day
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=tz)


def import_subscriptions(session: Session, path: Path, *, tz: ZoneInfo, now: datetime, by: str) -> int:
    """Import every row in the caller's transaction, or raise with every bad row's line number."""
    plans = {p.code: p for p in session.scalars(select(Plan))}
    errors: list[tuple[int, str]] = []
    rows: list[Row] = []
    seen: dict[tuple[str, str], int] = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise SubscriptionImportError(f"missing column(s) {', '.join(missing)}; expected {', '.join(REQUIRED)}")
        for line, record in enumerate(reader, start=2):
            account = (record.get("account") or "").strip()
            plan = plans.get((record.get("plan") or "").strip())
            if not account:
                errors.append((line, "account is empty"))
                continue
            if plan is None:
                errors.append((line, f"unknown plan {(record.get('plan') or '')[:40]!r}"))
                continue
            try:
                ends_at = _end(record.get("ends_at") or "", tz)
            except ValueError:
                errors.append((line, f"ends_at {(record.get('ends_at') or '')[:40]!r} is not YYYY-MM-DD or ISO 8601"))
                continue
            key = (plan.product, account)
            if key in seen:
                errors.append((line, f"{account!r} is already on line {seen[key]} for {plan.product}"))
                continue
            seen[key] = line
            reference = (record.get("payment_reference") or "").strip() or None
            rows.append(Row(line, account, plan, ends_at, reference))
    existing = set(
        session.execute(
            select(Subscription.product, Subscription.account).where(
                Subscription.account.in_([r.account for r in rows])
            )
        ).all()
    )
    for row in rows:
        if (row.plan.product, row.account) in existing:
            errors.append((row.line, f"{row.account!r} already has a {row.plan.product} subscription in payrecon"))
    if errors:
        raise SubscriptionImportError(f"{path.name}: {len(errors)} bad row(s); nothing imported", sorted(errors))
    for row in rows:
        active = row.ends_at > now
        sub = Subscription(
            product=row.plan.product, account=row.account, plan_code=row.plan.code, starts_at=min(now, row.ends_at),
            ends_at=row.ends_at, active=active, expired_at=None if active else now, created_at=now, updated_at=now,
        )  # fmt: skip
        session.add(sub)
        session.flush()
        payment_id = None
        if row.payment_reference:
            payment_id = session.scalar(select(Payment.id).where(Payment.reference == row.payment_reference))
        days = max(1, round((row.ends_at - now).total_seconds() / 86400)) if active else 1
        session.add(
            SubscriptionGrant(
                subscription_id=sub.id, payment_id=payment_id, kind="import", plan_code=row.plan.code, periods=0,
                days=days, starts_at=sub.starts_at, ends_at=row.ends_at, granted_by=by,
                reason=f"imported from {path.name}, line {row.line}"
                + (f", payment {row.payment_reference}" if row.payment_reference else ""),
            )
        )  # fmt: skip
        outbox.emit(
            session, "subscription.imported", product=row.plan.product,
            data={"account": row.account, "product": row.plan.product, "plan": row.plan.code,
                  "ends_at": row.ends_at.isoformat(), "active": active},
            now=now,
        )  # fmt: skip
    return len(rows)
