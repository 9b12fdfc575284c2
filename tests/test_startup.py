"""`payrecon worker`, `beat`, `migrate` and `health` started as an operator starts them: a worker that
cannot work says why in one line and exits 1 instead of logging "ready" and failing every task."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from providers.sandbox.server import SandboxServer
from reconciliation import migrate
from tests.conftest import PG_BASE, worker_env
from tests.helpers import scratch_database

pytestmark = pytest.mark.e2e

PAYRECON = str(Path(sys.executable).parent / "payrecon")


def env_of(extra: dict[str, str]) -> dict[str, str]:
    """The operator's environment: nothing of the test process's payrecon settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PAYRECON_", "CELERY_", "DATABASE_"))}
    return {**clean, **extra}


def payrecon(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PAYRECON, *args], env=env_of(env), cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A database nobody migrated, named the way hosting providers hand URLs out (postgresql://)."""
    with scratch_database(PG_BASE, "payrecon_start") as url:
        yield url.replace("postgresql+psycopg2://", "postgresql://")


@pytest.fixture
def base_env(redis_url: str, sandbox_server: SandboxServer) -> dict[str, str]:
    return worker_env("", redis_url, sandbox_server)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["worker", "beat"])
def test_refuses_to_start_on_an_unreachable_database(base_env: dict[str, str], command: str, tmp_path: Path) -> None:
    env = {**base_env, "DATABASE_URL": "postgres://postgres@127.0.0.1:1/nowhere"}
    line = one_error_line(payrecon(env, command, cwd=tmp_path))
    assert line.startswith("error: cannot start: database: unreachable (DATABASE_URL): OperationalError")


def test_refuses_to_start_on_a_database_not_migrated(
    base_env: dict[str, str], empty_database: str, tmp_path: Path
) -> None:
    line = one_error_line(payrecon({**base_env, "DATABASE_URL": empty_database}, "worker", cwd=tmp_path))
    assert "migrations: at nothing, code expects" in line and "run `payrecon migrate`" in line


def test_refuses_to_start_with_no_provider(base_env: dict[str, str], pg_url: str, tmp_path: Path) -> None:
    bare = {k: v for k, v in base_env.items() if not k.startswith(("CINETPAY_", "MTN_MOMO_", "ORANGE_", "WAVE_"))}
    line = one_error_line(payrecon({**bare, "DATABASE_URL": pg_url}, "worker", "--wait", cwd=tmp_path))
    assert "providers: none configured" in line  # waiting would not change the settings


def test_a_broker_url_without_a_scheme_is_refused_by_name(
    base_env: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    env = {**base_env, "DATABASE_URL": pg_url, "CELERY_BROKER_URL": "127.0.0.1:6379"}
    result = payrecon(env, "worker", cwd=tmp_path)
    assert result.returncode == 1 and "CELERY_BROKER_URL must be a broker URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_and_health_take_a_postgresql_url(
    base_env: dict[str, str], empty_database: str, tmp_path: Path
) -> None:
    env = {**base_env, "DATABASE_URL": empty_database}
    migrated = payrecon(env, "migrate", cwd=tmp_path)
    assert migrated.returncode == 0 and "latest revision" in migrated.stdout, migrated.stderr
    health = payrecon(env, "health", cwd=tmp_path)
    assert "ok   migrations" in health.stdout and "Traceback" not in health.stderr


def test_worker_with_wait_starts_once_the_database_is_migrated(
    base_env: dict[str, str], empty_database: str, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    env = env_of({**base_env, "DATABASE_URL": empty_database, "PAYRECON_METRICS_PORT": "0"})
    with log.open("wb") as out:
        proc: Any = subprocess.Popen(
            [PAYRECON, "worker", "--wait", "-c", "2"], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while b"waiting: migrations" not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        migrate.upgrade(empty_database.replace("postgresql://", "postgresql+psycopg2://"))
        deadline = time.monotonic() + 60
        while b" ready." not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0
