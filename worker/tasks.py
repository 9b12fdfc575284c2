"""Celery tasks: thin wrappers around ``worker.pipeline``.

``payrecon.ingest_webhook`` and ``payrecon.register_payment`` are the public
contract (README, "The contract"): their names, queue and kwargs never change.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from celery import Task
from sqlalchemy.exc import InterfaceError, OperationalError

from schemas.messages import Provider
from schemas.producer import INGEST_TASK, REGISTER_TASK
from worker import metrics, pipeline, runtime
from worker.app import app

log = logging.getLogger(__name__)

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
    if task in ("ingest_webhook", "retry_delivery") and result.outcome is not pipeline.Disposition.RETRY:
        # Each delivery counts once, at its final outcome (a retry in progress is not one).
        metrics.DELIVERIES.labels(provider, result.outcome.value).inc()
    elif task == "register_payment":
        metrics.REGISTRATIONS.labels(_provider_of(payload), result.outcome.value).inc()
    return {"outcome": result.outcome.value, "reference": result.reference, "inbox_id": result.inbox_id}


#: Countdowns (seconds) of a message retried while PostgreSQL is unreachable: short, and as
#: many as it takes (an outage is a wait). Only input not yet in PostgreSQL waits on the broker.
DB_OUTAGE_DELAYS = (1, 2, 5, 10)
#: A delivery put off for at most this long gets a wake-up message; a longer wait is found by the
#: janitor's sweep (beat, every PAYRECON_RECHECK_INTERVAL). Broker countdowns stay this short, so
#: the visibility timeout can be short too (celeryconfig.VISIBILITY_TIMEOUT).
WAKE_UP_MAX = 10.0
#: Soft and hard time limits of the tasks on the webhook path: a verification's provider call
#: ends within about 35 s (20 s of retries plus one last read timeout and a token fetch), and a
#: message must be done well within the visibility timeout.
WEBHOOK_PATH_LIMITS = {"soft_time_limit": 40, "time_limit": 45}


def _guarded(task: Task, name: str, payload: Any, work: Callable[[], pipeline.Result]) -> pipeline.Result:
    """Run ``work``; never lose the message to an error.

    A database outage retries the message after a few seconds, for as long as the outage lasts:
    until its input is in PostgreSQL, the message is its only copy. Any other unexpected error
    (a bug) dead-letters the raw input with the error, so it can be replayed once fixed, and the
    worker goes on with the next message. (Work already stored is not lost either way: the
    delivery keeps its row and lease, and the janitor takes it up again.)
    """
    try:
        return work()
    except (OperationalError, InterfaceError) as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:200]
        log.warning("%s: database unavailable, retrying in a few seconds: %s", name, reason)
        raise task.retry(exc=exc, countdown=_outage_delay(task.request.retries), max_retries=None) from exc
    except Exception as exc:
        log.exception("%s: unexpected error; input dead-lettered", name)
        detail = f"{type(exc).__name__}: {exc}"[:2000]
        try:
            pipeline.dead_letter(runtime.get(), name, "internal_error", detail, payload)
        except Exception as inner:
            raise task.retry(exc=inner, countdown=_outage_delay(task.request.retries), max_retries=None) from inner
        return pipeline.Result(pipeline.Disposition.FAILED, detail)


def _outage_delay(retries: int) -> float:
    return DB_OUTAGE_DELAYS[min(retries, len(DB_OUTAGE_DELAYS) - 1)] * random.uniform(0.8, 1.2)  # noqa: S311


def _wake(result: pipeline.Result) -> None:
    """Wake-up messages for deliveries due soon; best effort (the janitor finds them anyway)."""
    due: list[tuple[int, Any, float]] = [(inbox_id, version, 0.0) for inbox_id, version in result.wake]
    if (
        result.outcome is pipeline.Disposition.RETRY
        and result.inbox_id is not None
        and result.due is not None
        and result.delay is not None
        and result.delay <= WAKE_UP_MAX
    ):
        due.append((result.inbox_id, result.due, result.delay))
    for inbox_id, version, countdown in due:
        try:
            retry_delivery.apply_async((inbox_id,), {"due": version.isoformat()}, countdown=countdown)
        except Exception as exc:  # the broker is away: the row is due in PostgreSQL all the same
            log.warning("delivery %s: wake-up not sent (%s); the janitor will take it", inbox_id, exc)


@app.task(name=INGEST_TASK, bind=True, Strategy="worker.batching:strategy", **WEBHOOK_PATH_LIMITS)
def ingest_webhook(self: Task, envelope: Any = None, **unexpected: Any) -> dict[str, Any]:
    """One raw provider delivery (``payrecon.webhook/1``)."""
    payload = envelope if not unexpected else {"envelope": envelope, **unexpected}
    result = _guarded(self, INGEST_TASK, payload, lambda: pipeline.ingest_webhook(runtime.get(), payload))
    _wake(result)
    return _report("ingest_webhook", result, payload)


def run_batch(envelopes: list[Any]) -> list[bool] | None:
    """A batch of ``ingest_webhook`` messages (``worker.batching``), in a pool thread: one entry per
    message, True once its work is done or its message was sent again (acknowledge it), False if it
    must go back to the queue (it could neither be stored nor sent again). None if the job failed."""
    try:
        rt = runtime.get()
        try:
            outcomes: list[pipeline.Result | pipeline.NotStored] = pipeline.ingest_batch(rt, envelopes)
        except Exception:  # a bug in the batch path: each delivery on its own path instead
            log.exception("ingest_webhook: a batch of %d failed; each delivery goes alone", len(envelopes))
            outcomes = [pipeline.ingest_alone(rt, envelope) for envelope in envelopes]
        metrics.BATCHES.observe(len(envelopes))
        dispositions = []
        for envelope, outcome in zip(envelopes, outcomes, strict=True):
            # Each message counts as the task run it is (Celery's task signals do not fire for a batch).
            if isinstance(outcome, pipeline.NotStored):
                sent = _send_again(envelope, outcome)
                metrics.TASKS.labels(INGEST_TASK, "retried" if sent else "failed").inc()
                dispositions.append(sent)
                continue
            _wake(outcome)
            _report("ingest_webhook", outcome, envelope)
            metrics.TASKS.labels(INGEST_TASK, "succeeded").inc()
            dispositions.append(True)
        return dispositions
    except Exception:
        log.exception("ingest_webhook: a batch of %d could not be processed; its messages go back", len(envelopes))
        return None


def _send_again(envelope: Any, not_stored: pipeline.NotStored) -> bool:
    """PostgreSQL was away before the delivery was stored: its message is sent again, due in a few
    seconds, as a retry (which takes the per-message path and its unbounded retries)."""
    reason = str(getattr(not_stored.cause, "orig", not_stored.cause)).strip().splitlines()[0][:200]
    log.warning("%s: database unavailable, retrying in a few seconds: %s", INGEST_TASK, reason)
    try:
        ingest_webhook.apply_async(kwargs={"envelope": envelope}, countdown=_outage_delay(0), retries=1)
    except Exception as exc:  # the broker is away too: the message goes back to the queue
        log.warning("%s: could not send the message again (%s); it goes back to the queue", INGEST_TASK, exc)
        return False
    return True


@app.task(name=REGISTER_TASK, bind=True, **WEBHOOK_PATH_LIMITS)
def register_payment(self: Task, payment: Any = None, **unexpected: Any) -> dict[str, Any]:
    """A payment the merchant app initiated (``payrecon.payment/1``)."""
    payload = payment if not unexpected else {"payment": payment, **unexpected}
    result = _guarded(self, REGISTER_TASK, payload, lambda: pipeline.register_payment(runtime.get(), payload))
    _wake(result)
    return _report("register_payment", result, payload)


@app.task(name="payrecon.retry_delivery", **WEBHOOK_PATH_LIMITS)
def retry_delivery(inbox_id: int, attempt: Any = None, deferrals: Any = None, due: str | None = None) -> dict[str, Any]:
    """Work on a stored delivery that is due: put off earlier (provider failure, call budget,
    awaiting its registration) or left by a worker that died. The row says what was done so far;
    ``due`` is the schedule this message was sent for. (``attempt`` and ``deferrals`` are what
    messages sent by earlier versions carry; the row counts them now.)"""
    from datetime import datetime

    version = datetime.fromisoformat(due) if due else None
    try:
        result = pipeline.retry_delivery(runtime.get(), inbox_id, version=version)
    except (OperationalError, InterfaceError) as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:200]
        log.warning("delivery %s: database unavailable; the janitor takes it up again: %s", inbox_id, reason)
        return {"outcome": pipeline.Disposition.RETRY.value, "reference": None, "inbox_id": inbox_id}
    _wake(result)
    return _report("retry_delivery", result)


@app.task(name="payrecon.verify_payment", **WEBHOOK_PATH_LIMITS)
def verify_payment(payment_id: int) -> dict[str, Any]:
    """Re-check one non-final payment with its provider (the janitor's unit of work).

    A deferral (budget) moved the payment's next check; the janitor finds it again then.
    """
    return _report("verify_payment", pipeline.verify_payment(runtime.get(), payment_id))


@app.task(name="payrecon.recheck_due", acks_late=False)
def recheck_due() -> int:
    """Beat, the janitor: payments due for a re-check and deliveries whose work is due (put off,
    or left by a worker that died), each leased and given one message. A message lost on the way
    costs only the lease: the row is due again when it ends."""
    rt = runtime.get()
    ids = pipeline.claim_due(rt)
    for payment_id in ids:  # published after the claim committed
        verify_payment.apply_async((payment_id,))
    deliveries = pipeline.claim_due_deliveries(rt)
    for inbox_id, version in deliveries:
        retry_delivery.apply_async((inbox_id,), {"due": version.isoformat()})
    return len(ids) + len(deliveries)


@app.task(name="payrecon.expire_subscriptions", acks_late=False)
def expire_subscriptions() -> int:
    """Beat: switch off subscriptions whose end has passed."""
    return pipeline.expire_subscriptions(runtime.get())


@app.task(name="payrecon.reconcile", acks_late=False, time_limit=3 * 3600, soft_time_limit=3 * 3600 - 60)
def reconcile(provider: str, day: str, trigger: str = "manual") -> int:
    """Reconcile one provider's business day (ISO date), store the run, and write its report files
    when ``PAYRECON_REPORTS_DIR`` is set (a failure to write them fails the task; the run is kept and
    ``payrecon report export`` writes them again)."""
    from datetime import date

    from worker.nightly import run_day as run
    from worker.nightly import write_reports

    rt = runtime.get()
    run_id = run(rt, provider, date.fromisoformat(day), trigger=trigger)
    write_reports(rt, run_id)
    return run_id


@app.task(name="payrecon.nightly_reconciliation", acks_late=False)
def nightly_reconciliation() -> int:
    """Beat, daily: yesterday for every provider, and the re-runs of earlier days (T+1, T+3)."""
    from datetime import datetime

    from worker.nightly import due_runs

    rt = runtime.get()
    today = datetime.now(rt.settings.timezone).date()
    jobs = due_runs(rt, today)
    for provider, day, trigger in jobs:
        reconcile.apply_async((provider, day.isoformat(), trigger))
    return len(jobs)


@app.task(name="payrecon.deliver_events", acks_late=False)
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


@app.task(name="payrecon.send_reminders", acks_late=False)
def send_reminders() -> int:
    """Beat: ``subscription.expiring`` N days before each end (PAYRECON_REMINDER_DAYS), once each."""
    from datetime import UTC, datetime

    from reconciliation.db import transaction
    from reconciliation.subscriptions import send_reminders as send

    rt = runtime.get()
    with transaction(rt.sessions) as session:
        return send(session, datetime.now(UTC), rt.settings.reminder_days)


@app.task(name="payrecon.purge", acks_late=False)
def purge() -> dict[str, int]:
    """Beat, daily when PAYRECON_RETENTION_DAYS is set: finished inbox rows, dead letters and
    providers' raw answers older than that go (``payrecon purge``; never unfinished work)."""
    from datetime import UTC, datetime, timedelta

    from reconciliation.retention import purge as run

    rt = runtime.get()
    if rt.settings.retention_days is None:
        return {}
    return run(rt.sessions, datetime.now(UTC) - timedelta(days=rt.settings.retention_days)).as_dict()
