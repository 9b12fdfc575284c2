"""The Celery task wrappers: nothing is lost to an unexpected error."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from reconciliation.models import DeadLetter
from reconciliation.statements import import_file
from worker import pipeline, runtime, tasks
from worker.runtime import Runtime


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


def test_retry_delay_grows_and_is_jittered() -> None:
    first = [pipeline.retry_delay(0) for _ in range(50)]
    assert all(4.0 <= d <= 6.0 for d in first) and len(set(first)) > 1
    assert 720 <= pipeline.retry_delay(99) <= 1080


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
    """PAYRECON_REPORTS_DIR: the nightly runs leave finance their files, one folder per run."""
    sample = Path(__file__).resolve().parent.parent / "docs" / "statements" / "cinetpay.csv"
    with installed.sessions() as session, session.begin():
        import_file(session, "cinetpay", sample, business_tz=installed.settings.timezone)
    monkeypatch.setattr(installed, "settings", dataclasses.replace(installed.settings, reports_dir=tmp_path))
    run_id = tasks.reconcile.apply(args=("cinetpay", "2026-11-21", "scheduled")).get()
    folder = tmp_path / "cinetpay" / "2026-11-21" / f"run{run_id}"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sorted(p.suffix for p in folder.iterdir()) == [".csv", ".csv", ".html", ".json", ".json", ".xlsx"]
    assert len(manifest["files"]) == 5
    # And the day at a glance, across the providers, rewritten as each provider's run of the day ends.
    assert sorted(p.name for p in (tmp_path / "days").iterdir()) == ["day_2026-11-21.html", "day_2026-11-21.xlsx"]
    assert "CinetPay" in (tmp_path / "days" / "day_2026-11-21.html").read_text()
