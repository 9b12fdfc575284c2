"""Metrics and logs of a real worker: a prefork pool whose children are recycled, scraped over
HTTP, parsed as Prometheus' exposition format; and every log line of the run checked for secrets
and phone numbers."""

from __future__ import annotations

import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from providers.sandbox.client import SandboxClient
from providers.sandbox.server import SandboxServer
from reconciliation.models import Payment, PaymentStatus
from tests.conftest import WorkerProcess, wait_for, worker_env
from tests.helpers import new_reference, registration
from worker.logs import JsonFormatter, Redactor, mask_msisdn
from worker.runtime import Runtime

pytestmark = pytest.mark.e2e

PHONE = "+2250701020304"  # the payer's number in every CinetPay notification of this run
METRICS_REDIS_DB = 15  # apart from the session worker's queues


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prefork:
    def __init__(self, proc: WorkerProcess, port: int, multiproc: Path, producer: Celery) -> None:
        self.proc, self.port, self.multiproc, self.producer = proc, port, multiproc, producer

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10).text
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples


@pytest.fixture
def prefork(
    e2e: Runtime, pg_url: str, sandbox_server: SandboxServer, tmp_path: Path, redis_base: str
) -> Iterator[Prefork]:
    broker = f"{redis_base}/{METRICS_REDIS_DB}"
    client = redis.Redis.from_url(broker)
    client.flushdb()
    port = free_port()
    multiproc = tmp_path / "prom"
    env = worker_env(pg_url, broker, sandbox_server, PROMETHEUS_MULTIPROC_DIR=str(multiproc))
    env.pop("PAYRECON_METRICS_PORT")
    argv = [sys.executable, "-m", "worker.cli", "worker", "-c", "2", "--metrics-port", str(port), "-l", "info",
            "--pool", "prefork", "--max-tasks-per-child", "4"]  # fmt: skip
    proc = WorkerProcess(env, tmp_path / "worker.log", argv)
    proc.start()
    producer = Celery("metrics-test", broker=broker)
    producer.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)
    yield Prefork(proc, port, multiproc, producer)
    producer.close()
    proc.stop()
    client.flushdb()
    client.close()


def run_batch(prefork: Prefork, rt: Runtime, sandbox: SandboxClient, paid: int, refused: int) -> None:
    refs = []
    for i in range(paid + refused):
        ref = new_reference()
        refs.append(ref)
        sandbox.create_cinetpay(ref, 5000, fate="accepted" if i < paid else "refused", phone=PHONE)
        prefork.producer.send_task("payrecon.register_payment", kwargs={"payment": registration(ref)}, queue="webhooks")

    def registered() -> bool:
        with rt.sessions() as session:
            return session.scalar(select(func.count()).select_from(Payment).where(Payment.reference.in_(refs))) == len(
                refs
            )

    wait_for(registered, timeout=30, what="registrations")
    for ref in refs:
        envelope = sandbox.cinetpay_notification(ref)
        prefork.producer.send_task("payrecon.ingest_webhook", kwargs={"envelope": envelope}, queue="webhooks")
    prefork.producer.send_task("payrecon.ingest_webhook", kwargs={"envelope": envelope}, queue="webhooks")  # a repeat

    def final() -> bool:
        with rt.sessions() as session:
            statuses = session.scalars(select(Payment.status).where(Payment.reference.in_(refs))).all()
        return all(s in (PaymentStatus.SUCCEEDED, PaymentStatus.FAILED) for s in statuses)

    wait_for(final, timeout=30, what="settlement")


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_add_up_across_recycled_children(prefork: Prefork, e2e: Runtime, sandbox: SandboxClient) -> None:
    run_batch(prefork, e2e, sandbox, paid=7, refused=3)
    # A body that quotes the payer's number in its error: a log line that must come out masked.
    bad = {
        **sandbox.cinetpay_notification(_any_ref(sandbox)),
        "body": f"cpm_trans_id=X&cpm_currency=XOF&cpm_amount={PHONE}.5",  # quoted in the error
    }
    prefork.producer.send_task("payrecon.ingest_webhook", kwargs={"envelope": bad}, queue="webhooks")

    def scraped_first() -> dict[Any, float] | None:
        samples = prefork.scrape()
        # The database gauges are cached for a few seconds by the collector: wait for them too.
        counted = value(samples, "payrecon_deliveries_total", provider="cinetpay", outcome="malformed")
        return samples if counted and value(samples, "payrecon_dead_letters", reason="malformed_body") else None

    first = wait_for(scraped_first, timeout=20, what="first scrape")
    succeeded = value(first, "payrecon_payments_final_total", provider="cinetpay", status="succeeded")
    failed = value(first, "payrecon_payments_final_total", provider="cinetpay", status="failed")
    assert (succeeded, failed) == (7, 3)
    assert succeeded / (succeeded + failed) == pytest.approx(0.7)  # the success rate
    assert value(first, "payrecon_deliveries_total", provider="cinetpay", outcome="accepted") == 10
    assert value(first, "payrecon_deliveries_total", provider="cinetpay", outcome="duplicate") == 1
    assert value(first, "payrecon_registrations_total", provider="cinetpay", outcome="created") == 10
    assert value(first, "payrecon_provider_calls_total", provider="cinetpay", operation="status", outcome="ok") == 10
    assert value(first, "payrecon_provider_call_seconds_count", provider="cinetpay", operation="status") == 10
    assert value(first, "payrecon_time_to_final_seconds_count", provider="cinetpay", status="succeeded") == 7
    assert value(first, "payrecon_subscription_grants_total", product="depannage") == 7
    assert value(first, "payrecon_pending_payments", provider="cinetpay") == 0
    assert value(first, "payrecon_dead_letters", reason="malformed_body") == 1
    assert value(first, "payrecon_waiting_deliveries", provider="cinetpay") == 0  # every delivery finished
    assert value(first, "payrecon_delivery_overdue_seconds", provider="cinetpay") == 0
    assert ("payrecon_queue_depth", (("queue", "webhooks"),)) in first

    run_batch(prefork, e2e, sandbox, paid=5, refused=5)

    def scraped_second() -> dict[Any, float] | None:
        samples = prefork.scrape()
        done = value(samples, "payrecon_deliveries_total", provider="cinetpay", outcome="duplicate") == 2
        return samples if done else None

    second = wait_for(scraped_second, timeout=20, what="second scrape")
    assert value(second, "payrecon_payments_final_total", provider="cinetpay", status="succeeded") == 12
    assert value(second, "payrecon_payments_final_total", provider="cinetpay", status="failed") == 8
    assert value(second, "payrecon_deliveries_total", provider="cinetpay", outcome="accepted") == 20
    # 2 children x 4 tasks each: the pool recycled children, whose counts are kept.
    pids = {path.stem.rsplit("_", 1)[-1] for path in prefork.multiproc.glob("counter_*.db")}
    assert len(pids) > 2

    log = prefork.proc.log()
    assert '"task_id"' in log and '"level"' in log  # structured lines
    for secret in sandbox_worker_secrets(prefork).values():
        assert secret not in log, "a secret reached the logs"
    assert PHONE not in log and PHONE[1:] not in log
    assert mask_msisdn(PHONE[1:]) in log  # the malformed body's error, masked (form-decoding ate the +)


def _any_ref(sandbox: SandboxClient) -> str:
    ref = new_reference()
    sandbox.create_cinetpay(ref, 5000, phone=PHONE)
    return ref


def sandbox_worker_secrets(prefork: Prefork) -> dict[str, str]:
    env = prefork.proc.env
    names = [k for k in env if any(w in k for w in ("KEY", "SECRET", "PASSWORD", "TOKEN"))]
    return {k: env[k] for k in names if env[k]}


def test_redactor_masks_secrets_and_phone_numbers() -> None:
    redact = Redactor(["sandbox-secret-key", "abc"])  # too short to be a secret worth masking
    line = redact("key sandbox-secret-key from +2250701020304 and 46733123453, order TXN-000123456789, abc")
    assert line == "key *** from ************04 and *********53, order TXN-000123456789, abc"


def test_json_formatter_emits_one_masked_object_per_line() -> None:
    import json
    import logging

    record = logging.LogRecord("payrecon", logging.WARNING, __file__, 1, "payer %s", ("+2250701020304",), None)
    record.provider = "cinetpay"
    line = JsonFormatter(Redactor()).format(record)
    data = json.loads(line)
    assert data["message"] == "payer ************04"
    assert (data["level"], data["provider"]) == ("WARNING", "cinetpay")


def _started(argv: list[str], env: dict[str, str], cwd: Path, log_path: Path, ready: bytes) -> Any:
    """A process as an operator starts it: the environment they would set, nothing prepared for it."""
    import os
    import subprocess
    import time

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PROMETHEUS_", "PAYRECON_", "CELERY_"))}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=cwd, env={**clean, **env}, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while ready not in log_path.read_bytes():
        assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text(errors="replace")
        time.sleep(0.1)
    return proc


def test_worker_and_beat_started_as_the_readme_says_export_what_the_dashboard_uses(
    e2e: Runtime,
    pg_url: str,
    sandbox_server: SandboxServer,
    sandbox: SandboxClient,
    tmp_path: Path,
    redis_base: str,
) -> None:
    """`payrecon worker --metrics-port` and `payrecon beat`, with no PROMETHEUS_MULTIPROC_DIR: the
    counters must reach /metrics (they used to stay in the memory of the process that counted them)."""
    broker = f"{redis_base}/{METRICS_REDIS_DB}"
    client = redis.Redis.from_url(broker)
    client.flushdb()
    env = worker_env(pg_url, broker, sandbox_server)
    env.pop("PAYRECON_METRICS_PORT")
    payrecon = str(Path(sys.executable).parent / "payrecon")
    port, beat_port = free_port(), free_port()
    worker = _started([payrecon, "worker", "--metrics-port", str(port)], env, tmp_path, tmp_path / "w.log", b" ready.")
    beat = _started(
        [payrecon, "beat", "--metrics-port", str(beat_port)], env, tmp_path, tmp_path / "b.log", b"beat: Starting"
    )
    producer = Celery("metrics-test", broker=broker)
    producer.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)
    try:
        run_batch(Prefork(None, port, tmp_path, producer), e2e, sandbox, paid=3, refused=1)  # type: ignore[arg-type]

        def scraped() -> dict[Any, float] | None:
            samples = Prefork(None, port, tmp_path, producer).scrape()  # type: ignore[arg-type]
            done = value(samples, "payrecon_tasks_total", task="payrecon.ingest_webhook", state="succeeded") == 5
            return samples if done else None

        samples = wait_for(scraped, timeout=30, what="the worker's counters on /metrics")
        assert value(samples, "payrecon_payments_final_total", provider="cinetpay", status="succeeded") == 3
        assert value(samples, "payrecon_deliveries_total", provider="cinetpay", outcome="accepted") == 4
        assert (
            value(samples, "payrecon_provider_calls_total", provider="cinetpay", operation="status", outcome="ok") == 4
        )
        assert value(samples, "payrecon_waiting_deliveries", provider="cinetpay") == 0

        def dispatched() -> bool:
            beat_samples = Prefork(None, beat_port, tmp_path, producer).scrape()  # type: ignore[arg-type]
            return value(beat_samples, "payrecon_beat_last_dispatch_timestamp_seconds", task="payrecon.recheck_due") > 0

        wait_for(dispatched, timeout=60, what="beat's dispatch gauge")
    finally:
        producer.close()
        for proc in (worker, beat):
            proc.terminate()
            proc.wait(timeout=30)
        client.flushdb()
        client.close()
    assert worker.returncode == 0
    # The worker's own metrics directory went with it.
    assert not (Path(tempfile.gettempdir()) / f"payrecon-metrics-{worker.pid}").exists()


def test_the_metrics_port_comes_from_the_command_line_else_the_environment_checked(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`payrecon worker --metrics-port` told the signal handler by writing os.environ (#15); it says it in
    worker.serving now, and a process Celery started itself reads the variable, checked."""
    from worker import serving

    monkeypatch.setattr(serving, "PORTS", {})
    assert serving.port("worker", {}) == 9808 and serving.port("beat", {}) == 9809
    assert serving.port("worker", {"PAYRECON_METRICS_PORT": "0"}) == 0
    assert serving.port("beat", {"PAYRECON_BEAT_METRICS_PORT": " 9911 "}) == 9911
    assert serving.port("worker", {"PAYRECON_METRICS_PORT": "nine"}) == 0
    assert "PAYRECON_METRICS_PORT must be a port number (0: off), got 'nine'" in caplog.text
    serving.PORTS["worker"] = 9999
    assert serving.port("worker", {"PAYRECON_METRICS_PORT": "1234"}) == 9999
