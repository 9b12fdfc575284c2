"""Test fixtures: real PostgreSQL, real Redis, the provider sandbox over real HTTP, and a real
Celery worker process for end-to-end cases.

Each test run creates its own PostgreSQL database (dropped at the end) and starts its own
redis-server on a free port (stopped at the end). Connection settings:
``PAYRECON_TEST_PG`` (default ``postgresql+psycopg2://postgres@127.0.0.1:5432``) and
``PAYRECON_TEST_REDIS`` (a Redis to use instead, e.g. ``redis://127.0.0.1:6379``: the suite then
flushes a database number of its own there).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text

from providers.sandbox.client import SandboxClient
from providers.sandbox.server import SandboxServer
from reconciliation import migrate
from reconciliation.models import Base
from tests.helpers import REDIS_SERVER, PrivateRedis, scratch_database
from worker import runtime as runtime_mod
from worker.settings import Settings

PG_BASE = os.environ.get("PAYRECON_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")
REDIS_BASE = os.environ.get("PAYRECON_TEST_REDIS", "redis://127.0.0.1:6379")
#: The suite starts a Redis of its own unless told to use one (PAYRECON_TEST_REDIS).
OWN_REDIS = "PAYRECON_TEST_REDIS" not in os.environ and REDIS_SERVER is not None
ROOT = Path(__file__).resolve().parent.parent

CINETPAY = {"api_key": "test-api-key", "site_id": "445160", "secret_key": "test-secret-key"}

#: Seed data the migrations ship, kept between tests.
SEEDED = frozenset({"plans"})
#: Every other table of the models, emptied before each test that uses the database: derived, so a table
#: a migration adds is emptied too (a hand-kept list once let one test see another's rows).
TABLES = ", ".join(t.name for t in Base.metadata.sorted_tables if t.name not in SEEDED)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh database for this test run, migrated to head."""
    with scratch_database(PG_BASE, f"payrecon_test_{os.getpid()}") as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture(scope="session")
def redis_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The suite's Redis: a redis-server of its own on a free port (the machine's may be anyone's:
    the suite flushes its databases), unless ``PAYRECON_TEST_REDIS`` names one, or there is no
    redis-server to start. Databases: 1 the session's, 14 the sandbox's enqueue tests, 15 apart."""
    if OWN_REDIS:
        server = PrivateRedis(tmp_path_factory.mktemp("redis"))
        server.start()
        yield server.url.rsplit("/", 1)[0]
        server.kill()
    else:
        yield REDIS_BASE


@pytest.fixture(scope="session")
def redis_url(redis_base: str) -> Iterator[str]:
    """The session's Redis database, flushed before and after (on a shared Redis, a number of our own
    among 1-13 by chance, or PAYRECON_TEST_REDIS_DB)."""
    db = 1 if OWN_REDIS else int(os.environ.get("PAYRECON_TEST_REDIS_DB", 1 + secrets.randbelow(13)))
    url = f"{redis_base}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    server = SandboxServer(
        cinetpay_api_key=CINETPAY["api_key"],
        cinetpay_site_id=CINETPAY["site_id"],
        cinetpay_secret_key=CINETPAY["secret_key"],
    ).start()
    yield server
    server.stop()


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Iterator[SandboxClient]:
    client = SandboxClient(sandbox_server.url)
    client.reset()
    yield client
    client.close()


def worker_env(pg_url: str, redis_url: str, sandbox: SandboxServer, **extra: str) -> dict[str, str]:
    env = {
        "DATABASE_URL": pg_url,
        "CELERY_BROKER_URL": redis_url,
        **sandbox.worker_env(),
        "PAYRECON_TIMEZONE": "Africa/Abidjan",
        "PAYRECON_HTTP_TIMEOUT": "2,2",
        "PAYRECON_RECHECK_SCHEDULE": "1,1,2",
        "PAYRECON_VERIFY_MAX_RETRIES": "3",
        "PAYRECON_METRICS_PORT": "0",  # tests/test_metrics.py serves metrics on a port of its own
        # Tests call the sandbox far faster than a real provider allows; budget tests tighten it.
        **{f"PAYRECON_BUDGET_{p.upper()}": "1000,1000" for p in ("cinetpay", "mtn_momo", "orange_money", "wave")},
    }
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def settings(pg_url: str, redis_url: str, sandbox_server: SandboxServer) -> Settings:
    return Settings.from_env(worker_env(pg_url, redis_url, sandbox_server))


@pytest.fixture(scope="session")
def session_runtime(settings: Settings) -> Iterator[runtime_mod.Runtime]:
    rt = runtime_mod.build(settings)
    yield rt
    rt.close()


def _truncate(rt: runtime_mod.Runtime) -> None:
    with rt.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))


@pytest.fixture
def rt(session_runtime: runtime_mod.Runtime, sandbox: SandboxClient) -> runtime_mod.Runtime:
    """The in-process runtime over a clean database (pipeline functions are called directly)."""
    _truncate(session_runtime)
    return session_runtime


# --------------------------------------------------------------------------- real worker


class WorkerProcess:
    THREADS = ("-P", "threads", "-c", "16")

    def __init__(self, env: dict[str, str], log_path: Path, argv: list[str] | None = None) -> None:
        self.env = env
        self.log_path = log_path
        self.argv = argv or [
            sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "webhooks,verify,maintenance",
            *self.THREADS, "-l", "info",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        full_env = {**os.environ, **self.env}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    *self.argv,
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "-n",
                    f"test-{os.getpid()}-{secrets.token_hex(2)}@%h",
                ],
                cwd=ROOT,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            if b"ready." in self.log_path.read_bytes():
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def worker_process(
    pg_url: str, redis_url: str, sandbox_server: SandboxServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(
        worker_env(pg_url, redis_url, sandbox_server), tmp_path_factory.mktemp("worker") / "worker.log"
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def producer(redis_url: str) -> Iterator[Any]:
    """A Celery client, as a merchant app would use to send_task."""
    from celery import Celery

    app = Celery("producer", broker=redis_url)
    app.conf.update(task_serializer="json", accept_content=["json"], broker_connection_retry_on_startup=True)
    yield app
    app.close()


@pytest.fixture
def e2e(
    worker_process: WorkerProcess, session_runtime: runtime_mod.Runtime, sandbox: SandboxClient
) -> runtime_mod.Runtime:
    """Clean database with the real worker process running."""
    _truncate(session_runtime)
    return session_runtime


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy (for end-to-end cases through the worker)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of the test's own (to stop, restart or break), never the shared one."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not on PATH: this test needs a Redis server of its own")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()
