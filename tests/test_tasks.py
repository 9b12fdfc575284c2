"""The Celery task wrappers: nothing is lost to an unexpected error."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from reconciliation.models import DeadLetter
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
    first = [tasks.retry_delay(0) for _ in range(50)]
    assert all(4.0 <= d <= 6.0 for d in first) and len(set(first)) > 1
    assert 720 <= tasks.retry_delay(99) <= 1080
