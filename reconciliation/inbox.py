"""The inbox of webhook deliveries: first raw delivery kept byte for byte, repeats counted.

A ``received`` row is unfinished work (docs/pipeline.md). ``next_attempt_at`` is when it is due and,
while a worker holds it, when that worker's lease ends: taking a row moves it to ``now + LEASE``
in one conditional UPDATE, so two workers never both take it while the lease runs, and a worker
that dies holding it (SIGKILL, lost connection) only delays it until the lease ends. A message
that names a row also names the ``next_attempt_at`` it was sent for (its *version*), so the
message the janitor sent for a row it leased may take it, and a stale one may not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, or_, text, update
from sqlalchemy.orm import Session

from reconciliation import bulk
from reconciliation.db import lease_rows, storable_text
from reconciliation.dialect import insert
from reconciliation.models import InboxDelivery, InboxStatus
from schemas.messages import WebhookEnvelope

#: How long a worker holds a delivery it took: longer than a verification can take (the provider
#: call's retries end within 20 s, a token fetch and two transactions add a few seconds).
LEASE = timedelta(seconds=60)
#: A wake-up message may run this early (countdowns are rounded; clocks differ a little).
EARLY = timedelta(seconds=2)


@dataclass(frozen=True, slots=True)
class Stored:
    id: int
    is_new: bool  # False: a repeat of a delivery already in the inbox
    status: InboxStatus
    envelope_raw: str
    first_seen_at: datetime


@dataclass(frozen=True, slots=True)
class Work:
    """A delivery a worker holds until ``lease_until``: what the row says of the work so far."""

    id: int
    provider: str
    envelope_raw: str
    first_seen_at: datetime  # when the delivery first arrived
    opened_at: datetime  # when its work began (arrival, or a reopening after a give-up)
    attempts: int  # provider failures
    errors: int  # internal errors (bugs)
    deferrals: int
    budget_slot: str | None
    lease_until: datetime

    @classmethod
    def opened(
        cls, inbox_id: int, provider: str, envelope_raw: str, now: datetime, *, first_seen_at: datetime | None = None
    ) -> Work:
        """The work of a delivery just stored (or reopened) by the caller, who holds it."""
        return cls(inbox_id, provider, envelope_raw, first_seen_at or now, now, 0, 0, 0, None, now + LEASE)


def store(
    session: Session,
    envelope: WebhookEnvelope,
    raw: str,
    *,
    dedupe_key: str,
    reference: str | None,
    status: InboxStatus,
    now: datetime,
    detail: str = "",
    awaiting: bool = False,
) -> Stored:
    """Insert the delivery, or count a repeat of it. Never overwrites the first one."""
    row = {"dedupe_key": dedupe_key, "reference": reference, "status": status, "detail": detail, "awaiting": awaiting}
    return store_many(session, [(envelope, raw, row)], now=now)[0]


def store_many(
    session: Session, deliveries: list[tuple[WebhookEnvelope, str, dict[str, Any]]], *, now: datetime
) -> list[Stored]:
    """``store`` for many deliveries, in one statement (in key order: two callers storing the same
    deliveries wait for each other, never in a cycle). ``deliveries``: (envelope, raw JSON, the
    keywords of ``store``). A delivery repeated within the call counts as a repeat of the first."""
    table = InboxDelivery.__table__
    firsts: dict[tuple[str, str], int] = {}
    rows = []
    for n, (envelope, raw, row) in enumerate(deliveries):
        key = (envelope.provider.value, row["dedupe_key"])
        if key in firsts:
            continue
        firsts[key] = n
        status = row["status"]
        rows.append(
            {
                "provider": envelope.provider.value,
                "dedupe_key": row["dedupe_key"],
                "status": status,
                "reference": row["reference"],
                "method": storable_text(envelope.method),
                "path": storable_text(envelope.path),
                "headers": {storable_text(k): storable_text(v) for k, v in envelope.headers.items()},
                "body": storable_text(envelope.body),
                "envelope_raw": raw,
                "received_at": envelope.received_at,
                "first_seen_at": now,
                "last_seen_at": now,
                "repeat_count": 0,
                "detail": row.get("detail", ""),
                # A new delivery to verify is held by the worker that stored it.
                "next_attempt_at": now + LEASE if status is InboxStatus.RECEIVED else None,
                "opened_at": now if status is InboxStatus.RECEIVED else None,
                "attempts": 0,
                "errors": 0,
                "deferrals": 0,
                "awaiting_registration": bool(row.get("awaiting", False)),
            }
        )
    rows.sort(key=lambda r: (r["provider"], r["dedupe_key"]))
    if session.get_bind().dialect.name == "postgresql":
        # One statement over arrays (reconciliation.bulk); a repeat's first raw body comes back, a new
        # row's is the one just sent.
        returned = bulk.insert_rows(session, cast(Table, table), rows, tail=_STORE_TAIL, tail_params={"now": now})
        raws = {(r["provider"], r["dedupe_key"]): r["envelope_raw"] for r in rows}
        written = {
            (r.provider, r.dedupe_key): Stored(
                id=r.id,
                is_new=r.repeat_count == 0,
                status=InboxStatus(r.status),
                envelope_raw=r.envelope_raw if r.envelope_raw is not None else raws[(r.provider, r.dedupe_key)],
                first_seen_at=r.first_seen_at.astimezone(UTC),  # the raw statement's: the session's zone
            )
            for r in returned
        }
    else:
        # SQLAlchemy's statement compiled once (cached), executed for every row: multi-row VALUES
        # ("insertmanyvalues"), RETURNING each.
        statement = (
            insert(session, table)
            .on_conflict_do_update(
                index_elements=["provider", "dedupe_key"],
                set_={"repeat_count": table.c.repeat_count + 1, "last_seen_at": now},
            )
            .returning(
                table.c.provider,
                table.c.dedupe_key,
                table.c.id,
                table.c.repeat_count,
                table.c.status,
                table.c.envelope_raw,
                table.c.first_seen_at,
            )
        )
        written = {
            (r.provider, r.dedupe_key): Stored(
                id=r.id,
                is_new=r.repeat_count == 0,
                status=InboxStatus(r.status),
                envelope_raw=r.envelope_raw,
                first_seen_at=r.first_seen_at,
            )
            for r in session.execute(statement, rows)
        }
    stored: list[Stored] = []
    for n, (envelope, raw, row) in enumerate(deliveries):
        key = (envelope.provider.value, row["dedupe_key"])
        if firsts[key] == n:
            stored.append(written[key])
        else:  # the same delivery twice in one call: the second is a repeat of the first
            stored.append(store_many(session, [(envelope, raw, row)], now=now)[0])
    return stored


#: ``store_many``'s upsert on PostgreSQL, after the rows: a repeat counts, and only a repeat's stored
#: raw body comes back (a new row's is the caller's own).
_STORE_TAIL = (
    "ON CONFLICT (provider, dedupe_key) DO UPDATE SET repeat_count = inbox.repeat_count + 1, "
    "last_seen_at = CAST(:now AS timestamptz) "
    "RETURNING provider, dedupe_key, id, repeat_count, status, "
    "CASE WHEN repeat_count > 0 THEN envelope_raw END AS envelope_raw, first_seen_at"
)


def mark(session: Session, inbox_id: int, status: InboxStatus, detail: str = "") -> None:
    """The delivery's work is over (or it never was work): it is no longer due."""
    mark_many(session, {inbox_id: detail}, status)


def _held(work: Work) -> tuple[ColumnElement[bool], ...]:
    """The row is still the caller's: received, and its lease the one the caller holds."""
    return (
        InboxDelivery.id == work.id,
        InboxDelivery.status == InboxStatus.RECEIVED,
        InboxDelivery.next_attempt_at == work.lease_until,
    )


def finish(session: Session, work: Work, status: InboxStatus, detail: str) -> bool:
    """End the work without settling anything (quarantined, given up, answered already), only while
    the caller still holds it: a worker that outlived its lease must not overwrite what the worker
    that took over did. False: the lease was lost."""
    done = session.execute(
        update(InboxDelivery)
        .where(*_held(work))
        .values(status=status, detail=detail, next_attempt_at=None, budget_slot=None, awaiting_registration=False)
        .returning(InboxDelivery.id)
    ).first()
    return done is not None


def take(session: Session, inbox_id: int, now: datetime, *, version: datetime | None = None) -> Work | None:
    """Hold a received delivery for ``LEASE`` if it is due (or ``version`` is the schedule the caller
    was sent for). None: finished, or held by another worker, or not due yet."""
    table = InboxDelivery.__table__
    allowed = [InboxDelivery.next_attempt_at <= now + EARLY]
    if version is not None:
        allowed.append(InboxDelivery.next_attempt_at == version)
    row = session.execute(
        update(InboxDelivery)
        .where(InboxDelivery.id == inbox_id, InboxDelivery.status == InboxStatus.RECEIVED, or_(*allowed))
        .values(next_attempt_at=now + LEASE)
        .returning(
            table.c.id,
            table.c.provider,
            table.c.envelope_raw,
            table.c.first_seen_at,
            table.c.opened_at,
            table.c.attempts,
            table.c.errors,
            table.c.deferrals,
            table.c.budget_slot,
            table.c.next_attempt_at,
        )
    ).first()
    if row is None:
        return None
    return Work(*row)


def schedule(
    session: Session,
    work: Work,
    at: datetime,
    detail: str,
    *,
    failed: bool = False,
    errored: bool = False,
    deferred: bool = False,
    budget_slot: str | None = None,
    awaiting_registration: bool | None = None,
) -> datetime | None:
    """Put the delivery off until ``at``, counting a failure or a deferral; only while the caller
    still holds it. Returns the new schedule (the version a wake-up message names), or None if
    the lease was lost meanwhile (another worker holds or finished it)."""
    row = session.execute(
        update(InboxDelivery)
        .where(*_held(work))
        .values(
            next_attempt_at=at,
            detail=detail,
            attempts=InboxDelivery.attempts + (1 if failed else 0),
            errors=InboxDelivery.errors + (1 if errored else 0),
            deferrals=InboxDelivery.deferrals + (1 if deferred else 0),
            budget_slot=budget_slot,
            awaiting_registration=(
                InboxDelivery.awaiting_registration if awaiting_registration is None else awaiting_registration
            ),
        )
        .returning(InboxDelivery.next_attempt_at)
    ).first()
    return row[0] if row is not None else None


def claim_due(session: Session, now: datetime, *, limit: int) -> list[tuple[int, datetime]]:
    """Due deliveries, oldest first, leased for the janitor's messages: (id, version) pairs."""
    lease = now + LEASE
    ids = lease_rows(
        session, InboxDelivery, InboxDelivery.next_attempt_at, until=lease, limit=limit, order=[InboxDelivery.id],
        where=[InboxDelivery.status == InboxStatus.RECEIVED, InboxDelivery.next_attempt_at <= now],
    )  # fmt: skip
    return [(inbox_id, lease) for inbox_id in ids]


def _unfinished_of(provider: str, reference: str) -> tuple[ColumnElement[bool], ...]:
    return (
        InboxDelivery.provider == provider,
        InboxDelivery.reference == reference,
        InboxDelivery.status == InboxStatus.RECEIVED,
    )


def wake(session: Session, provider: str, reference: str, now: datetime) -> list[tuple[int, datetime]]:
    """Deliveries of ``reference`` not authenticated yet for want of its registration, due now: (id,
    version). One a worker holds is woken too: that worker's put-off then finds its lease gone and
    the wake-up message takes the row, so a registration and a worker can never miss each other."""
    rows = session.execute(
        update(InboxDelivery)
        .where(*_unfinished_of(provider, reference), InboxDelivery.awaiting_registration.is_(True))
        .values(next_attempt_at=now)
        .returning(InboxDelivery.id)
    ).all()
    return [(row[0], now) for row in rows]


def coalesce(
    session: Session, provider: str, reference: str, *, asked_at: datetime, done: int, detail: str
) -> list[tuple[int, str | None]]:
    """Other deliveries of ``reference`` that arrived before the provider was asked at ``asked_at``:
    its answer covers them, so they are finished without a call of their own (one a worker holds
    at this moment still finishes its own work, idempotently). Not those still waiting to be
    authenticated. Returns the finished ones: (inbox id, the call-budget stage it held, to give back)."""
    answer = Answered(provider, reference, asked_at, done, detail)
    return [(inbox_id, slot) for inbox_id, slot, _ in coalesce_many(session, [answer])]


def _coalesce_one(session: Session, a: Answered) -> list[tuple[int, str | None]]:
    """``coalesce`` as one ORM statement (SQLite: ``coalesce_many``'s PostgreSQL statement unnests arrays)."""
    provider, reference, asked_at, done, detail = a.provider, a.reference, a.asked_at, a.done, a.detail
    rows = session.execute(
        update(InboxDelivery)
        .where(
            *_unfinished_of(provider, reference),
            InboxDelivery.id != done,
            InboxDelivery.first_seen_at <= asked_at,
            InboxDelivery.awaiting_registration.is_(False),
        )
        # budget_slot stays as it was (meaningless once finished) so that RETURNING reports it.
        .values(status=InboxStatus.PROCESSED, detail=detail, next_attempt_at=None)
        .returning(InboxDelivery.id, InboxDelivery.budget_slot)
    ).all()
    return [(row[0], row[1]) for row in rows]


def mark_many(session: Session, done: dict[int, str], status: InboxStatus = InboxStatus.PROCESSED) -> None:
    """``mark`` for many deliveries, one statement executed for each (inbox id -> detail)."""
    if not done:
        return
    bulk.update_rows(
        session,
        cast(Table, InboxDelivery.__table__),
        [{"id": inbox_id, "status": status, "detail": detail, "next_attempt_at": None, "budget_slot": None,
          "awaiting_registration": False} for inbox_id, detail in done.items()],
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Answered:
    """A provider answer about one payment, for ``coalesce_many``."""

    provider: str
    reference: str
    asked_at: datetime
    done: int  # the delivery the answer was asked for
    detail: str  # what the deliveries it finishes say


#: ``coalesce`` for many payments on PostgreSQL: one statement over arrays (compiled once).
_COALESCE_MANY = text("""
UPDATE inbox AS i
   SET status = 'processed', detail = a.detail, next_attempt_at = NULL
  FROM unnest(CAST(:provider AS text[]), CAST(:reference AS text[]), CAST(:asked_at AS timestamptz[]),
              CAST(:done AS bigint[]), CAST(:detail AS text[])) AS a (provider, reference, asked_at, done, detail)
 WHERE i.provider = a.provider AND i.reference = a.reference AND i.status = 'received'
   AND NOT i.awaiting_registration AND i.id <> a.done AND i.first_seen_at <= a.asked_at
RETURNING i.id, i.budget_slot, i.provider, i.reference
""")


def coalesce_many(session: Session, answers: list[Answered]) -> list[tuple[int, str | None, Answered]]:
    """``coalesce`` for many payments (each with its own moment it was asked), in one statement on
    PostgreSQL. Returns the deliveries finished: (inbox id, the call-budget stage it held, the answer)."""
    if not answers:
        return []
    if session.get_bind().dialect.name != "postgresql":
        return [(inbox_id, slot, a) for a in answers for inbox_id, slot in _coalesce_one(session, a)]
    by_key = {(a.provider, a.reference): a for a in answers}
    rows = session.execute(
        _COALESCE_MANY,
        {
            "provider": [a.provider for a in answers],
            "reference": [a.reference for a in answers],
            "asked_at": [a.asked_at for a in answers],
            "done": [a.done for a in answers],
            "detail": [a.detail for a in answers],
        },
    ).all()
    return [(row[0], row[1], by_key[(row[2], row[3])]) for row in rows]


def reopen(session: Session, inbox_id: int, now: datetime) -> bool:
    """Take a delivery that was given up on (``failed``) back for verification, once.

    Used when the same delivery arrives again (a provider redelivery, or an operator's
    dead-letter replay): the conditional UPDATE lets only one of concurrent repeats win.
    """
    reopened = session.execute(
        update(InboxDelivery)
        .where(InboxDelivery.id == inbox_id, InboxDelivery.status == InboxStatus.FAILED)
        .values(
            status=InboxStatus.RECEIVED,
            detail="reopened by a repeat delivery",
            next_attempt_at=now + LEASE,
            opened_at=now,
            attempts=0,
            errors=0,
            deferrals=0,
            budget_slot=None,
            awaiting_registration=False,
        )
        .returning(InboxDelivery.id)
    ).first()
    return reopened is not None


def authenticated(session: Session, inbox_id: int) -> None:
    """The delivery passed authentication (its registration came): from now on a provider answer
    about its payment may finish it (``coalesce``)."""
    session.execute(
        update(InboxDelivery)
        .where(InboxDelivery.id == inbox_id, InboxDelivery.awaiting_registration.is_(True))
        .values(awaiting_registration=False)
    )


def name_reference(session: Session, inbox_id: int, reference: str) -> None:
    """The delivery was tied to its payment by a provider-side token: note the payment's reference."""
    session.execute(update(InboxDelivery).where(InboxDelivery.id == inbox_id).values(reference=reference))
