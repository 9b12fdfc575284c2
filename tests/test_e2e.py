"""End to end through a real Celery worker process on Redis, PostgreSQL and the sandbox."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from providers.sandbox.client import SandboxClient
from reconciliation.models import (
    DeadLetter,
    FlagKind,
    Heartbeat,
    InboxDelivery,
    InboxStatus,
    Payment,
    PaymentStatus,
    SubscriptionGrant,
)
from tests.conftest import ROOT, WorkerProcess, wait_for, worker_env
from tests.helpers import new_reference, registration
from worker.runtime import Runtime

pytestmark = pytest.mark.e2e


def send(producer: Any, task: str, **kwargs: Any) -> None:
    producer.send_task(task, kwargs=kwargs, queue="webhooks")


def status_of(rt: Runtime, reference: str) -> PaymentStatus | None:
    with rt.sessions() as session:
        return session.scalar(select(Payment.status).where(Payment.reference == reference))


def settled(rt: Runtime, reference: str, status: PaymentStatus = PaymentStatus.SUCCEEDED) -> bool:
    return status_of(rt, reference) is status


def grants(rt: Runtime) -> int:
    with rt.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(SubscriptionGrant)) or 0)


def test_paid_through_the_worker(e2e: Runtime, sandbox: SandboxClient, producer: Any) -> None:
    ref = new_reference()
    sandbox.create_cinetpay(ref, 15000)
    send(producer, "payrecon.register_payment", payment=registration(ref, amount=15000, periods=3, account="tech-3m"))
    wait_for(lambda: status_of(e2e, ref) is not None, what="registration")
    send(producer, "payrecon.ingest_webhook", envelope=sandbox.cinetpay_notification(ref))
    wait_for(lambda: settled(e2e, ref), what="settlement")
    with e2e.sessions() as session:
        grant = session.scalars(select(SubscriptionGrant)).one()
    assert grant.days == 90  # a 3-month purchase grants 90 days


def test_five_identical_deliveries_at_once_settle_once(e2e: Runtime, sandbox: SandboxClient, producer: Any) -> None:
    ref = new_reference()
    sandbox.create_cinetpay(ref, 5000)
    send(producer, "payrecon.register_payment", payment=registration(ref))
    wait_for(lambda: status_of(e2e, ref) is not None, what="registration")
    envelope = sandbox.cinetpay_notification(ref)
    for _ in range(5):
        send(producer, "payrecon.ingest_webhook", envelope=envelope)

    def counted() -> bool:
        with e2e.sessions() as session:
            row = session.scalars(select(InboxDelivery)).first()
            return row is not None and row.repeat_count == 4

    wait_for(counted, what="5 deliveries counted")
    wait_for(lambda: settled(e2e, ref), what="settlement")
    assert grants(e2e) == 1
    assert sandbox.get_cinetpay(ref)["check_count"] == 1


def test_forged_delivery_through_the_worker(e2e: Runtime, sandbox: SandboxClient, producer: Any) -> None:
    ref = new_reference()
    sandbox.create_cinetpay(ref, 5000)
    send(producer, "payrecon.register_payment", payment=registration(ref))
    send(producer, "payrecon.ingest_webhook", envelope=sandbox.cinetpay_notification(ref, forged=True))

    def quarantined() -> bool:
        with e2e.sessions() as session:
            return session.scalar(select(InboxDelivery.status)) is InboxStatus.FORGED

    wait_for(quarantined, what="quarantine")
    assert status_of(e2e, ref) is PaymentStatus.REGISTERED
    assert sandbox.get_cinetpay(ref)["check_count"] == 0


def test_webhook_before_registration_through_the_worker(e2e: Runtime, sandbox: SandboxClient, producer: Any) -> None:
    ref = new_reference()
    sandbox.create_cinetpay(ref, 5000)
    send(producer, "payrecon.ingest_webhook", envelope=sandbox.cinetpay_notification(ref))
    wait_for(lambda: settled(e2e, ref), what="orphan recorded")
    send(producer, "payrecon.register_payment", payment=registration(ref))

    def adopted() -> bool:
        with e2e.sessions() as session:
            payment = session.scalars(select(Payment).where(Payment.reference == ref)).one()
            return payment.settled

    wait_for(adopted, what="adoption")
    assert grants(e2e) == 1


def test_provider_errors_then_success_through_celery_retries(
    e2e: Runtime, sandbox: SandboxClient, producer: Any
) -> None:
    """Three 503s exhaust the in-call retries; the worker's delayed retry task then settles it."""
    ref = new_reference()
    sandbox.create_cinetpay(ref, 5000, faults=[{"status": 503}] * 3 + [{"status": 429, "retry_after": 0}])
    send(producer, "payrecon.register_payment", payment=registration(ref))
    wait_for(lambda: status_of(e2e, ref) is not None, what="registration")
    send(producer, "payrecon.ingest_webhook", envelope=sandbox.cinetpay_notification(ref))
    wait_for(lambda: settled(e2e, ref), timeout=30, what="settlement after retry")
    assert sandbox.get_cinetpay(ref)["check_count"] == 5


def test_malformed_envelope_through_the_worker_is_dead_lettered(e2e: Runtime, producer: Any) -> None:
    send(producer, "payrecon.ingest_webhook", envelope={"schema": "payrecon.webhook/1", "provider": "cinetpay"})
    send(producer, "payrecon.register_payment", payment={"schema": "payrecon.payment/1", "amount": "5000"})

    def letters() -> list[str]:
        with e2e.sessions() as session:
            return sorted(session.scalars(select(DeadLetter.reason)))

    assert wait_for(lambda: len(letters()) == 2 and letters()) == ["invalid_envelope", "invalid_registration"]


def test_message_written_to_redis_by_hand(e2e: Runtime, sandbox: SandboxClient, redis_url: str) -> None:
    """A producer with no Celery client: the documented protocol-v2 message, LPUSHed on 'webhooks'."""
    ref = new_reference()
    sandbox.create_cinetpay(ref, 5000)
    client = redis.Redis.from_url(redis_url)
    for task, kwargs in (
        ("payrecon.register_payment", {"payment": registration(ref)}),
        ("payrecon.ingest_webhook", {"envelope": sandbox.cinetpay_notification(ref)}),
    ):
        task_id = str(uuid.uuid4())
        body = base64.b64encode(
            json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()
        ).decode()
        message = {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": task,
                "id": task_id,
                "root_id": task_id,
                "parent_id": None,
                "group": None,
                "retries": 0,
                "eta": None,
                "expires": None,
            },
            "properties": {
                "correlation_id": task_id,
                "delivery_mode": 2,
                "priority": 0,
                "body_encoding": "base64",
                "delivery_info": {"exchange": "", "routing_key": "webhooks"},
                "delivery_tag": task_id,
            },
        }
        client.lpush("webhooks", json.dumps(message))
        if task == "payrecon.register_payment":
            wait_for(lambda: status_of(e2e, ref) is not None, what="hand-written registration")
    client.close()
    wait_for(lambda: settled(e2e, ref), what="settlement of a hand-written message")


def test_stacking_on_an_active_subscription(e2e: Runtime, sandbox: SandboxClient, producer: Any) -> None:
    refs = [new_reference(), new_reference()]
    for ref, periods in zip(refs, (1, 6), strict=True):
        sandbox.create_cinetpay(ref, 5000 * periods)
        send(
            producer,
            "payrecon.register_payment",
            payment=registration(ref, amount=5000 * periods, periods=periods, account="tech-stack"),
        )
        wait_for(lambda ref=ref: status_of(e2e, ref) is not None, what="registration")
        send(producer, "payrecon.ingest_webhook", envelope=sandbox.cinetpay_notification(ref))
        wait_for(lambda ref=ref: settled(e2e, ref), what="settlement")
    with e2e.sessions() as session:
        first, second = session.scalars(select(SubscriptionGrant).order_by(SubscriptionGrant.id)).all()
    assert second.starts_at == first.ends_at
    assert (second.ends_at - first.starts_at).days == 30 + 180


def test_beat_rechecks_a_pending_payment_without_a_second_callback(
    e2e: Runtime,
    sandbox: SandboxClient,
    producer: Any,
    pg_url: str,
    redis_url: str,
    sandbox_server: Any,
    tmp_path: Path,
) -> None:
    """Beat (a real process) finds the pending payment; the worker re-checks it; no second webhook."""
    ref = new_reference()
    sandbox.create_cinetpay(ref, 5000, fate="waiting_then_accepted", pending_checks=1)
    send(producer, "payrecon.register_payment", payment=registration(ref))
    wait_for(lambda: status_of(e2e, ref) is not None, what="registration")
    send(producer, "payrecon.ingest_webhook", envelope=sandbox.cinetpay_notification(ref))
    wait_for(lambda: settled(e2e, ref, PaymentStatus.PENDING), what="pending")
    env = {**os.environ, **worker_env(pg_url, redis_url, sandbox_server, PAYRECON_RECHECK_INTERVAL="0.5")}
    with (tmp_path / "beat.log").open("wb") as log:
        beat = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.app",
                "beat",
                "-s",
                str(tmp_path / "schedule"),
                "-l",
                "info",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: settled(e2e, ref), timeout=30, what="janitor settlement")
    finally:
        beat.terminate()
        beat.wait(timeout=20)
    assert grants(e2e) == 1
    assert sandbox.get_cinetpay(ref)["check_count"] >= 2
    with e2e.sessions() as session:  # beat's heartbeat, for `payrecon health`
        seen = session.scalar(select(Heartbeat.at).where(Heartbeat.name == "beat"))
    assert seen is not None and datetime.now(UTC) - seen < timedelta(minutes=1)


def test_worker_survives_bad_input_and_keeps_working(
    e2e: Runtime, sandbox: SandboxClient, producer: Any, worker_process: WorkerProcess
) -> None:
    for bad in (None, 42, "text", {"schema": "nope"}):
        send(producer, "payrecon.ingest_webhook", envelope=bad)
    ref = new_reference()
    sandbox.create_cinetpay(ref, 5000)
    send(producer, "payrecon.register_payment", payment=registration(ref))
    wait_for(lambda: status_of(e2e, ref) is not None, what="registration")
    send(producer, "payrecon.ingest_webhook", envelope=sandbox.cinetpay_notification(ref))
    wait_for(lambda: settled(e2e, ref), what="settlement after bad input")
    assert worker_process.proc is not None and worker_process.proc.poll() is None
    with e2e.sessions() as session:
        assert session.scalar(select(func.count()).select_from(DeadLetter)) == 4


def test_flags_visible_after_tampered_amount(e2e: Runtime, sandbox: SandboxClient, producer: Any) -> None:
    ref = new_reference()
    sandbox.create_cinetpay(ref, 5000, confirm_amount=1000)
    send(producer, "payrecon.register_payment", payment=registration(ref))
    wait_for(lambda: status_of(e2e, ref) is not None, what="registration")
    send(producer, "payrecon.ingest_webhook", envelope=sandbox.cinetpay_notification(ref))
    wait_for(lambda: settled(e2e, ref), what="verification")
    with e2e.sessions() as session:
        payment = session.scalars(select(Payment).where(Payment.reference == ref)).one()
        kinds = {f.kind for f in payment.flags}
    assert FlagKind.AMOUNT_MISMATCH in kinds and not payment.settled
    assert grants(e2e) == 0
