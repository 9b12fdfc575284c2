"""Celery tasks: thin wrappers around ``worker.pipeline``.

``payrecon.ingest_webhook`` and ``payrecon.register_payment`` are the public
contract (design §1.1): their names, queue and kwargs never change.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from celery import Task
from sqlalchemy.exc import InterfaceError, OperationalError

from schemas.messages import Provider
from worker import metrics, pipeline, runtime
from worker.app import app

log = logging.getLogger(__name__)

#: Countdown before the n-th retry of a verification (seconds), jittered.
RETRY_DELAYS = (5, 15, 30, 60, 120, 300, 600, 900)


def retry_delay(attempt: int) -> float:
    base = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
    return base * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not security


PROVIDERS = frozenset(p.value for p in Provider)


def _provider_of(payload: Any) -> str:
    """The provider label of a message (bounded: anything unknown is "unknown")."""
    value = payload.get("provider") if isinstance(payload, dict) else None
    return value if value in PROVIDERS else "unknown"


def _report(task: str, result: pipeline.Result, payload: Any = None) -> dict[str, Any]:
    provider = result.provider or _provider_of(payload)
    log.info(
        "%s %s ref=%s %s",
        task,
        result.outcome.value,
        result.reference or "-",
        result.detail,
        extra={"provider": provider, "reference": result.reference, "outcome": result.outcome.value},
    )
    if task in ("ingest_webhook", "retry_delivery") and result.outcome is not pipeline.Outcome.RETRY:
        # Each delivery counts once, at its final outcome (a retry in progress is not one).
        metrics.DELIVERIES.labels(provider, result.outcome.value).inc()
    elif task == "register_payment":
        metrics.REGISTRATIONS.labels(_provider_of(payload), result.outcome.value).inc()
    return {"outcome": result.outcome.value, "reference": result.reference, "inbox_id": result.inbox_id}


#: Database unreachable: retry the whole message later, for a few hours, rather than lose it.
DB_OUTAGE_MAX_RETRIES = 30


def _guarded(task: Task, name: str, payload: Any, work: Callable[[], pipeline.Result]) -> pipeline.Result:
    """Run ``work``; never lose the message to an error.

    A database outage retries the message with backoff. Any other unexpected error
    (a bug) dead-letters the raw input with the error, so it can be replayed once fixed,
    and the worker goes on with the next message.
    """
    try:
        return work()
    except (OperationalError, InterfaceError) as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:200]
        log.warning("%s: database unavailable, retrying later: %s", name, reason)
        raise task.retry(
            exc=exc, countdown=retry_delay(task.request.retries), max_retries=DB_OUTAGE_MAX_RETRIES
        ) from exc
    except Exception as exc:
        log.exception("%s: unexpected error; input dead-lettered", name)
        detail = f"{type(exc).__name__}: {exc}"[:2000]
        try:
            pipeline.dead_letter(runtime.get(), name, "internal_error", detail, payload)
        except Exception as inner:
            raise task.retry(
                exc=inner, countdown=retry_delay(task.request.retries), max_retries=DB_OUTAGE_MAX_RETRIES
            ) from inner
        return pipeline.Result(pipeline.Outcome.FAILED, detail)


@app.task(name="payrecon.ingest_webhook", bind=True)
def ingest_webhook(self: Task, envelope: Any = None, **unexpected: Any) -> dict[str, Any]:
    """One raw provider delivery (``payrecon.webhook/1``)."""
    payload = envelope if not unexpected else {"envelope": envelope, **unexpected}
    result = _guarded(self, pipeline.INGEST_TASK, payload, lambda: pipeline.ingest_webhook(runtime.get(), payload))
    if result.outcome is pipeline.Outcome.RETRY and result.inbox_id is not None:
        if result.delay is not None:  # budget or awaiting registration: not an attempt
            retry_delivery.apply_async((result.inbox_id, 0), countdown=result.delay)
        else:
            retry_delivery.apply_async((result.inbox_id, 1), countdown=retry_delay(0))
    return _report("ingest_webhook", result, payload)


@app.task(name="payrecon.register_payment", bind=True)
def register_payment(self: Task, payment: Any = None, **unexpected: Any) -> dict[str, Any]:
    """A payment the merchant app initiated (``payrecon.payment/1``)."""
    payload = payment if not unexpected else {"payment": payment, **unexpected}
    result = _guarded(self, pipeline.REGISTER_TASK, payload, lambda: pipeline.register_payment(runtime.get(), payload))
    return _report("register_payment", result, payload)


#: Deferrals (budget, awaiting registration) of one delivery before it is dead-lettered anyway.
MAX_DEFERRALS = 2000


@app.task(name="payrecon.retry_delivery", bind=True, max_retries=None)
def retry_delivery(self: Task, inbox_id: int, attempt: int = 1, deferrals: int = 0) -> dict[str, Any]:
    """Verification of a stored delivery after a transient provider error or a deferral.

    ``attempt`` counts provider failures (up to PAYRECON_VERIFY_MAX_RETRIES); deferrals for an
    exhausted budget do not count as attempts, so a busy provider delays work, never drops it.
    """
    rt = runtime.get()
    final = attempt >= rt.settings.verify_max_retries or deferrals >= MAX_DEFERRALS
    result = pipeline.retry_delivery(rt, inbox_id, final_attempt=final)
    if result.outcome is pipeline.Outcome.RETRY:
        if result.delay is not None:
            retry_delivery.apply_async((inbox_id, attempt, deferrals + 1), countdown=result.delay)
        else:
            retry_delivery.apply_async((inbox_id, attempt + 1, deferrals), countdown=retry_delay(attempt))
    return _report("retry_delivery", result)


@app.task(name="payrecon.verify_payment")
def verify_payment(payment_id: int) -> dict[str, Any]:
    """Re-check one non-final payment with its provider (the janitor's unit of work).

    A deferral (budget) moved the payment's next check; the janitor finds it again then.
    """
    return _report("verify_payment", pipeline.verify_payment(runtime.get(), payment_id))


@app.task(name="payrecon.recheck_due")
def recheck_due() -> int:
    """Beat: find payments due for a re-check and queue one verification each."""
    ids = pipeline.claim_due(runtime.get())
    for payment_id in ids:  # published after the claim committed
        verify_payment.apply_async((payment_id,))
    return len(ids)


@app.task(name="payrecon.expire_subscriptions")
def expire_subscriptions() -> int:
    """Beat: switch off subscriptions whose end has passed."""
    return pipeline.expire_subscriptions(runtime.get())


@app.task(name="payrecon.reconcile", time_limit=3 * 3600, soft_time_limit=3 * 3600 - 60)
def reconcile(provider: str, day: str, trigger: str = "manual") -> int:
    """Reconcile one provider's business day (ISO date), store the run, and write its report files
    when ``PAYRECON_REPORTS_DIR`` is set (a failure to write them fails the task; the run is kept and
    ``payrecon report export`` writes them again)."""
    from datetime import date

    from worker.reconcile import reconcile as run
    from worker.reconcile import write_reports

    rt = runtime.get()
    run_id = run(rt, provider, date.fromisoformat(day), trigger=trigger)
    write_reports(rt, run_id)
    return run_id


@app.task(name="payrecon.nightly_reconciliation")
def nightly_reconciliation() -> int:
    """Beat, daily: yesterday for every provider, and the re-runs of earlier days (T+1, T+3)."""
    from datetime import datetime

    from worker.reconcile import due_runs

    rt = runtime.get()
    today = datetime.now(rt.settings.timezone).date()
    jobs = due_runs(rt, today)
    for provider, day, trigger in jobs:
        reconcile.apply_async((provider, day.isoformat(), trigger))
    return len(jobs)


@app.task(name="payrecon.deliver_events")
def deliver_events() -> dict[str, int]:
    """Beat, every few seconds: fan new outbox events out to the apps, send what is due."""
    from datetime import UTC, datetime

    from worker import events

    rt = runtime.get()
    if not rt.settings.apps:
        return {}
    now = datetime.now(UTC)
    events.fan_out(rt, now)
    return events.deliver_due(rt, now)


@app.task(name="payrecon.send_reminders")
def send_reminders() -> int:
    """Beat: ``subscription.expiring`` N days before each end (PAYRECON_REMINDER_DAYS), once each."""
    from datetime import UTC, datetime

    from reconciliation.db import transaction
    from reconciliation.subscriptions import send_reminders as send

    rt = runtime.get()
    with transaction(rt.sessions) as session:
        return send(session, datetime.now(UTC), rt.settings.reminder_days)
