"""Exceptions as work: the cases finance staff open, age, assign and resolve (docs/exceptions.md).

A run's exceptions are rows of that run (``recon_items``); a *case* is the exception as work, one per
(provider, business day, reference), carried across every run and re-run of its day:

* ``sync`` (after a run that succeeded) opens a case for each exception the run finds that has none,
  updates those it finds again (its class may change: audited), resolves the open ones the run no
  longer finds (``matched_later`` when the run matches the reference, ``cleared`` when the day no longer
  has it at all), closes at once what the run settled itself (a healed lost webhook, a refund the
  provider reported), and reopens a case a run had closed when a later run finds it again. A case an
  operator closed stays closed: their decision is not the run's to undo.
* A person works a case: ``assign`` (it is then *investigating*), ``note``, ``resolve`` (matched later,
  refunded, dismissed with a reason, or written off, which posts a ledger journal), ``reopen``.

Every change is a row of ``recon_case_events`` (who, when, what), in the transaction of the change; the
case row is locked for it (``FOR UPDATE``), so two people acting on one case are serialised, and a
write-off is posted once (the case is closed in the same transaction; the ledger's (payment, kind) key
refuses a second write-off journal of a payment). A provider's runs sync one at a time (``lock_provider``),
and only the day's latest succeeded run changes its cases.

Age is counted from the business day (the day it became a break), in days, with Formance's buckets
(0-1, 2-7, 8-30, > 30 days). Priority comes from the class and the amount at stake; the SLA date is the
day it opened plus the priority's days. Money is minor units with its currency, as everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from reconciliation import ledger
from reconciliation.db import advisory_lock
from reconciliation.models import (
    CaseStatus,
    Payment,
    PaymentStatus,
    ReconCase,
    ReconCaseEvent,
    ReconClass,
    ReconItem,
    ReconRun,
    Resolution,
)

WRITEOFF = "writeoff"  # journal kind: an exception's loss (or gain) written off by a person

#: The class's priority before the amount is looked at: money we count on that the provider does not have
#: (we gave access) first; then what needs the provider or the customer; the fee variance last.
BASE_PRIORITY: dict[str, str] = {
    ReconClass.MISSING_AT_PROVIDER.value: "high",
    ReconClass.STATUS_MISMATCH.value: "high",
    ReconClass.AMOUNT_MISMATCH.value: "medium",
    ReconClass.CURRENCY_MISMATCH.value: "medium",
    ReconClass.DUPLICATE.value: "medium",
    ReconClass.MISSING_IN_LEDGER.value: "medium",
    ReconClass.MISSING_AFTER_SLA.value: "medium",
    ReconClass.FEE_VARIANCE.value: "low",
}
#: An amount at stake of at least this much (minor units) raises the priority one level.
LARGE_AMOUNT: dict[str, int] = {"XOF": 100_000, "XAF": 100_000, "GNF": 1_000_000, "EUR": 15_000, "USD": 15_000}
#: Days after it opened by which a case of this priority should be resolved.
SLA_DAYS: dict[str, int] = {"high": 1, "medium": 3, "low": 7}
PRIORITY_ORDER: tuple[str, ...] = ("high", "medium", "low")
#: Age buckets (days since the business day): (name, first day, last day or None).
AGE_BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("0-1", 0, 1),
    ("2-7", 2, 7),
    ("8-30", 8, 30),
    ("31+", 31, None),
)
OPEN_STATUSES = (CaseStatus.OPEN, CaseStatus.INVESTIGATING)
CLOSED_STATUSES = (CaseStatus.RESOLVED, CaseStatus.WRITTEN_OFF)
#: How a person may resolve a case (the others are a run's).
BY_HAND = (Resolution.MATCHED_LATER, Resolution.REFUNDED, Resolution.DISMISSED, Resolution.WRITTEN_OFF)


class CaseError(Exception):
    """A case cannot be changed that way; the message says why (the CLI exits 2)."""


def age_days(business_date: date, today: date) -> int:
    return max((today - business_date).days, 0)


def age_bucket(days: int) -> str:
    for name, first, last in AGE_BUCKETS:
        if days >= first and (last is None or days <= last):
            return name
    raise AssertionError(days)  # pragma: no cover - the last bucket is open-ended


def exposure(item: Any) -> tuple[int | None, str | None]:
    """The amount at stake of an exception (minor units, currency), from its item's two sides."""
    cls = item.cls
    if (
        cls == ReconClass.AMOUNT_MISMATCH.value
        and item.internal_amount is not None
        and item.provider_amount is not None
    ):
        return abs(item.provider_amount - item.internal_amount), item.internal_currency
    if cls == ReconClass.FEE_VARIANCE.value and item.fee is not None and item.expected_fee is not None:
        return abs(item.fee - item.expected_fee), item.provider_currency
    if cls in (ReconClass.MISSING_IN_LEDGER.value, ReconClass.DUPLICATE.value) and item.provider_amount is not None:
        return item.provider_amount, item.provider_currency
    if item.internal_amount is not None:
        return item.internal_amount, item.internal_currency
    return item.provider_amount, item.provider_currency


def priority(cls: str, amount: int | None, currency: str | None) -> str:
    base = BASE_PRIORITY.get(cls, "medium")
    large = LARGE_AMOUNT.get(currency or "")
    if amount is not None and large is not None and amount >= large and base != "high":
        return PRIORITY_ORDER[PRIORITY_ORDER.index(base) - 1]
    return base


def sla_due(opened_on: date, level: str) -> date:
    return opened_on + timedelta(days=SLA_DAYS[level])


# --------------------------------------------------------------------------- a run's exceptions


@dataclass(frozen=True, slots=True)
class Synced:
    opened: int = 0
    seen_again: int = 0
    resolved: int = 0  # closed by this run (healed, refunded, matched later, cleared)
    reopened: int = 0
    skipped: bool = False  # a later run of the day had succeeded: it decides


#: The columns of an item a case (and ``exposure``) reads.
ITEM_COLUMNS = (
    ReconItem.reference, ReconItem.cls, ReconItem.payment_id, ReconItem.internal_amount,
    ReconItem.internal_currency, ReconItem.provider_amount, ReconItem.provider_currency,
    ReconItem.internal_status, ReconItem.provider_status, ReconItem.fee, ReconItem.expected_fee,
    ReconItem.healed, ReconItem.detail,
)  # fmt: skip


def sync(session: Session, run_id: int, *, now: datetime | None = None) -> Synced:
    """Bring the cases of the run's day up to date with what the run found (see the module's text)."""
    now = now or datetime.now(UTC)
    run = session.get(ReconRun, run_id)
    if run is None or run.status != "succeeded":
        raise CaseError(f"run {run_id} did not succeed: its items may be incomplete, its day's cases stay as they are")
    lock_provider(session, run.provider)  # the caller (runs.finish) holds it already: re-entrant
    day_runs = session.execute(
        select(ReconRun.id, ReconRun.status).where(
            ReconRun.provider == run.provider, ReconRun.business_date == run.business_date
        )
    ).all()
    if any(rid > run_id and status == "succeeded" for rid, status in day_runs):
        return Synced(skipped=True)
    actor = f"run {run_id}"
    opened_on = now.astimezone(ZoneInfo(run.timezone)).date()
    items = {
        row.reference: row
        for row in session.execute(
            select(*ITEM_COLUMNS).where(ReconItem.run_id == run_id, ReconItem.cls != ReconClass.MATCHED.value)
        )
        if row.reference is not None
    }
    cases = {
        case.reference: case
        for case in session.scalars(
            select(ReconCase)
            .where(ReconCase.provider == run.provider, ReconCase.business_date == run.business_date)
            .order_by(ReconCase.id)
            .with_for_update()
        )
    }
    refunded = _refunded(session, [row.payment_id for row in items.values() if _reports_refund(row)])
    events: list[tuple[ReconCase, str, str]] = []
    seen = resolved = reopened = 0
    new_rows: list[dict[str, Any]] = []
    new_events: dict[str, list[tuple[str, str]]] = {}
    for reference, item in items.items():
        by_run = _closed_by_run(item, refunded)
        case = cases.get(reference)
        if case is None:  # written together below (one statement for a day's new cases, not an object each)
            row = _new_row(run, item, now=now, opened_on=opened_on)
            new_events[reference] = [("opened", _found(item))]
            if by_run is not None:
                how, note = by_run
                row |= {"status": CaseStatus.RESOLVED, "resolution": how, "resolution_note": note,
                        "resolved_by": actor, "resolved_at": now}  # fmt: skip
                new_events[reference].append(("resolved", f"{how.value}: {note}"))
                resolved += 1
            new_rows.append(row)
            continue
        seen += 1
        reopened += _found_again(case, item, by_run, run_id=run_id, events=events, now=now)
        if by_run is not None and case.status in OPEN_STATUSES:
            how, note = by_run
            _close(case, how, note, actor, now)
            events.append((case, "resolved", f"{how.value}: {note}"))
            resolved += 1
    gone = [case for reference, case in cases.items() if reference not in items]
    resolved += _close_gone(session, run_id, gone, events, now)
    session.flush()
    audit = _insert_new(session, new_rows, new_events, actor)
    resolved += _match_across_days(session, run, items, events, now)
    audit += [(case.id, actor, action, detail) for case, action, detail in events]
    _audit(session, audit, now)
    return Synced(opened=len(new_rows), seen_again=seen, resolved=resolved, reopened=reopened)


def _found_again(
    case: ReconCase, item: Any, by_run: Any, *, run_id: int, events: list[tuple[ReconCase, str, str]], now: datetime
) -> int:
    """A case the run finds again (1 if it reopened it)."""
    case.runs_seen += 1
    case.last_run_id = run_id
    case.updated_at = now
    if _by_a_person(case):
        # Closed by a person: it keeps what it was closed with (a write-off's journal says that amount);
        # what the run finds now is in its history, for finance to act on if it differs.
        if (case.cls, case.amount, case.currency) != (item.cls, *exposure(item)):
            events.append((case, "seen_again", f"closed by {case.resolved_by}; the run finds {_found(item)}"))
        return 0
    if case.cls != item.cls:
        events.append((case, "reclassified", f"{case.cls} -> {item.cls}: {_found(item)}"))
    _describe(case, item)
    if case.status in CLOSED_STATUSES and by_run is None:
        _reopen(case, now)
        events.append((case, "reopened", f"found again: {_found(item)}"))
        return 1
    return 0


def _insert_new(
    session: Session, rows: list[dict[str, Any]], said: dict[str, list[tuple[str, str]]], actor: str
) -> list[tuple[int, str, str, str]]:
    """The day's new cases in one statement; their audit rows (opened, and resolved when the run settled it)."""
    if not rows:
        return []
    inserted = session.execute(
        insert(ReconCase).returning(ReconCase.id, ReconCase.reference, sort_by_parameter_order=True), rows
    )
    ids = {reference: case_id for case_id, reference in inserted}
    return [(ids[ref], actor, action, detail) for ref, events in said.items() for action, detail in events]


def _close_gone(
    session: Session, run_id: int, gone: Sequence[ReconCase], events: list[tuple[ReconCase, str, str]], now: datetime
) -> int:
    """Cases of the day the run no longer finds: the open ones are resolved (matched later, or cleared)."""
    actor, resolved = f"run {run_id}", 0
    matched = _matched_references(session, run_id, [c.reference for c in gone if c.status in OPEN_STATUSES])
    written_off = [c.reference for c in gone if c.status is CaseStatus.WRITTEN_OFF]
    arrived = _matched_references(session, run_id, written_off)
    for case in gone:
        case.last_run_id = run_id
        if case.reference in arrived:
            note = f"run {run_id} matches it now: the money written off (journal {case.journal_id}) has arrived"
            events.append((case, "seen_again", f"{note}; post a journal reversing the write-off"))
        if case.status in OPEN_STATUSES:
            if case.reference in matched:
                how, note = Resolution.MATCHED_LATER, f"run {run_id} matches it"
            else:
                how, note = Resolution.CLEARED, f"run {run_id} no longer finds the reference in the day"
            _close(case, how, note, actor, now)
            events.append((case, "resolved", f"{how.value}: {note}"))
            resolved += 1
    return resolved


#: One side of a payment booked on one business day by us and on the next by the provider (a cut-off at
#: midnight, a payment at 23:59): the two classes the two days' runs find for it.
_ACROSS = {
    ReconClass.MISSING_AT_PROVIDER.value: ReconClass.MISSING_IN_LEDGER.value,
    ReconClass.MISSING_IN_LEDGER.value: ReconClass.MISSING_AT_PROVIDER.value,
}


def _match_across_days(
    session: Session, run: ReconRun, items: dict[str, Any], events: list[tuple[ReconCase, str, str]], now: datetime
) -> int:
    """A payment we booked on one day that the provider reports on another is one payment, not two breaks:
    where this run's ``missing_at_provider`` (or ``missing_in_ledger``) has its counterpart among another
    day's cases of the provider, for the same amount and currency, both are resolved ``matched_later``.
    Another day's sync never runs meanwhile (``lock_provider``); a person working one of its cases holds it
    only for their own short transaction."""
    wanted = {ref: item for ref, item in items.items() if item.cls in _ACROSS}
    if not wanted:
        return 0
    own = {
        c.reference: c
        for c in session.scalars(
            select(ReconCase).where(
                ReconCase.provider == run.provider,
                ReconCase.business_date == run.business_date,
                ReconCase.reference.in_(list(wanted)),
            )
        )
    }
    others = session.scalars(
        select(ReconCase)
        .where(
            ReconCase.provider == run.provider,
            ReconCase.business_date != run.business_date,
            ReconCase.reference.in_(list(wanted)),
        )
        .order_by(ReconCase.id)
        .with_for_update()
    ).all()
    resolved = 0
    for other in others:
        mine = own.get(other.reference)
        if mine is None or other.cls != _ACROSS[mine.cls] or not _same_money(mine, other):
            continue
        closed = next((c for c in (other, mine) if _by_a_person(c)), None)
        if closed is not None:  # a person decided (a write-off's journal, say): they decide again, told why
            counterpart = mine if closed is other else other
            note = (
                f"the same payment is case {closed.id} of {closed.business_date}, {closed.status.value} by "
                f"{closed.resolved_by}"
                + (f" (journal {closed.journal_id})" if closed.journal_id else "")
                + ": check that decision"
            )
            events.append((counterpart, "seen_again", note))
            continue
        for case, counterpart in ((other, mine), (mine, other)):
            note = f"the same payment is case {counterpart.id} of {counterpart.business_date} ({counterpart.cls})"
            if case.status in OPEN_STATUSES or _by_a_run(case):
                _close(case, Resolution.MATCHED_LATER, note, f"run {run.id}", now)
                events.append((case, "resolved", f"{Resolution.MATCHED_LATER.value}: {note}"))
                resolved += 1
    return resolved


def _same_money(a: ReconCase, b: ReconCase) -> bool:
    """Both sides name the same amount in the same currency (ours on one day, the provider's on the other)."""

    def side(case: ReconCase) -> tuple[int | None, str | None]:
        if case.cls == ReconClass.MISSING_AT_PROVIDER.value:
            return case.internal_amount, case.internal_currency
        return case.provider_amount, case.provider_currency

    return side(a) == side(b) and side(a)[0] is not None


def lock_provider(session: Session, provider: str) -> None:
    """One provider's runs bring their cases up to date one at a time, whatever their days: a transaction-level
    advisory lock, taken before the run's own row is written (``runs.finish``), so two runs finishing together
    wait for each other instead of deadlocking on each other's rows, and a run matching another day's cases
    (``_match_across_days``) always sees that day's latest ones."""
    advisory_lock(session, f"cases:{provider}")


def _found(item: Any) -> str:
    amount, currency = exposure(item)
    at_stake = f", {amount} {currency} at stake" if amount is not None else ""
    return f"{item.cls}{at_stake}" + (f" ({item.detail})" if item.detail else "")


def _new_row(run: ReconRun, item: Any, *, now: datetime, opened_on: date) -> dict[str, Any]:
    """A new case's row: open, described as the run found it (``_description``), its SLA from today."""
    described = _description(item)
    return {
        "provider": run.provider, "business_date": run.business_date, "reference": item.reference,
        "status": CaseStatus.OPEN, "resolution": None, "resolution_note": None, "resolved_by": None,
        "resolved_at": None, "assignee": None, "journal_id": None, "opened_at": now, "opened_run_id": run.id,
        "last_run_id": run.id, "runs_seen": 1, "updated_at": now,
        "sla_due": sla_due(opened_on, described["priority"]), **described,
    }  # fmt: skip


def _description(item: Any) -> dict[str, Any]:
    """What a run says of a case: class, both sides, the amount at stake, its priority."""
    amount, currency = exposure(item)
    return {
        "cls": item.cls, "payment_id": item.payment_id,
        "internal_amount": item.internal_amount, "internal_currency": item.internal_currency,
        "provider_amount": item.provider_amount, "provider_currency": item.provider_currency,
        "internal_status": item.internal_status, "provider_status": item.provider_status,
        "amount": amount, "currency": currency, "detail": item.detail or "",
        "priority": priority(item.cls, amount, currency),
    }  # fmt: skip


def _describe(case: ReconCase, item: Any) -> None:
    """The case as the latest run describes it (``_description``); the SLA follows a new priority, from the day
    the case opened."""
    before = case.priority
    for name, value in _description(item).items():
        if name != "payment_id" or value is not None:
            setattr(case, name, value)
    if before != case.priority:
        case.sla_due = sla_due(case.sla_due - timedelta(days=SLA_DAYS[before]), case.priority)


def _reports_refund(item: Any) -> bool:
    return (
        item.cls == ReconClass.STATUS_MISMATCH.value
        and item.internal_status == PaymentStatus.SUCCEEDED.value
        and item.provider_status == "refunded"
        and item.payment_id is not None
    )


def _refunded(session: Session, payment_ids: Sequence[int]) -> set[int]:
    if not payment_ids:
        return set()
    return set(
        session.scalars(select(Payment.id).where(Payment.id.in_(payment_ids), Payment.status == PaymentStatus.REFUNDED))
    )


def _closed_by_run(item: Any, refunded: set[int]) -> tuple[Resolution, str] | None:
    """How the run itself settled the exception, if it did: a lost webhook healed, a reported refund applied."""
    if item.cls == ReconClass.MISSING_IN_LEDGER.value and item.healed:
        return Resolution.HEALED, item.detail or "settled by the run"
    if _reports_refund(item) and item.payment_id in refunded:
        return Resolution.REFUNDED, "the provider's refund was applied by the run"
    return None


def _by_a_run(case: ReconCase) -> bool:
    return (case.resolved_by or "").startswith("run ")


def _by_a_person(case: ReconCase) -> bool:
    """Closed by a person (``resolve``): a run never changes it again (a person's ``reopen`` does)."""
    return case.status in CLOSED_STATUSES and not _by_a_run(case)


def _matched_references(session: Session, run_id: int, references: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(references), 1000):
        found.update(
            r
            for r in session.scalars(
                select(ReconItem.reference).where(
                    ReconItem.run_id == run_id,
                    ReconItem.cls == ReconClass.MATCHED.value,
                    ReconItem.reference.in_(references[start : start + 1000]),
                )
            )
            if r is not None
        )
    return found


def _close(case: ReconCase, how: Resolution, note: str, by: str, now: datetime) -> None:
    case.status = CaseStatus.WRITTEN_OFF if how is Resolution.WRITTEN_OFF else CaseStatus.RESOLVED
    case.resolution, case.resolution_note, case.resolved_by, case.resolved_at = how, note, by, now
    case.updated_at = now


def _reopen(case: ReconCase, now: datetime) -> None:
    case.status = CaseStatus.INVESTIGATING if case.assignee else CaseStatus.OPEN
    case.resolution = case.resolution_note = case.resolved_by = case.resolved_at = None
    case.updated_at = now


def _audit(session: Session, rows: Iterable[tuple[int, str, str, str]], now: datetime) -> None:
    values = [{"case_id": c, "at": now, "actor": a, "action": act, "detail": d} for c, a, act, d in rows]
    if values:
        session.execute(insert(ReconCaseEvent), values)


# --------------------------------------------------------------------------- a person's work


def _locked(session: Session, case_id: int) -> ReconCase:
    case = session.scalar(select(ReconCase).where(ReconCase.id == case_id).with_for_update())
    if case is None:
        raise CaseError(f"no exception case {case_id}")
    return case


def _person(by: str) -> str:
    by = by.strip()
    if not by:
        raise CaseError("say who does it (--by)")
    if by.startswith("run "):
        raise CaseError("'run …' names a reconciliation run, not a person")
    return by[:100]


def assign(session: Session, case_id: int, assignee: str, *, by: str, now: datetime | None = None) -> ReconCase:
    """Give the case to ``assignee`` (it is then *investigating*); a closed case cannot be assigned."""
    now, by, assignee = now or datetime.now(UTC), _person(by), assignee.strip()[:100]
    if not assignee:
        raise CaseError("assign to whom? (--to)")
    case = _locked(session, case_id)
    if case.status in CLOSED_STATUSES:
        raise CaseError(f"case {case_id} is {case.status.value}: reopen it first")
    before = case.assignee
    case.assignee, case.status, case.updated_at = assignee, CaseStatus.INVESTIGATING, now
    _audit(session, [(case.id, by, "assigned", f"{before or 'nobody'} -> {assignee}")], now)
    return case


def note(session: Session, case_id: int, text: str, *, by: str, now: datetime | None = None) -> ReconCase:
    """Add a note to the case's history (any status)."""
    now, by, text = now or datetime.now(UTC), _person(by), text.strip()
    if not text:
        raise CaseError("an empty note says nothing")
    case = _locked(session, case_id)
    case.updated_at = now
    _audit(session, [(case.id, by, "noted", text)], now)
    return case


def resolve(
    session: Session,
    case_id: int,
    how: Resolution,
    *,
    note: str,
    by: str,
    amount: int | None = None,
    now: datetime | None = None,
) -> ReconCase:
    """Close the case ``how`` (``BY_HAND``), with a note saying why. ``written_off`` posts the write-off
    journal (``write_off``): ``amount`` (minor units, in the case's currency) overrides the amount at stake."""
    now, by, note = now or datetime.now(UTC), _person(by), note.strip()
    if how not in BY_HAND:
        raise CaseError(f"{how.value} is a run's resolution; by hand: {', '.join(h.value for h in BY_HAND)}")
    if not note:
        raise CaseError("say why (--note): it stays with the case")
    if amount is not None and how is not Resolution.WRITTEN_OFF:
        raise CaseError("--amount is for a write-off")
    case = _locked(session, case_id)
    if case.status in CLOSED_STATUSES:
        raise CaseError(f"case {case_id} is already {case.status.value} ({case.resolution}): reopen it first")
    detail = f"{how.value}: {note}"
    if how is Resolution.WRITTEN_OFF:
        journal = write_off(session, case, amount=amount, note=note, by=by)
        case.journal_id = journal.id
        detail = f"{detail} (journal {journal.id})"
    _close(case, how, note, by, now)
    _audit(session, [(case.id, by, "resolved", detail)], now)
    return case


def write_off(session: Session, case: ReconCase, *, amount: int | None, note: str, by: str) -> Any:
    """The write-off journal of a case: what the provider's clearing account holds that will never come
    (Dr ``writeoffs:<provider>`` / Cr clearing), or, where the provider paid more than we booked, the gain
    (Dr clearing / Cr ``writeoffs:<provider>``). Only for exceptions whose money is in our ledger."""
    cls = case.cls
    if cls not in _WRITABLE:
        raise CaseError(
            f"nothing of a {cls} exception is in the ledger to write off: resolve it as matched_later, refunded "
            "or dismissed"
        )
    if cls == ReconClass.STATUS_MISMATCH.value and case.internal_status != PaymentStatus.SUCCEEDED.value:
        raise CaseError("we did not book this payment as paid: nothing to write off")
    currency = case.internal_currency
    at_stake = case.amount if cls == ReconClass.AMOUNT_MISMATCH.value else case.internal_amount
    value = at_stake if amount is None else amount
    if currency is None or value is None or at_stake is None:
        raise CaseError("the case has no amount in our ledger's currency")
    if isinstance(value, bool) or value <= 0:
        raise CaseError(f"a write-off is a positive amount in minor units, got {value}")
    if value > at_stake:
        raise CaseError(f"{value} is more than the {at_stake} {currency} at stake: nothing more can be lost")
    _payment_as_run_saw_it(session, case)
    gain = (
        cls == ReconClass.AMOUNT_MISMATCH.value
        and case.provider_amount is not None
        and case.internal_amount is not None
        and case.provider_amount > case.internal_amount
    )
    loss_account, clearing = ledger.writeoffs(case.provider), ledger.clearing(case.provider)
    lines = (
        ledger.transfer(clearing, loss_account, value, currency)
        if gain
        else ledger.transfer(loss_account, clearing, value, currency)
    )
    memo = (
        f"write-off of exception case {case.id} ({cls} {case.reference}, {case.provider} {case.business_date}) "
        f"by {by}: {note}"
    )
    return ledger.post(session, lines, kind=WRITEOFF, payment_id=case.payment_id, memo=memo[:2000])


def _payment_as_run_saw_it(session: Session, case: ReconCase) -> None:
    """The case's payment, locked (as its settlement and its refund lock it: the fees lock none), still
    paid as the run that found the case saw it; else the case is out of date (a refund reversed its journals
    since, say) and a write-off would post against money that is no longer there: re-run the day first."""
    if case.payment_id is None:
        raise CaseError("the case names no payment of ours: nothing in our ledger to write off")
    payment = session.scalar(select(Payment).where(Payment.id == case.payment_id).with_for_update())
    seen = (PaymentStatus.SUCCEEDED, case.internal_amount, case.internal_currency)
    now = None if payment is None else (payment.status, *_booked(payment))
    if now != seen:
        shown = "gone" if payment is None else f"{payment.status.value}, {now[1]} {now[2]}"  # type: ignore[index]
        raise CaseError(
            f"payment {case.payment_id} changed since run {case.last_run_id} saw it (now {shown}): re-run "
            f"{case.provider}'s {case.business_date} first (payrecon reconcile --provider {case.provider} "
            f"--date {case.business_date})"
        )


def _booked(payment: Payment) -> tuple[int | None, str | None]:
    """What our ledger holds for a paid payment: the confirmed amount, else the registered one (as the run reads it)."""
    return payment.confirmed_amount or payment.amount, payment.confirmed_currency or payment.currency


_WRITABLE = frozenset(
    {
        ReconClass.MISSING_AT_PROVIDER.value,
        ReconClass.AMOUNT_MISMATCH.value,
        ReconClass.CURRENCY_MISMATCH.value,
        ReconClass.STATUS_MISMATCH.value,
    }
)


def reopen(session: Session, case_id: int, *, note: str, by: str, now: datetime | None = None) -> ReconCase:
    """Open a closed case again (a mistake, new facts). A written-off case stays closed: its journal is
    in the ledger, and a correction is a new journal, not a reopened case."""
    now, by, note = now or datetime.now(UTC), _person(by), note.strip()
    if not note:
        raise CaseError("say why (--note): it stays with the case")
    case = _locked(session, case_id)
    if case.status in OPEN_STATUSES:
        raise CaseError(f"case {case_id} is {case.status.value} already")
    if case.status is CaseStatus.WRITTEN_OFF:
        raise CaseError(
            f"case {case_id} was written off (journal {case.journal_id}): post a correcting journal instead"
        )
    _reopen(case, now)
    _audit(session, [(case.id, by, "reopened", note)], now)
    return case


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class Filter:
    statuses: tuple[CaseStatus, ...] = OPEN_STATUSES
    provider: str | None = None
    age: str | None = None  # an AGE_BUCKETS name
    assignee: str | None = None
    limit: int | None = None


def listing(session: Session, today: date, where: Filter = Filter()) -> list[dict[str, Any]]:
    """The cases ``where`` selects, oldest business day first, then the largest amount, as plain dicts
    (``as_dict``)."""
    query = select(ReconCase).where(ReconCase.status.in_(where.statuses))
    if where.provider:
        query = query.where(ReconCase.provider == where.provider)
    if where.assignee:
        query = query.where(ReconCase.assignee == where.assignee)
    if where.age:
        first, last = next((f, la) for name, f, la in AGE_BUCKETS if name == where.age)
        query = query.where(ReconCase.business_date <= today - timedelta(days=first))
        if last is not None:
            query = query.where(ReconCase.business_date >= today - timedelta(days=last))
    query = query.order_by(ReconCase.business_date, ReconCase.amount.desc().nulls_last(), ReconCase.id)
    if where.limit:
        query = query.limit(where.limit)
    return [as_dict(case, today) for case in session.scalars(query)]


def as_dict(case: ReconCase, today: date) -> dict[str, Any]:
    days = age_days(case.business_date, today)
    return {
        "id": case.id,
        "provider": case.provider,
        "business_date": case.business_date.isoformat(),
        "reference": case.reference,
        "class": case.cls,
        "status": case.status.value,
        "priority": case.priority,
        "amount": case.amount,
        "currency": case.currency,
        "age_days": days,
        "age_bucket": age_bucket(days),
        "sla_due": case.sla_due.isoformat(),
        "overdue": case.status in OPEN_STATUSES and today > case.sla_due,
        "assignee": case.assignee,
        "payment_id": case.payment_id,
        "ours": {"status": case.internal_status, "amount": case.internal_amount, "currency": case.internal_currency},
        "theirs": {"status": case.provider_status, "amount": case.provider_amount, "currency": case.provider_currency},
        "detail": case.detail,
        "resolution": case.resolution.value if case.resolution else None,
        "resolution_note": case.resolution_note,
        "resolved_by": case.resolved_by,
        "resolved_at": case.resolved_at.isoformat() if case.resolved_at else None,
        "journal_id": case.journal_id,
        "opened_at": case.opened_at.isoformat(),
        "opened_run_id": case.opened_run_id,
        "last_run_id": case.last_run_id,
        "runs_seen": case.runs_seen,
    }  # fmt: skip


def history(session: Session, case_id: int) -> list[dict[str, Any]]:
    rows = session.scalars(select(ReconCaseEvent).where(ReconCaseEvent.case_id == case_id).order_by(ReconCaseEvent.id))
    return [{"at": e.at.isoformat(), "actor": e.actor, "action": e.action, "detail": e.detail} for e in rows]


def show(session: Session, case_id: int, today: date) -> dict[str, Any]:
    case = session.get(ReconCase, case_id)
    if case is None:
        raise CaseError(f"no exception case {case_id}")
    return as_dict(case, today) | {"history": history(session, case_id)}
