"""Celery tasks: thin wrappers around ``worker.pipeline``, each declared with ``task`` on one base class
(``PayreconTask``: unit of work, retry rule, counts, report).

``payrecon.ingest_webhook`` and ``payrecon.register_payment`` are the public
contract (README, "The contract"): their names, queue and kwargs never change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, NoReturn, cast

from celery import Task
from celery.exceptions import Reject
from sqlalchemy.orm import Session

from reconciliation import retries
from reconciliation.db import DB_UNAVAILABLE, transaction
from schemas.messages import PROVIDER_NAMES
from schemas.producer import INGEST_TASK, KWARGS, REGISTER_TASK
from worker import metrics, pipeline, runtime
from worker.app import app

log = logging.getLogger(__name__)

#: Seconds before a message whose retry could not be sent (the broker away too) goes back to the queue.
SEND_FAILED_WAIT = 2.0

PROVIDERS = frozenset(PROVIDER_NAMES)


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


#: A delivery put off for at most this long gets a wake-up message; a longer wait is found by the
#: janitor's sweep (beat, every PAYRECON_RECHECK_INTERVAL). Broker countdowns stay this short, so
#: the visibility timeout can be short too (celeryconfig.VISIBILITY_TIMEOUT).
WAKE_UP_MAX = 10.0
#: Soft and hard time limits of the tasks on the webhook path: a verification's provider call
#: ends within about 35 s (20 s of retries plus one last read timeout and a token fetch), and a
#: message must be done well within the visibility timeout.
WEBHOOK_PATH_LIMITS = {"soft_time_limit": 40, "time_limit": 45}


# --------------------------------------------------------------------------- the task base class


class OnOutage(StrEnum):
    """What a task does when PostgreSQL is unreachable."""

    RETRY = "retry"  # the message is its input's only copy: sent again on retries.DB_OUTAGE, as long as it takes
    LEAVE = "leave"  # the work is a row: left as it is; when its lease ends the janitor sends it a message
    FAIL = "fail"  # a scheduled job: the task fails (logged, counted); its next run does the work


@dataclass(frozen=True, slots=True)
class RetryRule:
    """How a task meets failure: a database outage, a bug, a worker killed under it."""

    on_outage: OnOutage
    #: A bug (any other error): True dead-letters the input with the error and the task returns, so the
    #: worker goes on with the next message; False fails the task (its work stays where it is).
    dead_letter_bugs: bool
    #: Acknowledge the message once the task is done (True: a worker killed under it leaves it to another
    #: worker; every task so acknowledged is safe to run twice), or on receipt (long jobs, re-driven from
    #: the database by their next run).
    acks_late: bool


#: The contract's tasks: until their input is stored, the message is its only copy.
INPUT = RetryRule(OnOutage.RETRY, dead_letter_bugs=True, acks_late=True)
#: Work on a stored row (a put-off delivery, a payment's re-check): the row's lease is the retry, and
#: the pipeline dead-letters what keeps failing (PAYRECON_VERIFY_MAX_RETRIES).
STORED = RetryRule(OnOutage.LEAVE, dead_letter_bugs=False, acks_late=True)
#: Beat's jobs and the nightly run: acknowledged on receipt, done again by their next run.
SCHEDULED = RetryRule(OnOutage.FAIL, dead_letter_bugs=False, acks_late=False)


class PayreconTask(Task):  # type: ignore[misc]
    """The base of every payrecon task: its unit of work, its retry rule, its counts and its report.

    - Unit of work: ``self.runtime`` (the process's runtime) and ``self.transaction()`` (one transaction,
      committed when the block ends). Work on the webhook path keeps its own transactions
      (``worker.pipeline``: none is open while a provider is called), and every message a task sends
      goes out after the transaction that made it due committed.
    - Retry rule (``rule``, one of INPUT, STORED, SCHEDULED): what a database outage or a bug does.
    - Metrics: ``payrecon_tasks_total`` by state (succeeded, failed, retried: sent again, or left to the
      janitor by an outage), counted in Celery's own hooks, which a hard time limit fires too.
    - Report: a task on the webhook path returns a ``pipeline.Result``; the base class sends the
      wake-up messages of deliveries due soon, logs the outcome, counts the delivery or registration
      and returns its JSON form. (The task id is bound to every log line by ``worker.signals``, around
      Celery's own lines too.)
    """

    rule: RetryRule = SCHEDULED

    @property
    def runtime(self) -> runtime.Runtime:
        return runtime.get()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with transaction(self.runtime.sessions) as session:
            yield session

    def input_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A contract task's input, whole, as dead letters keep it: its one argument, or a mapping with
        every unexpected one beside it when there are others. None for other tasks."""
        name = KWARGS.get(self.name)
        if name is None:
            return None
        given = {name: args[0], **kwargs} if args else dict(kwargs)
        value = given.pop(name, None)
        return value if not given else {name: value, **given}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            result = super().__call__(*args, **kwargs)
        except DB_UNAVAILABLE as exc:
            result = self._outage(exc)
        except Exception as exc:
            if not self.rule.dead_letter_bugs:
                raise
            result = self._dead_letter(exc, self.input_of(args, kwargs))
        if not isinstance(result, pipeline.Result):
            return result
        _wake(result)
        return _report(self.name.removeprefix("payrecon."), result, self.input_of(args, kwargs))

    def _outage(self, exc: Exception) -> pipeline.Result:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:200]
        if self.rule.on_outage is OnOutage.RETRY:
            log.warning("%s: database unavailable, retrying in a few seconds: %s", self.name, reason)
            self._retry(exc)
        if self.rule.on_outage is OnOutage.LEAVE:
            log.warning(
                "%s%r: database unavailable; the janitor takes it up again: %s", self.name, self.request.args, reason
            )
            self.request.left_to_janitor = True
            return pipeline.Result(pipeline.Disposition.RETRY, f"database unavailable: {reason}")
        raise exc

    def _dead_letter(self, exc: Exception, payload: Any) -> pipeline.Result:
        """A bug: the raw input dead-lettered with the error, so it can be replayed once fixed. (Work
        already stored is not lost either way: the delivery keeps its row and lease.)"""
        log.exception("%s: unexpected error; input dead-lettered", self.name)
        detail = f"{type(exc).__name__}: {exc}"[:2000]
        try:
            pipeline.dead_letter(self.runtime, self.name, "internal_error", detail, payload)
        except Exception as inner:
            self._retry(inner)
        return pipeline.Result(pipeline.Disposition.FAILED, detail)

    def _retry(self, exc: Exception) -> NoReturn:
        """The message sent again after the outage's next delay. If even that cannot be sent (the broker
        is away or refuses writes too), Celery would reject the message without requeueing it, dropping an
        input that was never stored: it goes back to the queue instead, after a pause, and is counted as
        retried. (Should the broker refuse that too, it stays unacknowledged and comes back with the
        visibility timeout.)"""
        try:
            raise self.retry(exc=exc, countdown=retries.DB_OUTAGE.delay(self.request.retries)) from exc
        except Reject as rejected:
            if rejected.requeue:
                raise
            log.warning("%s: could not send it again either, back to the queue: %s", self.name, rejected.reason)
            time.sleep(SEND_FAILED_WAIT)
            metrics.TASKS.labels(self.name, "retried").inc()
            raise Reject(rejected.reason, requeue=True) from exc

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        state = "retried" if getattr(self.request, "left_to_janitor", False) else "succeeded"
        metrics.TASKS.labels(self.name, state).inc()

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        metrics.TASKS.labels(self.name, "failed").inc()

    def on_retry(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        metrics.TASKS.labels(self.name, "retried").inc()


def task(name: str, rule: RetryRule, **options: Any) -> Callable[[Callable[..., Any]], PayreconTask]:
    """Declare a payrecon task: bound (its body gets the task: ``self.runtime``, ``self.transaction()``),
    with its retry rule (which also says when its message is acknowledged and how often it may retry)."""
    retried = rule.on_outage is OnOutage.RETRY or rule.dead_letter_bugs
    return cast(
        Callable[[Callable[..., Any]], PayreconTask],
        app.task(
            name=name, base=PayreconTask, bind=True, rule=rule, acks_late=rule.acks_late,
            max_retries=None if retried else 0, **options,
        ),
    )  # fmt: skip


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


@task(INGEST_TASK, INPUT, Strategy="worker.batching:strategy", **WEBHOOK_PATH_LIMITS)
def ingest_webhook(self: PayreconTask, envelope: Any = None, **unexpected: Any) -> pipeline.Result:
    """One raw provider delivery (``payrecon.webhook/1``)."""
    return pipeline.ingest_webhook(self.runtime, self.input_of((envelope,), unexpected))


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
            # Each message counts as the task run it is (no task runs for a batch: PayreconTask's hooks do not).
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
        ingest_webhook.apply_async(kwargs={"envelope": envelope}, countdown=retries.DB_OUTAGE.delay(0), retries=1)
    except Exception as exc:  # the broker is away too: the message goes back to the queue
        log.warning("%s: could not send the message again (%s); it goes back to the queue", INGEST_TASK, exc)
        return False
    return True


@task(REGISTER_TASK, INPUT, **WEBHOOK_PATH_LIMITS)
def register_payment(self: PayreconTask, payment: Any = None, **unexpected: Any) -> pipeline.Result:
    """A payment the merchant app initiated (``payrecon.payment/1``)."""
    return pipeline.register_payment(self.runtime, self.input_of((payment,), unexpected))


@task("payrecon.retry_delivery", STORED, **WEBHOOK_PATH_LIMITS)
def retry_delivery(
    self: PayreconTask, inbox_id: int, attempt: Any = None, deferrals: Any = None, due: str | None = None
) -> pipeline.Result:
    """Work on a stored delivery that is due: put off earlier (provider failure, call budget,
    awaiting its registration) or left by a worker that died. The row says what was done so far;
    ``due`` is the schedule this message was sent for. (``attempt`` and ``deferrals`` are what
    messages sent by earlier versions carry; the row counts them now.)"""
    return pipeline.retry_delivery(self.runtime, inbox_id, version=datetime.fromisoformat(due) if due else None)


@task("payrecon.verify_payment", STORED, **WEBHOOK_PATH_LIMITS)
def verify_payment(self: PayreconTask, payment_id: int) -> pipeline.Result:
    """Re-check one non-final payment with its provider (the janitor's unit of work).

    A deferral (budget) moved the payment's next check; the janitor finds it again then.
    """
    return pipeline.verify_payment(self.runtime, payment_id)


@task("payrecon.recheck_due", SCHEDULED)
def recheck_due(self: PayreconTask) -> int:
    """Beat, the janitor: payments due for a re-check and deliveries whose work is due (put off,
    or left by a worker that died), each leased and given one message. A message lost on the way
    costs only the lease: the row is due again when it ends."""
    rt = self.runtime
    ids = pipeline.claim_due(rt)
    for payment_id in ids:  # published after the claim committed
        verify_payment.apply_async((payment_id,))
    deliveries = pipeline.claim_due_deliveries(rt)
    for inbox_id, version in deliveries:
        retry_delivery.apply_async((inbox_id,), {"due": version.isoformat()})
    return len(ids) + len(deliveries)


@task("payrecon.expire_subscriptions", SCHEDULED)
def expire_subscriptions(self: PayreconTask) -> int:
    """Beat: switch off subscriptions whose end has passed."""
    return pipeline.expire_subscriptions(self.runtime)


@task("payrecon.reconcile", SCHEDULED, time_limit=3 * 3600, soft_time_limit=3 * 3600 - 60)
def reconcile(self: PayreconTask, provider: str, day: str, trigger: str = "manual") -> int:
    """Reconcile one provider's business day (ISO date), store the run, and write its report files
    when ``PAYRECON_REPORTS_DIR`` is set (a failure to write them fails the task; the run is kept and
    ``payrecon report export`` writes them again)."""
    from worker.nightly import run_day as run
    from worker.nightly import write_reports

    rt = self.runtime
    run_id = run(rt, provider, date.fromisoformat(day), trigger=trigger)
    write_reports(rt, run_id)
    return run_id


@task("payrecon.nightly_reconciliation", SCHEDULED)
def nightly_reconciliation(self: PayreconTask) -> int:
    """Beat, daily: yesterday for every provider, the re-runs of earlier days (T+1, T+3), and the days whose runs a
    stopped process left running (closed as failed first)."""
    from worker.nightly import due_runs

    rt = self.runtime
    now = datetime.now(UTC)
    jobs = due_runs(rt, now.astimezone(rt.settings.timezone).date(), now=now)
    for provider, day, trigger in jobs:
        reconcile.apply_async((provider, day.isoformat(), trigger))
    return len(jobs)


@task("payrecon.deliver_events", SCHEDULED)
def deliver_events(self: PayreconTask) -> dict[str, int]:
    """Beat, every few seconds: fan new outbox events out to the apps, send what is due."""
    from worker import events

    rt = self.runtime
    if not rt.settings.apps:
        return {}
    now = datetime.now(UTC)
    events.fan_out(rt, now)
    return events.deliver_due(rt, now)


@task("payrecon.send_reminders", SCHEDULED)
def send_reminders(self: PayreconTask) -> int:
    """Beat: ``subscription.expiring`` N days before each end (PAYRECON_REMINDER_DAYS), once each."""
    from reconciliation.subscriptions import send_reminders as send

    with self.transaction() as session:
        return send(session, datetime.now(UTC), self.runtime.settings.reminder_days)


@task("payrecon.purge", SCHEDULED)
def purge(self: PayreconTask) -> dict[str, int]:
    """Beat, daily when PAYRECON_RETENTION_DAYS is set: finished inbox rows, dead letters and
    providers' raw answers older than that go (``payrecon purge``; never unfinished work)."""
    from reconciliation.retention import purge as run

    rt = self.runtime
    if rt.settings.retention_days is None:
        return {}
    return run(rt.sessions, datetime.now(UTC) - timedelta(days=rt.settings.retention_days)).as_dict()
