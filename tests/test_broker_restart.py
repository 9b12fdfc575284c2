"""A Redis restart under a running ``payrecon worker`` (issue #10, cause 4).

With celery/kombu 5.7.0 alone the worker stopped on the restart ("Unrecoverable error:
AttributeError('NoneType' object has no attribute 'hostname')", see ``worker/broker_recovery.py``)
and ``payrecon worker`` exited 0, so a supervisor restarting only on failure left it dead. Here a
private redis-server (AOF on, as docker-compose.yml runs it) on a free port is restarted under a
real ``payrecon worker`` process started as the README starts it; PostgreSQL is the suite's.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy import create_engine, select

from providers.sandbox.server import SandboxServer
from reconciliation.models import Payment
from tests.conftest import ROOT, wait_for, worker_env
from tests.helpers import new_reference, registration

pytestmark = pytest.mark.e2e

REDIS_SERVER = shutil.which("redis-server")
UNRECOVERABLE = "Unrecoverable error"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of this test's own: only it is ever shut down, never the shared one."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        assert REDIS_SERVER is not None
        argv = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        argv += ["--appendonly", "yes", "--dir", str(self.directory)]  # queued messages survive a restart
        with (self.directory / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            assert self.proc.poll() is None, (self.directory / "redis.log").read_text(errors="replace")
            try:
                with self.client() as client:
                    # The server answering is ours, not another one that took the port meanwhile.
                    if client.info("server")["process_id"] == self.proc.pid:
                        return
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, "private redis-server did not start"
            time.sleep(0.05)

    def shutdown(self) -> None:
        """``SHUTDOWN``, as ``redis-cli shutdown`` or ``docker restart`` does: the AOF is flushed."""
        assert self.proc is not None
        with self.client() as client:
            client.shutdown()
        self.proc.wait(timeout=10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not on PATH: this test restarts a Redis server of its own")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


def payrecon() -> list[str]:
    """The ``payrecon`` command of this environment (README: ``.venv/bin/payrecon``)."""
    script = Path(sys.executable).with_name("payrecon")
    return [str(script)] if script.exists() else [sys.executable, "-m", "worker.cli"]


def start_worker(env: dict[str, str], log_path: Path, argv: list[str]) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while b" ready." not in log_path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"worker did not become ready:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.1)
    return proc


def send_registrations(broker_url: str, references: list[str], countdown: float | None = None) -> list[str]:
    """Send ``payrecon.register_payment`` as a merchant app does; the task ids."""
    app = Celery("producer", broker=broker_url)
    app.conf.update(task_serializer="json", accept_content=["json"], broker_connection_retry_on_startup=True)
    try:
        return [
            app.send_task(
                "payrecon.register_payment",
                kwargs={"payment": registration(ref)},
                queue="webhooks",
                countdown=countdown,
            ).id
            for ref in references
        ]
    finally:
        app.close()


def test_worker_keeps_consuming_across_a_redis_restart(
    private_redis: PrivateRedis, pg_url: str, sandbox_server: SandboxServer, tmp_path: Path
) -> None:
    engine = create_engine(pg_url)

    def registered(references: list[str]) -> set[str]:
        with engine.connect() as conn:
            return set(conn.scalars(select(Payment.reference).where(Payment.reference.in_(references))))

    log_path = tmp_path / "worker.log"
    worker = start_worker(
        worker_env(pg_url, private_redis.url, sandbox_server),
        log_path,
        [*payrecon(), "worker", "--concurrency", "4"],
    )

    def alive() -> None:
        code = worker.poll()
        assert code is None, f"the worker stopped (exit code {code}):\n{log_path.read_text(errors='replace')[-6000:]}"

    try:
        before = [new_reference() for _ in range(3)]
        send_registrations(private_redis.url, before)
        wait_for(lambda: registered(before) == set(before), what="registrations before the restart")
        # In flight during the restart: delivered to the worker, held unacknowledged until their ETA.
        held = send_registrations(private_redis.url, [new_reference() for _ in range(3)], countdown=3600)
        with private_redis.client() as client:
            wait_for(lambda: client.hlen("unacked") >= len(held), what="messages held by the worker")

        private_redis.shutdown()
        time.sleep(1)  # the worker sees the connection drop and retries against a closed port
        alive()
        private_redis.start()

        after = [new_reference() for _ in range(3)]
        send_registrations(private_redis.url, after)

        def landed() -> bool:
            alive()
            return registered(after) == set(after)

        wait_for(landed, timeout=30, what="registrations sent after the restart")
        alive()
        assert UNRECOVERABLE not in log_path.read_text(errors="replace")

        # The held messages are not lost: still in Redis (redelivered after the visibility timeout).
        with private_redis.client() as client:
            kept = {json.loads(raw)[0]["headers"]["id"] for raw in client.hvals("unacked")}
            kept |= {json.loads(raw)["headers"]["id"] for raw in client.lrange("webhooks", 0, -1)}
        assert set(held) <= kept

        worker.terminate()  # warm shutdown: a clean stop exits 0
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        engine.dispose()


def test_worker_exits_non_zero_after_an_unrecoverable_error(
    private_redis: PrivateRedis, pg_url: str, sandbox_server: SandboxServer, tmp_path: Path
) -> None:
    """Whatever stops the worker on an unrecoverable error, ``payrecon worker`` exits non-zero, so a
    supervisor that restarts only on failure (systemd ``Restart=on-failure``) restarts it."""
    failing_step = textwrap.dedent(
        """
        import sys
        from celery import bootsteps
        from worker.app import app
        from worker.cli import main

        class Boom(bootsteps.StartStopStep):
            requires = ("celery.worker.components:Pool",)  # before the consumer (last)

            def start(self, parent):
                raise RuntimeError("boom")

        app.steps["worker"].add(Boom)
        sys.argv[0] = "payrecon"
        main()
        """
    )
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        result = subprocess.run(
            [sys.executable, "-c", failing_step, "worker", "--concurrency", "2"],
            cwd=ROOT,
            env={**os.environ, **worker_env(pg_url, private_redis.url, sandbox_server)},
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=60,
            check=False,
        )
    output = log_path.read_text(errors="replace")
    assert UNRECOVERABLE in output and "boom" in output, output
    assert result.returncode != 0, output
