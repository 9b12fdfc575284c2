"""Reconciliation runs: one provider's business day, classified, healed, stored, re-runnable.

A run never edits a previous one: a re-run of the same day is a new run pointing at the
previous (``previous_run_id``), so finance can see what was restated. Lost webhooks found by
a run are healed through the same idempotent settlement as any verified answer, so the
customer gets the subscription and the payment is flagged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import CursorResult, Engine, and_, create_engine, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from providers.base import Outcome, VerifiedStatus
from reconciliation import facts, ledger, payments
from reconciliation.db import advisory_key, is_postgres, statement_settings, transaction
from reconciliation.dialect import insert
from reconciliation.models import (
    FeePosting,
    FlagKind,
    Journal,
    Payment,
    PaymentStatus,
    PayoutPosting,
    ReconClass,
    ReconItem,
    ReconPayout,
    ReconRun,
    StatementLine,
)
from reconciliation.nightly import cases
from reconciliation.nightly.matching import Window, classify, match_payouts
from reconciliation.progress import Progress, silent
from reconciliation.statements import files as statements

log = logging.getLogger(__name__)

FEE = payments.FEE  # journal kind: the providers' fees of a chunk of a run, Dr fees:<provider> / Cr clearing
PAYOUT = "payout"  # journal kind: a matched payout reached the bank, Dr bank:<provider> / Cr provider clearing


def business_window(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of a business day in ``tz``, in UTC (23 or 25 hours on a DST change)."""
    start = datetime.combine(day, time(0), tzinfo=tz)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Policy:
    tz: ZoneInfo
    sla: int  # seconds: a payment still not final this long after creation is past its SLA
    tolerance: int = 0
    fee_bps: int | None = None
    recheck: payments.RecheckPolicy | None = None
    sessions: int = 2  # PostgreSQL sessions that classify a day side by side (PAYRECON_RECON_SESSIONS)


def start(sessions: sessionmaker[Session], provider: str, day: date, policy: Policy, trigger: str) -> int:
    """Open a run (status ``running``) after the previous run of the same day, if any."""
    window = business_window(day, policy.tz)
    with transaction(sessions) as session:
        previous = session.scalar(
            select(func.max(ReconRun.id)).where(ReconRun.provider == provider, ReconRun.business_date == day)
        )
        run = ReconRun(
            provider=provider,
            business_date=day,
            timezone=str(policy.tz),
            window_start=window[0],
            window_end=window[1],
            trigger=trigger,
            status="running",
            started_at=datetime.now(UTC),
            counts={},
            previous_run_id=previous,
        )
        session.add(run)
        session.flush()
        return run.id


def classify_run(
    sessions: sessionmaker[Session],
    run_id: int,
    policy: Policy,
    *,
    now: datetime | None = None,
    parallel: int | None = None,
) -> int:
    """Classify the run's day (set-based, in ``parallel`` sessions on PostgreSQL, by default the
    policy's: the classifying join and the writing of its items are CPU-bound in one backend
    each); returns the number of items.

    Each share commits on its own: until ``finish`` the run is ``running``, and a run that fails
    part-way is closed ``failed`` (its items are then incomplete, and a re-run redoes the day).
    """
    with sessions() as session:
        run = session.get(ReconRun, run_id)
        assert run is not None  # noqa: S101
        day = run.business_date
        window = Window(
            provider=run.provider,
            start=run.window_start,
            end=run.window_end,
            sla_cutoff=(now or datetime.now(UTC)) - timedelta(seconds=policy.sla),
            tolerance=policy.tolerance,
            fee_bps=policy.fee_bps,
        )
        postgres = session.get_bind().dialect.name == "postgresql"

    parallel = policy.sessions if parallel is None else parallel
    if not (postgres and parallel > 1 and _SIDE_BY_SIDE.acquire(blocking=False)):
        with transaction(sessions) as session:
            if postgres:  # items and payouts from one view of the day
                session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            items = classify(session, run_id, window, day)
            match_payouts(session, run_id, window, day)
        return items
    try:
        return _classify_side_by_side(sessions, run_id, window, day, parallel)
    finally:
        _SIDE_BY_SIDE.release()


#: One run at a time per process classifies side by side: the nightly job queues a run per provider
#: and day at once, and a worker's threads running them all with extra sessions each would drain
#: its connection pool (the coordinators holding theirs while waiting for more). The others
#: classify in one session meanwhile: slower for a large day, never stuck.
_SIDE_BY_SIDE = threading.BoundedSemaphore(1)


def _classify_side_by_side(
    sessions: sessionmaker[Session], run_id: int, window: Window, day: date, parallel: int
) -> int:
    # Every share sees the same database: the snapshot of one coordinating transaction, exported to
    # the others (an import committing meanwhile must count for every reference or for none).
    with transaction(sessions) as coordinator:
        coordinator.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        snapshot = coordinator.scalar(text("SELECT pg_export_snapshot()"))

        def share(part: tuple[int, int]) -> int:
            with transaction(sessions) as session:
                session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
                session.execute(text("SET TRANSACTION SNAPSHOT :snapshot"), {"snapshot": snapshot})
                return classify(session, run_id, window, day, part)

        with ThreadPoolExecutor(parallel, thread_name_prefix="classify") as pool:
            items = sum(pool.map(share, [(k, parallel) for k in range(parallel)]))
        match_payouts(coordinator, run_id, window, day)
    return items


def heal(sessions: sessionmaker[Session], run_id: int, policy: Policy) -> int:
    """Settle what the provider has and we did not: the same idempotent path as a verified webhook."""
    with sessions() as session:
        missing = (
            select(ReconItem.reference)
            .where(ReconItem.run_id == run_id, ReconItem.cls == ReconClass.MISSING_IN_LEDGER.value)
            .scalar_subquery()
        )
        run = session.get(ReconRun, run_id)
        assert run is not None  # noqa: S101
        # When the provider says each was paid: one pass over the day's lines, not one per reference.
        paid_at = dict(
            session.execute(
                select(StatementLine.reference, func.max(StatementLine.occurred_at))
                .where(
                    StatementLine.provider == run.provider,
                    StatementLine.business_date == run.business_date,
                    StatementLine.status == "succeeded",
                    StatementLine.reference.in_(missing),
                    statements.visible(),
                )
                .group_by(StatementLine.reference)
            ).all()
        )
        items = session.execute(
            select(ReconItem.id, ReconItem.reference, ReconItem.provider_amount, ReconItem.provider_currency,
                   ReconItem.provider_txn_id, ReconRun.provider)
            .join(ReconRun, ReconRun.id == ReconItem.run_id)
            .where(ReconItem.run_id == run_id, ReconItem.cls == ReconClass.MISSING_IN_LEDGER.value)
        ).all()  # fmt: skip
    healed = 0
    for item_id, reference, amount, currency, txn_id, provider in items:
        if reference is None:
            continue
        occurred = paid_at.get(reference)
        with transaction(sessions) as session:
            answer = VerifiedStatus(
                reference=reference,
                outcome=Outcome.SUCCEEDED,
                provider_status="statement",
                provider_code=None,
                provider_message="reported paid by the provider's statement",
                amount=amount,
                currency=currency,
                provider_transaction_id=txn_id,
                paid_at=occurred,
            )
            recheck = policy.recheck or payments.RecheckPolicy(schedule=(3600,), give_up_after=policy.sla)
            ctx = payments.Context(now=datetime.now(UTC), tz=policy.tz, policy=recheck)
            payment = payments.lock_or_create_orphan(session, provider, reference, ctx)
            verification = payments.apply_answer(session, payment, answer, ctx, trigger="reconciliation")
            payments.flag(session, payment, FlagKind.HEALED, f"lost webhook healed by run {run_id}")
            _update_exception(
                session, run_id, item_id, healed=True, payment_id=payment.id, detail=f"healed: {verification.decision}"
            )
            healed += 1
    return healed


def apply_refunds(sessions: sessionmaker[Session], run_id: int, policy: Policy) -> int:
    """A success the provider's statement reports refunded: refund it (journals, access, the app told)."""
    with sessions() as session:
        items = session.execute(
            select(ReconItem.id, ReconItem.reference, ReconRun.provider)
            .join(ReconRun, ReconRun.id == ReconItem.run_id)
            .where(
                ReconItem.run_id == run_id,
                ReconItem.cls == ReconClass.STATUS_MISMATCH.value,
                ReconItem.internal_status == PaymentStatus.SUCCEEDED.value,
                ReconItem.provider_status == "refunded",
            )
        ).all()
    for item_id, reference, provider in items:
        if reference is None:
            continue
        with transaction(sessions) as session:
            payment = payments.find(session, provider, reference, lock=True)
            if payment is None or payment.status is not PaymentStatus.SUCCEEDED:
                continue
            recheck = policy.recheck or payments.RecheckPolicy(schedule=(3600,), give_up_after=policy.sla)
            ctx = payments.Context(now=datetime.now(UTC), tz=policy.tz, policy=recheck)
            decision = payments.refund(
                session, payment, ctx, reason=f"reported refunded (run {run_id})", by="reconciliation"
            )
            _update_exception(session, run_id, item_id, detail=decision)
    return len(items)


def exception_item(run_id: int, item_id: int) -> Any:
    """The condition that finds an exception of a run by its id: ``ix_recon_items_exception_id``, a partial index over
    the exceptions, serves it only when the query says it wants no matched item (PostgreSQL has no B-tree over every
    item's id: migration 0020)."""
    return and_(ReconItem.run_id == run_id, ReconItem.cls != ReconClass.MATCHED.value, ReconItem.id == item_id)


def _update_exception(session: Session, run_id: int, item_id: int, **values: Any) -> None:
    result = cast(
        "CursorResult[Any]", session.execute(update(ReconItem).where(exception_item(run_id, item_id)).values(**values))
    )
    if result.rowcount != 1:
        raise LookupError(f"no exception {item_id} in run {run_id}")


def flag_mismatches(sessions: sessionmaker[Session], run_id: int) -> int:
    """Flag ``amount_mismatch`` / ``currency_mismatch`` on each payment the statement reports paid for
    another amount or currency than ours (the confirmed one, else the registered one: what an Orange
    status answer never confirms), once per payment and kind; returns how many items were looked at.
    The app is told (``payment.flagged``); the money stays where it was posted, for a person to decide."""
    kinds = {ReconClass.AMOUNT_MISMATCH.value: FlagKind.AMOUNT_MISMATCH,
             ReconClass.CURRENCY_MISMATCH.value: FlagKind.CURRENCY_MISMATCH}  # fmt: skip
    with sessions() as session:
        run = session.get(ReconRun, run_id)
        assert run is not None  # noqa: S101
        day = run.business_date
        items = session.execute(
            select(ReconItem.payment_id, ReconItem.cls, ReconItem.internal_amount, ReconItem.internal_currency,
                   ReconItem.provider_amount, ReconItem.provider_currency)
            .where(ReconItem.run_id == run_id, ReconItem.cls.in_(list(kinds)), ReconItem.payment_id.is_not(None))
            .order_by(ReconItem.payment_id)
        ).all()  # fmt: skip
    if not items:
        return 0
    with transaction(sessions) as session:
        for payment_id, cls, ours, our_currency, theirs, their_currency in items:
            payment = session.get(Payment, payment_id)
            if payment is None:  # pragma: no cover - payments are never deleted
                continue
            payments.flag(
                session,
                payment,
                kinds[cls],
                f"the statement of {day} (run {run_id}) reports {theirs} {their_currency}, "
                f"we recorded {ours} {our_currency}",
            )
    return len(items)


#: On SQLite (the embedded demo): item ids read per transaction, their fees posted together.
FEE_CHUNK = 5_000
#: On PostgreSQL: item ids per transaction at most (see ``post_fees``; the last chunks of a run are smaller,
#: ``_fee_ranges``): a 1,000,000-payment day is seven such and eleven smaller. Each
#: holds the provider's fee lock (``ledger.hold_fees``) shared until it commits, so a refund of one
#: of the provider's payments waits for the chunks under way (under a second each: about 100,000 fee postings
#: and a journal), and so does a batch of webhooks that carries a refund (with its payments
#: locked); the other webhooks and settlements do not wait.
FEE_CHUNK_SQL = 100_000
#: On PostgreSQL: sessions posting chunks side by side (one run at a time per process, as for
#: ``classify_run``): each chunk is CPU-bound in its backend (the inserts, the guard).
FEE_SESSIONS = 2

#: The items whose fee is posted: what the provider reports it took on a payment it settled.
_FEE_DUE = or_(
    ReconItem.cls.in_([ReconClass.MATCHED.value, ReconClass.FEE_VARIANCE.value]),
    ReconItem.healed.is_(True),  # a lost webhook, settled now: the provider took its fee
)


def post_fees(sessions: sessionmaker[Session], run_id: int) -> int:
    """Post each matched payment's provider fee to ``fees:<provider>``, once per payment; returns how many.

    The fees of the matched items, the fee variances and the healed items, in the item's (provider's) currency,
    a chunk of items at a time: each chunk is one journal per currency (``kind`` ``fee``, no payment: Dr
    ``fees:<provider>`` / Cr provider clearing, the chunk's total) and a ``fee_postings`` row per payment (which
    journal carries its fee, how much, this run), whose key, the payment, makes each fee once however often and
    however concurrently the day is run: a fee the key refuses was posted before (by an earlier call, or by a
    concurrent one, whose commit the insert waits for) and is not in the chunk's journal. Only payments still
    settled as paid: a refund reversed the journals of its payment already, and a fee posted after it would stay
    unreversed. Each chunk is one transaction holding the provider's fee lock shared (``ledger.hold_fees``; a
    refund holds it alone: one committed before the chunk reads its payments drops out of it, one that waits
    reverses the chunk's fee of its payment, from its ``fee_postings`` row). The payments are not locked.

    On PostgreSQL a chunk (at most ``FEE_CHUNK_SQL`` item ids, ``_fee_ranges``) is one set-based statement
    (``_FEES_POST``): the postings, the journals and their entries, which the ledger's guard and the postings'
    guard check as sets; no row passes through Python, and ``FEE_SESSIONS`` sessions post chunks side by side.
    The postings are inserted plainly first, and with ``ON CONFLICT DO NOTHING`` only when the key refuses one
    (``_SKIP_POSTED``; a re-run of the day at once): the same fees either way, the common case cheaper. SQLite
    (the embedded demo) reads ``FEE_CHUNK`` items at a time and posts their fees with ``ledger.post``.
    """
    with sessions() as session:
        run = session.get(ReconRun, run_id)
        assert run is not None  # noqa: S101
        provider, rerun = run.provider, run.previous_run_id is not None
        postgres = is_postgres(session)
    if postgres:
        return _post_fees_set_based(sessions, run_id, provider, rerun=rerun)
    posted, after = 0, 0
    while True:
        with transaction(sessions) as session:
            chunk = session.execute(
                select(ReconItem.id, ReconItem.payment_id, ReconItem.fee, ReconItem.provider_currency)
                .where(
                    ReconItem.run_id == run_id,
                    ReconItem.id > after,
                    ReconItem.fee > 0,
                    ReconItem.payment_id.is_not(None),
                    ReconItem.provider_currency.is_not(None),
                    _FEE_DUE,
                )
                .order_by(ReconItem.id)
                .limit(FEE_CHUNK)
            ).all()  # fmt: skip
            if not chunk:
                return posted
            after = chunk[-1].id
            posted += _post_fee_chunk(session, run_id, provider, chunk)


def _post_fee_chunk(session: Session, run_id: int, provider: str, chunk: Sequence[Any]) -> int:
    """SQLite: the chunk's fees of payments still paid and not posted before, a journal per currency."""
    ids = [row.payment_id for row in chunk]
    paid = set(
        session.scalars(
            select(Payment.id)
            .where(Payment.id.in_(ids), Payment.status == PaymentStatus.SUCCEEDED)
            .order_by(Payment.id)
            .with_for_update()
        )
    )
    posted_before = set(session.scalars(select(FeePosting.payment_id).where(FeePosting.payment_id.in_(ids))))
    due: dict[str, dict[int, int]] = {}  # currency -> payment -> fee
    for row in chunk:
        if row.payment_id in paid and row.payment_id not in posted_before:
            posted_before.add(row.payment_id)  # one fee a payment, as the postings' key wants (the first item's)
            due.setdefault(row.provider_currency, {})[row.payment_id] = row.fee
    for currency, fees in sorted(due.items()):
        journal = ledger.post(
            session,
            ledger.transfer(ledger.fees(provider), ledger.clearing(provider), sum(fees.values()), currency),
            kind=FEE,
            memo=_fee_memo(provider, len(fees), run_id),
        )
        session.execute(
            insert(session, FeePosting),
            [{"payment_id": payment_id, "journal_id": journal.id, "run_id": run_id, "amount": fee,
              "currency": currency} for payment_id, fee in sorted(fees.items())],
        )  # fmt: skip
    return sum(len(fees) for fees in due.values())


def _fee_memo(provider: str, payments_: int | str, run_id: int) -> str:
    return f"{provider} fees of {payments_} payment(s) (run {run_id})"


# One chunk of a run's fees, on PostgreSQL, in one statement, after the fee lock (``post_fees``): the chunk's items
# whose payment is still paid (each payment looked up by its key: ``OFFSET 0`` keeps the planner from hashing the
# whole payments table, months of them, for each chunk), in payment id order, each a ``fee_postings`` row naming
# the journal of its currency (ids drawn from the sequence before, one a currency, ``:journal_ids``, the same
# order as ``:currencies``); then, from what the insert returned, a journal per currency with a posting, Dr fees /
# Cr clearing the currency's total, debit first as every journal of payrecon's. The journals, their
# entries and the postings are one statement: the ledger's guard and the postings' guard (migration 0025) check
# them at its end. The memo is ``_fee_memo``'s.
#
# The postings are inserted plainly first: a speculative insertion (``ON CONFLICT``) checks each key before its
# insert and writes a record more to the WAL for it (BENCHMARKS.md). A fee posted before (a chunk of an earlier
# call that committed, a concurrent call) breaks the key on its first row: the chunk goes back to its savepoint
# and inserts with ``_SKIP_POSTED``, the key refusing those fees, as described in ``post_fees``. A re-run of the
# day, which finds most of its fees posted, inserts with ``_SKIP_POSTED`` at once.
_POSTING_KEY = "pk_fee_postings"
_SKIP_POSTED = "\n        ON CONFLICT (payment_id) DO NOTHING"


def _fees_post(*, skip_posted: bool) -> str:
    """``_FEES_POST``: inserting every fee of the chunk (one the key refuses fails the statement), or skipping
    those posted before."""
    return _FEES_POST.format(on_conflict=_SKIP_POSTED if skip_posted else "")


_FEES_POST = """
WITH posted AS (
    INSERT INTO fee_postings (payment_id, journal_id, run_id, amount, currency)
    SELECT p.id, (CAST(:journal_ids AS bigint[]))[array_position(CAST(:currencies AS text[]), i.provider_currency)],
           :run_id, i.fee, i.provider_currency
      FROM recon_items i
      JOIN LATERAL (SELECT id FROM payments WHERE id = i.payment_id AND status = :succeeded OFFSET 0) AS p ON true
     WHERE i.run_id = :run_id AND i.id >= :low AND i.id < :high
       AND i.fee > 0 AND i.provider_currency IS NOT NULL
       AND (i.cls IN (:matched, :fee_variance) OR i.healed)
     ORDER BY p.id{on_conflict}
    RETURNING journal_id, amount, currency
),
totals AS (
    SELECT t.journal_id, t.currency, t.payments, t.amount, a.fees, a.clearing
      FROM (SELECT journal_id, currency, count(*) AS payments, sum(amount) AS amount
              FROM posted GROUP BY journal_id, currency) AS t
      JOIN unnest(CAST(:currencies AS text[]), CAST(:fee_accounts AS bigint[]), CAST(:clearing_accounts AS bigint[]))
           AS a (currency, fees, clearing) ON a.currency = t.currency
),
journals AS (
    INSERT INTO ledger_journals (id, kind, memo)
    SELECT journal_id, :kind, :memo_head || payments || :memo_tail FROM totals ORDER BY journal_id
),
entries AS (
    INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency)
    SELECT t.journal_id, CASE s.side WHEN 'debit' THEN t.fees ELSE t.clearing END, s.side, t.amount, t.currency
      FROM totals t CROSS JOIN (VALUES (1, 'debit'), (2, 'credit')) AS s (n, side)
     ORDER BY t.journal_id, s.n
)
SELECT count(*) FROM posted
"""


def _post_fees_set_based(sessions: sessionmaker[Session], run_id: int, provider: str, *, rerun: bool) -> int:
    """PostgreSQL: the run's fees, a chunk of item ids a transaction (``_fee_ranges``; see ``post_fees``). A re-run of
    a day (``rerun``) finds most of its fees posted by the run before it: its chunks skip the posted ones from the
    start, rather than each failing its plain insert first (and leaving an error in the server's log)."""
    due = (ReconItem.run_id == run_id, ReconItem.fee > 0, ReconItem.payment_id.is_not(None),
           ReconItem.provider_currency.is_not(None), _FEE_DUE)  # fmt: skip
    with transaction(sessions) as session:
        spans = session.execute(
            select(ReconItem.provider_currency, func.min(ReconItem.id), func.max(ReconItem.id))
            .where(*due)
            .group_by(ReconItem.provider_currency)
        ).all()
        if not spans:
            return 0
        currencies = sorted({currency for currency, _, _ in spans if currency is not None})
        accounts = ledger.account_ids(
            session, [(code(provider), c) for c in currencies for code in (ledger.fees, ledger.clearing)]
        )
    _summarize_items(sessions)
    low, last = min(span[1] for span in spans), max(span[2] for span in spans)
    memo_head, memo_tail = _fee_memo(provider, "\0", run_id).split("\0")  # around the count
    params: dict[str, Any] = {
        "run_id": run_id,
        "matched": ReconClass.MATCHED.value,
        "fee_variance": ReconClass.FEE_VARIANCE.value,
        "succeeded": PaymentStatus.SUCCEEDED.value,
        "kind": FEE,
        "memo_head": memo_head,
        "memo_tail": memo_tail,
        "currencies": currencies,
        "fee_accounts": [accounts[ledger.fees(provider), c] for c in currencies],
        "clearing_accounts": [accounts[ledger.clearing(provider), c] for c in currencies],
    }

    def chunk(ids: tuple[int, int]) -> int:
        start, end = ids
        with transaction(sessions) as session:
            ledger.hold_fees(session, provider, posting=True)
            session.execute(text("SET LOCAL work_mem = '64MB'"))  # the postings' and the totals' sorts in memory
            journal_ids = list(session.scalars(
                text("SELECT nextval('ledger_journals_id_seq') FROM generate_series(1, :n)"), {"n": len(currencies)}
            ))  # fmt: skip
            bound = params | {"low": start, "high": end, "journal_ids": journal_ids}
            # The chunk's items through the BRIN index (its pages, once summarized: ``_summarize_items``): the planner
            # knows nothing of the run just written and would read the whole table for each chunk, in parallel workers
            # that the other chunk's session needs the cores for (0.30 s a chunk of 98,400 against 0.19 s).
            with statement_settings(session, {"enable_seqscan": "off", "max_parallel_workers_per_gather": "0"}):
                try:
                    with session.begin_nested():  # the fees plainly inserted: none was posted before, the common case
                        return int(session.scalar(text(_fees_post(skip_posted=rerun)), bound) or 0)
                except IntegrityError as exc:
                    if getattr(getattr(exc.orig, "diag", None), "constraint_name", None) != _POSTING_KEY:
                        raise
                return int(session.scalar(text(_fees_post(skip_posted=True)), bound) or 0)

    ranges = _fee_ranges(low, last + 1, FEE_SESSIONS)
    if not (FEE_SESSIONS > 1 and len(ranges) > 1 and _SIDE_BY_SIDE.acquire(blocking=False)):
        return sum(chunk(ids) for ids in _fee_ranges(low, last + 1, 1))  # one session: no chunk smaller than need be
    try:  # the chunks lock no payment (the same payment's fee in two chunks: the postings' key makes one wait)
        with ThreadPoolExecutor(FEE_SESSIONS, thread_name_prefix="fees") as pool:
            return sum(pool.map(chunk, ranges))
    finally:
        _SIDE_BY_SIDE.release()


def _summarize_items(sessions: sessionmaker[Session]) -> None:
    """Summarize the items' new page ranges in their BRIN index (``recon_items_summarize``, migration 0022), so
    that each fee chunk reads the pages of its range of ids, not every page written since the last summary (a
    whole run, for each of its chunks). It waits for no vacuum: one that holds the table's lock past
    ``lock_timeout`` is left to summarize them (the chunks then read more, and are the same)."""
    with transaction(sessions) as session:
        try:
            with session.begin_nested():
                session.execute(text("SET LOCAL lock_timeout = '2s'"))
                session.execute(text("SELECT recon_items_summarize()"))
        except (OperationalError, ProgrammingError) as exc:
            # lock_not_available: a vacuum holds the table; insufficient_privilege: the role was granted before 0022
            # (``migrate --grant-to`` grants it). Either way the chunks read more pages, and post the same fees.
            if getattr(exc.orig, "pgcode", None) not in ("55P03", "42501"):
                raise
            log.warning("fees of a run: the items' index not summarized first (%s)", exc.orig)


def _fee_ranges(low: int, end: int, sessions: int) -> list[tuple[int, int]]:
    """The item ids ``low`` to before ``end`` in chunks, in order: ``FEE_CHUNK_SQL`` ids each while that is at most a
    ``2 * sessions``-th of what is left, then that share, down to a tenth of ``FEE_CHUNK_SQL``: each session takes the
    next chunk as it is free, and the last ones, the smallest, keep one from posting alone at the end (with ten equal
    chunks, one session posted the last second of a million's fees alone). One session: ``FEE_CHUNK_SQL`` each."""
    smallest = max(1, FEE_CHUNK_SQL // 10)
    ranges: list[tuple[int, int]] = []
    start = low
    while start < end:
        share = -(-(end - start) // (2 * sessions)) if sessions > 1 else FEE_CHUNK_SQL
        size = max(smallest, min(FEE_CHUNK_SQL, share))
        if end - start - size < smallest:  # no sliver of a chunk at the end
            size = end - start
        ranges.append((start, min(start + size, end)))
        start += size
    return ranges


#: Payouts posted per transaction by ``post_payouts``.
PAYOUT_CHUNK = 1_000


def post_payouts(sessions: sessionmaker[Session], run_id: int) -> int:
    """Post each payout the run found ``matched`` to ``bank:<provider>``, once per payout; returns how many.

    Dr ``bank:<provider>`` / Cr the provider's clearing account, for the amount paid out, in its
    currency: clearing then holds what the provider still owes us (payments, less fees, less
    payouts). Mismatched, pending and unexplained payouts are not posted: they are for finance to
    look at. Already posted payouts are skipped here; the ``payout_postings`` key makes each one
    once regardless (see ``_post_payout_chunk``).
    """
    with sessions() as session:
        rows = session.execute(
            select(ReconPayout.payout_id, ReconPayout.payout_amount, ReconPayout.currency, ReconRun.provider)
            .join(ReconRun, ReconRun.id == ReconPayout.run_id)
            .where(
                ReconPayout.run_id == run_id,
                ReconPayout.status == "matched",
                ReconPayout.payout_amount > 0,
                ReconPayout.currency.is_not(None),
                ~select(PayoutPosting.payout_id)
                .where(PayoutPosting.provider == ReconRun.provider, PayoutPosting.payout_id == ReconPayout.payout_id)
                .exists(),
            )
            .order_by(ReconPayout.payout_id)
        ).all()
    payouts = [
        _Payout(payout_id, amount, currency, provider)
        for payout_id, amount, currency, provider in rows
        if amount is not None and currency is not None
    ]
    posted = 0
    for start in range(0, len(payouts), PAYOUT_CHUNK):
        with transaction(sessions) as session:
            posted += _post_payout_chunk(session, run_id, payouts[start : start + PAYOUT_CHUNK])
    return posted


@dataclass(frozen=True, slots=True)
class _Payout:
    payout_id: str
    amount: int
    currency: str
    provider: str


def _post_payout_chunk(session: Session, run_id: int, payouts: Sequence[_Payout]) -> int:
    """The chunk's journals (one ``post_many``) and their ``payout_postings`` rows (one insert with
    ``ON CONFLICT DO NOTHING``), in one savepoint. Had a concurrent writer posted one of them since
    they were read, its key refused that row (after waiting for that writer to commit): the whole
    savepoint is rolled back, journals included, and the chunk is posted one payout at a time by
    ``post_payout``, which posts only those still unposted.
    """
    savepoint = session.begin_nested()
    journal_ids = ledger.post_many(
        session,
        [
            ledger.NewJournal(
                ledger.transfer(ledger.bank(p.provider), ledger.clearing(p.provider), p.amount, p.currency),
                kind=PAYOUT,
                memo=f"{p.provider} payout {p.payout_id} (run {run_id})",
            )
            for p in payouts
        ],
    )
    claimed = session.scalars(
        insert(session, PayoutPosting)
        .values([
            {"provider": p.provider, "payout_id": p.payout_id, "journal_id": journal_id, "run_id": run_id}
            for p, journal_id in zip(payouts, journal_ids, strict=True)
        ])
        .on_conflict_do_nothing(index_elements=["provider", "payout_id"])
        .returning(PayoutPosting.payout_id)
    ).all()  # fmt: skip
    if len(claimed) == len(payouts):
        savepoint.commit()
        return len(payouts)
    savepoint.rollback()
    return sum(
        post_payout(session, run_id, p.provider, p.payout_id, amount=p.amount, currency=p.currency) is not None
        for p in payouts
    )


def post_payout(
    session: Session, run_id: int, provider: str, payout_id: str, *, amount: int, currency: str
) -> Journal | None:
    """Post one payout (Dr ``bank:<provider>`` / Cr clearing) unless it is posted already; ``None`` then.

    Not check-then-act: the journal and its ``payout_postings`` row are written in one savepoint,
    the row with ``ON CONFLICT DO NOTHING`` on the primary key (provider, payout_id). A concurrent
    writer of the same payout waits on that key until the first commits, then inserts nothing, and
    its journal is rolled back with the savepoint.
    """
    savepoint = session.begin_nested()
    journal = ledger.post(
        session,
        ledger.transfer(ledger.bank(provider), ledger.clearing(provider), amount, currency),
        kind=PAYOUT,
        memo=f"{provider} payout {payout_id} (run {run_id})",
    )
    claimed = session.execute(
        insert(session, PayoutPosting)
        .values(provider=provider, payout_id=payout_id, journal_id=journal.id, run_id=run_id)
        .on_conflict_do_nothing(index_elements=["provider", "payout_id"])
    )
    if not getattr(claimed, "rowcount", 0):
        savepoint.rollback()
        if journal in session:
            session.expunge(journal)  # its row went with the savepoint
        return None
    savepoint.commit()
    return journal


def finish(sessions: sessionmaker[Session], run_id: int, *, error: str | None = None) -> dict[str, int]:
    """Store the counts per class and close the run; a run that succeeded brings its day's exception cases
    up to date in the same transaction (``cases.sync``). A run closed already (``close_abandoned`` took it for
    abandoned) stays as it is: its counts are returned, nothing is counted again."""
    with transaction(sessions) as session:
        provider = session.scalar(select(ReconRun.provider).where(ReconRun.id == run_id))
        assert provider is not None  # noqa: S101
        cases.lock_provider(session, provider)  # before the run's row: see cases.lock_provider
        run = session.get(ReconRun, run_id, with_for_update=True)
        assert run is not None  # noqa: S101
        if run.status != "running":  # closed already (``close_abandoned``): closed once, counted once
            log.warning(
                "run %d was closed already (%s): its own close changes nothing", run_id, run.error or run.status
            )
            return dict(run.counts)
        counts = dict(
            session.execute(
                select(ReconItem.cls, func.count()).where(ReconItem.run_id == run_id).group_by(ReconItem.cls)
            ).all()
        )
        run.counts = {cls.value: int(counts.get(cls.value, 0)) for cls in ReconClass}
        run.status = "failed" if error else "succeeded"
        run.error = error
        run.finished_at = datetime.now(UTC)
        if not error:  # its exceptions become (or update) the day's cases, with the run: both or neither
            session.flush()
            cases.sync(session, run_id, now=run.finished_at)
        facts.note(
            session,
            "recon_run",
            provider=run.provider,
            status=run.status,
            seconds=(run.finished_at - run.started_at).total_seconds(),
            counts=run.counts,
            finished=run.finished_at.timestamp(),
        )
        return run.counts


#: A run still ``running`` this long after it started may be abandoned: on PostgreSQL, it is when no process holds
#: its lock (``_alive``); on SQLite (the demo), its age alone says so.
ABANDONED_AFTER = timedelta(minutes=10)
ABANDONED_AFTER_SQLITE = timedelta(hours=4)


def _lock_key(run_id: int) -> int:
    return advisory_key(f"run:{int(run_id)}")


@contextmanager
def _alive(sessions: sessionmaker[Session], run_id: int) -> Iterator[None]:
    """While the block runs, the run's lock is held (PostgreSQL: a session-level advisory lock, on a connection of
    its own, not the pool's): whoever finds it free knows the process running the run stopped, however it stopped
    (the connection goes with the process). A run takes it the moment it is opened."""
    bind = sessions.kw.get("bind")
    if not isinstance(bind, Engine) or bind.dialect.name != "postgresql":
        yield
        return
    engine = create_engine(bind.url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _lock_key(run_id)})
            connection.commit()
            yield  # the connection's end releases the lock, whatever ends it
    finally:
        engine.dispose()


def close_abandoned(sessions: sessionmaker[Session], *, now: datetime) -> list[tuple[str, date]]:
    """Close as failed the runs a stopped process left ``running`` (a worker killed under it, PostgreSQL gone while
    it closed the run): on PostgreSQL those started ``ABANDONED_AFTER`` ago whose lock no process holds (``_alive``),
    on SQLite those started ``ABANDONED_AFTER_SQLITE`` ago. ``finish`` closes each once, if it is still running.
    Returns their (provider, day), to reconcile again."""
    with sessions() as session:
        postgres = is_postgres(session)
        since = now - (ABANDONED_AFTER if postgres else ABANDONED_AFTER_SQLITE)
        left = session.execute(
            select(ReconRun.id, ReconRun.provider, ReconRun.business_date)
            .where(ReconRun.status == "running", ReconRun.started_at < since)
            .order_by(ReconRun.id)
        ).all()
        abandoned = []
        for run_id, provider, day in left:
            if postgres:
                free = session.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": _lock_key(run_id)})
                if not free:
                    continue  # its process is working on it
                session.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _lock_key(run_id)})
            abandoned.append((run_id, provider, day))
    closed: list[tuple[str, date]] = []
    for run_id, provider, day in abandoned:
        finish(
            sessions,
            run_id,
            error="abandoned: the process running it stopped before it finished (killed, or PostgreSQL went away); "
            "its day is reconciled again",
        )
        closed.append((provider, day))
    return closed


def reconcile_stored(
    sessions: sessionmaker[Session],
    provider: str,
    day: date,
    policy: Policy,
    *,
    trigger: str = "manual",
    failures: int = 0,
    progress: Progress = silent,
) -> int:
    """Classify, heal and close a run over the statement lines already stored; returns the run id.

    ``failures``: status checks that got no answer while fetching; the run is kept (its items are
    useful) but marked failed, since references without an answer may show as false exceptions.
    ``progress`` hears two stages, in steps: ``classify`` (classify, heal, flag, refunds) and
    ``fees`` (fees, payouts).
    """
    run_id = start(sessions, provider, day, policy, trigger)
    working = False
    try:
        with _alive(sessions, run_id):
            working = True
            return _reconcile_run(sessions, run_id, policy, failures=failures, progress=progress)
    except Exception as exc:
        if not working:  # its lock not taken (no connection to spare, PostgreSQL gone): closed, not left running
            finish(sessions, run_id, error=f"its lock could not be taken: {type(exc).__name__}: {exc}"[:2000])
        raise


def _reconcile_run(
    sessions: sessionmaker[Session], run_id: int, policy: Policy, *, failures: int, progress: Progress
) -> int:
    """``reconcile_stored``'s work on the run opened, its lock held."""
    try:
        stages: tuple[tuple[str, tuple[Callable[[], object], ...]], ...] = (
            (
                "classify",
                (
                    partial(classify_run, sessions, run_id, policy),
                    partial(heal, sessions, run_id, policy),
                    partial(flag_mismatches, sessions, run_id),
                    partial(apply_refunds, sessions, run_id, policy),
                ),
            ),
            ("fees", (partial(post_fees, sessions, run_id), partial(post_payouts, sessions, run_id))),
        )
        for stage, steps in stages:
            progress(stage, 0, len(steps))
            for done, step in enumerate(steps, 1):
                step()
                progress(stage, done, len(steps))
    except Exception as exc:
        finish(sessions, run_id, error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    error = f"{failures} status check(s) got no answer: re-run when the provider answers" if failures else None
    try:
        finish(sessions, run_id, error=error)
    except Exception as exc:  # closing it (or its cases) failed: the run is failed, never left "running"
        finish(sessions, run_id, error=f"closing the run failed: {type(exc).__name__}: {exc}"[:2000])
        raise
    return run_id
