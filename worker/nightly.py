"""The nightly reconciliation, worker side: fetch the provider's view of a business day, then
classify, heal and store a run (``reconciliation.nightly.runs``).

Sources of truth, per provider, in order of preference:
- statement files finance staff imported (``payrecon statements import``): a day with one is
  reconciled from it alone, at every provider, even with no API client configured;
- a listing API (Wave's ``/v1/transactions``, fees included), when the client offers one;
- otherwise the status API, asked about every payment of the day that is not final and every
  success, within the provider's call budget and with bounded concurrency.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from providers.base import ProviderClient, ProviderError, StatementEntry, StatementSource, VerifiedStatus
from reconciliation import payments
from reconciliation.db import advisory_lock, transaction
from reconciliation.models import Payment
from reconciliation.nightly import runs
from reconciliation.progress import Progress, silent
from reconciliation.statements import files as statements
from worker.observability import timed_call
from worker.runtime import Runtime
from worker.settings import CREDENTIALS

log = logging.getLogger(__name__)

#: Expected provider fees, basis points of the gross amount (what the merchants' platforms assume:
#: Orange 2 %, MTN 2.5 %, Wave 1 %; CinetPay's depend on the contract). ``PAYRECON_FEES_<PROVIDER>``.
DEFAULT_FEES_BPS: dict[str, int | None] = {"cinetpay": None, "mtn_momo": 250, "orange_money": 200, "wave": 100}
STATUS_CHECK_THREADS = 8


def policy(rt: Runtime, provider: str) -> runs.Policy:
    profile = rt.profile(provider)
    settings = rt.settings
    return runs.Policy(
        tz=settings.timezone,
        sla=profile.settle_sla,
        tolerance=settings.recon_tolerance,
        fee_bps=settings.fees_bps.get(provider, DEFAULT_FEES_BPS.get(provider)),
        recheck=rt.context(provider).policy,
        sessions=settings.recon_sessions,
    )


class NothingToReconcile(ValueError):
    """The provider has neither an imported statement file for the day nor a configured API client."""


def run_day(rt: Runtime, provider: str, day: date, *, trigger: str = "manual", progress: Progress = silent) -> int:
    """Fetch, classify, heal; returns the run id. A run whose provider view is incomplete fails.

    ``NothingToReconcile`` (no run is opened) when the provider's side of the day has no source.
    ``progress`` hears the stages ``import`` (the provider's side: a statement file, listing days or
    status checks) then ``classify`` and ``fees`` (``runs.reconcile_stored``).
    """
    rules = policy(rt, provider)
    start, end = runs.business_window(day, rules.tz)
    fetched, failures = collect(rt, provider, day, start, end, progress=progress)
    run_id = runs.reconcile_stored(
        rt.sessions, provider, day, rules, trigger=trigger, failures=failures, progress=progress
    )
    log.info(
        "reconciliation of %s %s: run %d, %d provider lines, %d checks failed",
        provider, day, run_id, fetched, failures, extra={"provider": provider},
    )  # fmt: skip
    return run_id


def collect(
    rt: Runtime, provider: str, day: date, start: datetime, end: datetime, *, progress: Progress = silent
) -> tuple[int, int]:
    """Refresh the provider's lines for ``day``: (lines stored, status checks that failed).

    An imported statement file is the provider's own word for a day on which it lists payments, at every provider
    (Wave's included), whether or not its API client is configured: with one, neither the listing nor the
    status API is asked, and the lines they stored for the day before are dropped (they would be a
    second, differently keyed copy of the same transactions). A file's payout rows alone on a day (a payout paid the
    morning after) do not make it that day's word: they stay beside the day's other lines. Without a file: Wave's
    listing, else the status API; ``NothingToReconcile`` when the provider's client is not configured either.
    """
    with rt.sessions() as session:
        from_file = statements.lines_from_file(session, provider, day)
    if from_file:
        progress("import", 0, int(from_file))
        _replace_lines(rt, provider, day, ("listing", "status_api"), [])
        progress("import", int(from_file), int(from_file))
        return int(from_file), 0
    client = rt.client(provider)
    if client is None:
        raise NothingToReconcile(
            f"cannot reconcile {provider} for {day}: no statement file of that day was imported "
            f"(payrecon statements import --provider {provider} FILE.csv) and its API client is not "
            f"configured (set {', '.join(CREDENTIALS[provider])})"
        )
    if isinstance(client, StatementSource):
        return _listing(rt, client, day, start, end, progress=progress), 0
    return _status_checks(rt, client, day, start, end, progress=progress)


def _replace_lines(
    rt: Runtime, provider: str, day: date, sources: tuple[str, ...], lines: list[dict[str, Any]]
) -> None:
    with transaction(rt.sessions) as session:
        statements.replace_lines(session, provider, day, sources, lines)


def _listing(
    rt: Runtime, client: Any, day: date, start: datetime, end: datetime, *, progress: Progress = silent
) -> int:
    """The provider's own listing of the UTC days that overlap the business day (``progress``: in days)."""
    provider = client.name
    lines: list[dict[str, Any]] = []
    utc_day, last = start.date(), (end - timedelta(microseconds=1)).date()
    days = (last - utc_day).days + 1
    progress("import", 0, days)
    while utc_day <= last:
        entries: list[StatementEntry] = timed_call(provider, "listing", partial(_all, client, utc_day))
        for entry in entries:
            if not start <= entry.occurred_at < end:
                continue
            lines.append({
                "provider": provider, "business_date": day, "source": "listing", "import_id": None,
                "line_no": None, "provider_txn_id": entry.provider_transaction_id, "reference": entry.reference,
                "status": entry.outcome.value, "amount": entry.amount, "currency": entry.currency,
                "fee": entry.fee, "occurred_at": entry.occurred_at, "payout_id": entry.payout_id,
                "raw": entry.raw[:2000],
            })  # fmt: skip
        utc_day += timedelta(days=1)
        progress("import", days - (last - utc_day).days - 1, days)
    _replace_lines(rt, provider, day, ("listing",), lines)
    return len(lines)


def _all(client: StatementSource, day: date) -> list[StatementEntry]:
    return list(client.statement(day))


def _status_checks(
    rt: Runtime, client: ProviderClient, day: date, start: datetime, end: datetime, *, progress: Progress = silent
) -> tuple[int, int]:
    """Ask the status API about every payment of the day that is not final, and every success
    (``progress``: in payments checked)."""
    provider = client.name
    with rt.sessions() as session:
        todo = payments.to_confirm(session, provider, start, end)
    profile = rt.profile(provider)

    def check(payment: Payment) -> tuple[Payment, VerifiedStatus | None]:
        while (wait := rt.budget.take(f"api:{provider}", profile.api_rate, profile.api_burst)) > 0:
            time.sleep(min(wait, 5.0))  # a nightly job may wait for the budget; it never skips
        try:
            view = payments.registration_view(payment)
            return payment, timed_call(provider, "status", lambda: client.check(view))
        except ProviderError as exc:
            log.warning("reconciliation check of %s failed: %s", payment.reference, exc, extra={"provider": provider})
            return payment, None

    lines: list[dict[str, Any]] = []
    failures = 0
    progress("import", 0, len(todo))
    with ThreadPoolExecutor(STATUS_CHECK_THREADS) as pool:
        for done, (payment, answer) in enumerate(pool.map(check, todo), 1):
            progress("import", done, len(todo))
            if answer is None:
                failures += 1
                continue
            lines.append({
                "provider": provider, "business_date": day, "source": "status_api", "import_id": None,
                "line_no": None, "provider_txn_id": answer.provider_transaction_id, "reference": payment.reference,
                "status": answer.outcome.value,
                "amount": answer.amount if answer.amount is not None else (payment.amount or 0),
                "currency": answer.currency or payment.currency or "XOF", "fee": None,
                "occurred_at": answer.paid_at or payment.paid_at or payment.registered_at or payment.created_at,
                "payout_id": None, "raw": answer.raw[:2000],
            })  # fmt: skip
    _replace_lines(rt, provider, day, ("status_api",), lines)
    return len(lines), failures


def write_reports(rt: Runtime, run_id: int) -> list[Path]:
    """The run's report files and manifest into ``PAYRECON_REPORTS_DIR/<provider>/<day>/run<id>/``, and the
    day at a glance into ``PAYRECON_REPORTS_DIR/days/day_<day>.html`` and ``.xlsx``."""
    from reconciliation.aside import sweep
    from reconciliation.models import ReconRun
    from reconciliation.reports import glance, glance_render
    from reconciliation.reports import run as reports

    base = rt.settings.reports_dir
    if base is None:
        return []
    with rt.sessions() as session:
        run = session.get(ReconRun, run_id)
        if run is None:
            raise ValueError(f"no reconciliation run #{run_id}")
        day = base / run.provider / run.business_date.isoformat()
        for folder, depth in ((day, 1), (base / "days", 0)):  # what writers killed before they were done left aside
            sweep(folder, depth=depth)  # (aside.replacing): in the day's run folders, and beside the day pages
        out = day / f"run{run_id}"
        files = reports.export_all(session, run_id, out, language=rt.settings.language)
    # The day at a glance, every provider's latest run of the day: rewritten as each of them ends, one writer
    # at a time (a lock held while it reads and writes), so the last file written has the newest data.
    with transaction(rt.sessions) as session:
        advisory_lock(session, f"day-page:{run.business_date}")
        data = glance.day_glance(session, run.business_date, rt.settings.timezone)
        files += glance_render.write_files(data, base / "days", language=rt.settings.language)
    log.info("reports of run %d written to %s", run_id, out, extra={"provider": run.provider})
    return files


def due_runs(rt: Runtime, today: date, *, now: datetime | None = None) -> list[tuple[str, date, str]]:
    """What the nightly job runs: every configured provider's previous day, the re-runs, and (with ``now``) the days
    of the runs a stopped process left ``running``, closed as failed first (``runs.close_abandoned``): each day
    once."""
    jobs = [(provider, today - timedelta(days=1), "scheduled") for provider in rt.settings.providers]
    for lag in rt.settings.recon_reruns:
        jobs += [(provider, today - timedelta(days=1 + lag), "rerun") for provider in rt.settings.providers]
    if now is not None:
        planned = {(provider, day) for provider, day, _ in jobs}
        for provider, day in runs.close_abandoned(rt.sessions, now=now):
            log.warning(
                "a reconciliation of %s %s was left running by a process that stopped: closed as failed, run again",
                provider, day, extra={"provider": provider},
            )  # fmt: skip
            if (provider, day) not in planned:
                planned.add((provider, day))
                jobs.append((provider, day, "rerun"))
    return jobs
