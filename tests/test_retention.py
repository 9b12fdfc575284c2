"""Retention: what finished long ago goes (archived if asked), unfinished work never does."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlalchemy import func, select, update

from providers.sandbox.client import SandboxClient
from reconciliation.models import DeadLetter, InboxDelivery, InboxStatus, Verification
from reconciliation.retention import purge
from tests.conftest import worker_env
from tests.helpers import new_reference, registration
from worker import pipeline
from worker.cli import main
from worker.runtime import Runtime


def backdate(rt: Runtime, days: int) -> None:
    """Everything in the database happened ``days`` ago."""
    then = datetime.now(UTC) - timedelta(days=days)
    with rt.sessions.begin() as session:
        session.execute(update(InboxDelivery).values(last_seen_at=then, first_seen_at=then))
        session.execute(update(DeadLetter).values(created_at=then))
        session.execute(update(Verification).values(created_at=then))


def counts(rt: Runtime) -> dict[str, Any]:
    with rt.sessions() as session:
        return {
            "inbox": dict(
                session.execute(select(InboxDelivery.status, func.count()).group_by(InboxDelivery.status)).all()
            ),
            "dead_letters": session.scalar(select(func.count()).select_from(DeadLetter)),
            "verifications": session.scalar(select(func.count()).select_from(Verification)),
            "responses": session.scalar(
                select(func.count()).select_from(Verification).where(Verification.raw_response.is_not(None))
            ),
        }


def old_and_new_traffic(rt: Runtime, sandbox: SandboxClient) -> None:
    """100 days ago: a settled payment, a delivery still waiting on the provider, a dead letter.
    Today: another settled payment."""
    settled, waiting, today = (new_reference() for _ in range(3))
    for ref, faults in ((settled, []), (waiting, [{"status": 503}] * 3)):
        pipeline.register_payment(rt, registration(ref))
        sandbox.create_cinetpay(ref, 5000, faults=faults)
        pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(ref))
    pipeline.ingest_webhook(rt, {"schema": "payrecon.webhook/1"})
    backdate(rt, 100)
    pipeline.register_payment(rt, registration(today))
    sandbox.create_cinetpay(today, 5000)
    pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(today))


def test_purge_removes_what_finished_before_the_cutoff_and_keeps_unfinished_work(
    rt: Runtime, sandbox: SandboxClient
) -> None:
    old_and_new_traffic(rt, sandbox)
    before = counts(rt)
    assert before["inbox"] == {InboxStatus.PROCESSED: 2, InboxStatus.RECEIVED: 1}
    archive = io.StringIO()
    purged = purge(rt.sessions, datetime.now(UTC) - timedelta(days=90), archive=archive, batch=1)
    assert purged.as_dict() == {"inbox": 1, "dead_letters": 1, "responses": 1}
    after = counts(rt)
    # The old settled delivery and the dead letter are gone; the waiting one is work and stays.
    assert after["inbox"] == {InboxStatus.PROCESSED: 1, InboxStatus.RECEIVED: 1}
    assert after["dead_letters"] == 0
    # The verification history stays whole, without the old raw answer and the link to the purged row.
    assert after["verifications"] == before["verifications"] and after["responses"] == before["responses"] - 1
    with rt.sessions() as session:
        linked = set(session.scalars(select(Verification.inbox_id)))
        kept = set(session.scalars(select(InboxDelivery.id)))
    assert None in linked and linked - {None} <= kept
    lines = [json.loads(line) for line in archive.getvalue().splitlines()]
    assert sorted(line["kind"] for line in lines) == ["dead_letter", "inbox"]
    assert all(line.get("envelope_raw") or line.get("payload") for line in lines)  # the raw input, archived


def test_payrecon_purge_command(
    rt: Runtime, sandbox: SandboxClient, pg_url: str, redis_url: str, sandbox_server: Any, tmp_path: Path
) -> None:
    old_and_new_traffic(rt, sandbox)
    archive = tmp_path / "archive.jsonl"
    env = worker_env(pg_url, redis_url, sandbox_server)
    result = CliRunner().invoke(main, ["purge", "--older-than", "90", "--archive", str(archive), "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert {k: v for k, v in json.loads(result.output).items() if k != "before"} == {
        "inbox": 1,
        "dead_letters": 1,
        "responses": 1,
    }
    assert len(archive.read_text().splitlines()) == 2
    again = CliRunner().invoke(main, ["purge", "--older-than", "90"], env=env)
    assert again.exit_code == 0 and "0 inbox rows, 0 dead letters" in again.output
    refused = CliRunner().invoke(main, ["purge", "--older-than", "0"], env=env)
    assert refused.exit_code == 2
