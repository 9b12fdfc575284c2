"""The Celery tasks and their base class: nothing is lost to an unexpected error or an outage, each task
meets failure by its retry rule, and each run is counted once."""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from billiard.einfo import ExceptionInfo
from celery import signals
from celery.app.trace import build_tracer
from celery.canvas import Signature
from celery.contrib.testing.mocks import TaskMessage
from celery.exceptions import Reject, WorkerLostError
from celery.worker.request import Request
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from reconciliation import retries
from reconciliation.models import DeadLetter
from reconciliation.statements.files import import_file
from tests.helpers import registration
from worker import pipeline, runtime, tasks
from worker.runtime import Runtime

NOWHERE = "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"  # nothing listens there


@pytest.fixture
def installed(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    monkeypatch.setattr(runtime, "_runtime", rt)
    return rt


def test_a_bug_dead_letters_the_raw_input_and_the_task_returns(
    installed: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(rt: Runtime, payload: Any) -> pipeline.Result:
        raise ZeroDivisionError("a bug in the pipeline")

    monkeypatch.setattr(pipeline, "ingest_webhook", broken)  # the only stand-in: a bug cannot be made real
    envelope = {"schema": "payrecon.webhook/1", "provider": "cinetpay", "body": "cpm_trans_id=T1"}
    result = tasks.ingest_webhook.apply(kwargs={"envelope": envelope}).get()
    assert result["outcome"] == "failed"
    with installed.sessions() as session:
        letter = session.scalars(select(DeadLetter)).one()
    assert (letter.task, letter.reason) == ("payrecon.ingest_webhook", "internal_error")
    assert "ZeroDivisionError: a bug in the pipeline" in letter.detail
    assert "cpm_trans_id=T1" in letter.payload


def test_unexpected_kwargs_are_kept_in_the_dead_letter(installed: Runtime) -> None:
    result = tasks.register_payment.apply(kwargs={"payment": {"schema": "payrecon.payment/1"}, "extra": 1}).get()
    assert result["outcome"] == "malformed"
    with installed.sessions() as session:
        letter = session.scalars(select(DeadLetter)).one()
    assert '"extra": 1' in letter.payload


def test_each_internal_task_lands_in_its_own_queue_only(redis_base: str) -> None:
    """Contract tasks on 'webhooks', retries and re-checks on 'verify', beat's jobs on 'maintenance',
    each once, with the queues bound as a consuming worker binds them."""
    import redis as redis_lib

    from worker.app import app

    redis_url = f"{redis_base}/15"  # no worker consumes there (the session's worker would)
    client = redis_lib.Redis.from_url(redis_url)
    queues = ("webhooks", "verify", "maintenance")
    client.delete(*queues)
    previous = app.conf.broker_url
    app.conf.broker_url = redis_url
    try:
        with app.connection_for_write() as conn:
            for queue in app.amqp.queues.values():  # bound as a consuming worker binds them
                queue(conn.default_channel).declare()
            tasks.verify_payment.apply_async((1,), connection=conn)
            tasks.recheck_due.apply_async(connection=conn)
            tasks.register_payment.apply_async(kwargs={"payment": {}}, connection=conn)
        depths = {q: client.llen(q) for q in queues}
    finally:
        app.conf.broker_url = previous
        client.delete(*queues)
        client.close()
    assert depths == {"webhooks": 1, "verify": 1, "maintenance": 1}


def test_a_queued_reconciliation_writes_its_reports_where_configured(
    installed: Runtime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """PAYRECON_REPORTS_DIR: the nightly runs leave finance their files, one folder per run; what an export of
    the day killed before it was done left aside goes."""
    sample = Path(__file__).resolve().parent.parent / "docs" / "statements" / "cinetpay.csv"
    with installed.sessions() as session, session.begin():
        import_file(session, "cinetpay", sample, business_tz=installed.settings.timezone)
    monkeypatch.setattr(installed, "settings", dataclasses.replace(installed.settings, reports_dir=tmp_path))
    killed = [  # by a killed export of another run of the day (no run 0: not this one's), and of a day page
        tmp_path / "cinetpay" / "2026-11-21" / "run0" / ".recon_cinetpay_2026-11-21_run0.json.0a1b2c3d.part",
        tmp_path / "days" / ".day_2026-11-19.xlsx.0a1b2c3d.part",
    ]
    for path in killed:
        path.parent.mkdir(parents=True)
        path.write_text('{"half": ')
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    run_id = tasks.reconcile.apply(args=("cinetpay", "2026-11-21", "scheduled")).get()
    assert not [path for path in killed if path.exists()]
    folder = tmp_path / "cinetpay" / "2026-11-21" / f"run{run_id}"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sorted(p.suffix for p in folder.iterdir()) == [".csv", ".csv", ".html", ".json", ".json", ".xlsx"]
    assert len(manifest["files"]) == 5
    # And the day at a glance, across the providers, rewritten as each provider's run of the day ends.
    assert sorted(p.name for p in (tmp_path / "days").iterdir()) == ["day_2026-11-21.html", "day_2026-11-21.xlsx"]
    assert "CinetPay" in (tmp_path / "days" / "day_2026-11-21.html").read_text()


# --------------------------------------------------------------------------- the base class's retry rules


@pytest.fixture
def database_down(installed: Runtime, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    """The installed runtime with PostgreSQL unreachable (a real connection refused)."""
    dead = create_engine(NOWHERE, pool_pre_ping=False)
    down = dataclasses.replace(installed, sessions=sessionmaker(dead, expire_on_commit=False))
    monkeypatch.setattr(runtime, "_runtime", down)
    yield down
    dead.dispose()


def runs(task: Any, state: str) -> float:
    return REGISTRY.get_sample_value("payrecon_tasks_total", {"task": task.name, "state": state}) or 0.0


def test_every_task_has_the_base_class_and_a_rule_that_fits_its_acknowledgement() -> None:
    declared = {name: t for name, t in tasks.app.tasks.items() if name.startswith("payrecon.")}
    assert len(declared) == 11 and all(isinstance(t, tasks.PayreconTask) for t in declared.values())
    rules = {name.removeprefix("payrecon."): t.rule for name, t in declared.items()}
    assert {n for n, r in rules.items() if r is tasks.INPUT} == {"ingest_webhook", "register_payment"}
    assert {n for n, r in rules.items() if r is tasks.STORED} == {"retry_delivery", "verify_payment"}
    for t in declared.values():
        assert t.acks_late is t.rule.acks_late
        # Only a task whose rule retries it may retry, and then for as long as the outage lasts.
        assert t.max_retries == (None if t.rule is tasks.INPUT else 0)


def test_an_input_task_retries_its_message_through_an_outage(
    installed: Runtime, database_down: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL away before the registration is stored: the message is sent again after a DB_OUTAGE delay,
    as often as it takes (more than Celery's default of 3 retries, which would drop it); the run after the
    outage stores it."""
    countdowns: list[float] = []
    tries = 6

    def outage_ends(request: Any = None, reason: Any = None, **_: Any) -> None:
        countdowns.append(reason.when)
        if len(countdowns) == tries:
            monkeypatch.setattr(runtime, "_runtime", installed)

    signals.task_retry.connect(outage_ends, weak=False)
    retried, succeeded = runs(tasks.register_payment, "retried"), runs(tasks.register_payment, "succeeded")
    try:
        result = tasks.register_payment.apply(kwargs={"payment": registration("TXN-OUTAGE-1")}).get()
    finally:
        signals.task_retry.disconnect(outage_ends)
    assert result["outcome"] == "created"
    delays = retries.DB_OUTAGE.delays
    bases = [delays[min(n, len(delays) - 1)] for n in range(tries)]  # the last delay repeats
    assert [b * 0.8 <= c <= b * 1.2 for b, c in zip(bases, countdowns, strict=True)] == [True] * tries
    assert runs(tasks.register_payment, "retried") - retried == tries
    assert runs(tasks.register_payment, "succeeded") - succeeded == 1
    with installed.sessions() as session:
        assert session.scalars(select(DeadLetter)).all() == []


def test_no_pooled_connection_free_in_time_is_an_outage_not_a_bug(
    installed: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every connection of the pool busy (a slow server) until the pool's timeout: the message is retried like
    in an outage, not dead-lettered as a bug."""
    busy = create_engine(installed.settings.database_url, pool_size=1, max_overflow=0, pool_timeout=0.1)
    held = busy.connect()  # the pool's only connection, taken
    monkeypatch.setattr(runtime, "_runtime", dataclasses.replace(installed, sessions=sessionmaker(busy)))
    retried: list[Any] = []

    def pool_free_again(request: Any = None, reason: Any = None, **_: Any) -> None:
        retried.append(reason)
        monkeypatch.setattr(runtime, "_runtime", installed)

    signals.task_retry.connect(pool_free_again, weak=False)
    try:
        result = tasks.register_payment.apply(kwargs={"payment": registration("TXN-POOL-1")}).get()
    finally:
        signals.task_retry.disconnect(pool_free_again)
        held.close()
        busy.dispose()
    assert result["outcome"] == "created" and len(retried) == 1
    assert "database unavailable, retrying" in caplog.text and "unexpected error" not in caplog.text
    with installed.sessions() as session:
        assert session.scalars(select(DeadLetter)).all() == []


def test_a_retry_the_broker_refuses_puts_the_message_back_not_away(
    database_down: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL and the broker away at once: the retry cannot be sent, and Celery's own answer would be to
    reject the message for good, losing an input never stored. It goes back to the queue instead, counted as
    retried, not failed."""
    monkeypatch.setattr(tasks, "SEND_FAILED_WAIT", 0.0)

    def broker_down(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("Error 111 connecting to redis:6379. Connection refused.")

    monkeypatch.setattr(Signature, "apply_async", broker_down)
    task = tasks.register_payment
    task_id, kwargs = str(uuid.uuid4()), {"payment": registration("TXN-OUTAGE-2")}
    retried, failed = runs(task, "retried"), runs(task, "failed")
    trace = build_tracer(task.name, task, eager=False, propagate=False, app=tasks.app)
    outcome = trace(task_id, (), kwargs, {"id": task_id, "retries": 0, "delivery_info": {}, "is_eager": False})
    rejected = getattr(outcome.retval.exception, "exc", outcome.retval.exception)  # as the pool hands it back
    assert isinstance(rejected, Reject) and rejected.requeue
    message = TaskMessage(task.name, id=task_id, kwargs=kwargs)
    request = Request(message, app=tasks.app, task=task, on_reject=message.reject_log_error)  # as the worker's
    request.on_failure(outcome.retval, return_ok=True)  # what the worker does with the pool's answer
    message.reject_log_error.assert_called_once()
    assert message.reject_log_error.call_args.args[-1] is True  # requeue
    assert not message.ack_log_error.called
    assert (runs(task, "retried") - retried, runs(task, "failed") - failed) == (1, 0)


def test_a_child_lost_under_a_scheduled_job_counts_as_failed() -> None:
    """A prefork child killed under a job acknowledged on receipt: Celery fails it in the main process, where
    the task's own hooks do not run; the failure is counted there."""
    task = tasks.expire_subscriptions
    assert task.acks_late is False
    before = runs(task, "failed")
    request = Request(TaskMessage(task.name, id=str(uuid.uuid4())), app=tasks.app, task=task)
    try:
        raise WorkerLostError("Worker exited prematurely: signal 9 (SIGKILL).")
    except WorkerLostError:
        request.on_failure(ExceptionInfo(), return_ok=False)
    assert runs(task, "failed") - before == 1


@pytest.mark.parametrize("name", ["retry_delivery", "verify_payment"])
def test_work_on_a_stored_row_is_left_to_the_janitor_in_an_outage(database_down: Runtime, name: str) -> None:
    task = getattr(tasks, name)
    before = runs(task, "retried")
    result = task.apply(args=(1,)).get()  # no exception: the row's lease brings it back
    assert result["outcome"] == "retry" and result["inbox_id"] is None
    assert runs(task, "retried") - before == 1


def test_a_scheduled_job_fails_in_an_outage(database_down: Runtime) -> None:
    before = runs(tasks.expire_subscriptions, "failed")
    outcome = tasks.expire_subscriptions.apply()
    assert outcome.failed() and isinstance(outcome.result, OperationalError)
    assert runs(tasks.expire_subscriptions, "failed") - before == 1


def test_a_bug_in_work_on_a_stored_row_fails_the_task_and_dead_letters_nothing(
    installed: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(rt: Runtime, payment_id: int) -> pipeline.Result:
        raise ZeroDivisionError("a bug in the pipeline")

    monkeypatch.setattr(pipeline, "verify_payment", broken)  # the only stand-in: a bug cannot be made real
    before = runs(tasks.verify_payment, "failed")
    outcome = tasks.verify_payment.apply(args=(1,))
    assert outcome.failed() and isinstance(outcome.result, ZeroDivisionError)
    assert runs(tasks.verify_payment, "failed") - before == 1
    with installed.sessions() as session:
        assert session.scalars(select(DeadLetter)).all() == []
