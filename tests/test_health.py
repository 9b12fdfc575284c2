"""``payrecon health``: one exit code per failure, and --json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner

from reconciliation import migrate
from tests.conftest import PG_BASE, worker_env
from tests.helpers import scratch_database
from worker import health as health_checks
from worker.cli import main
from worker.runtime import Runtime
from worker.settings import Settings
from worker.signals import beat_heartbeat


@pytest.fixture
def env(rt: Runtime, pg_url: str, redis_url: str, sandbox_server: Any) -> dict[str, str]:
    return worker_env(pg_url, redis_url, sandbox_server)


def health(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(main, ["health", "--json", *args], env=env)
    return result.exit_code, json.loads(result.output)


def test_healthy(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, rt: Runtime) -> None:
    monkeypatch.setattr("worker.runtime._runtime", rt)
    beat_heartbeat()
    code, report = health(env)
    assert code == 0 and report["ok"] is True
    assert {c["name"]: c["ok"] for c in report["checks"]} == {
        "providers": True, "database": True, "migrations": True, "broker": True, "beat": True,
    }  # fmt: skip


def test_beat_never_seen_or_silent(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, rt: Runtime) -> None:
    code, report = health(env)
    assert code == 6 and "never dispatched" in report["checks"][-1]["detail"]
    monkeypatch.setattr("worker.runtime._runtime", rt)
    beat_heartbeat(datetime.now(UTC) - timedelta(minutes=10))
    code, report = health(env, "--beat-max-age", "120")
    assert code == 6 and "s ago (more than 120 s)" in report["checks"][-1]["detail"]


def test_broker_down(env: dict[str, str]) -> None:
    code, report = health({**env, "CELERY_BROKER_URL": "redis://127.0.0.1:1/0"})
    assert code == 5  # the first failure decides: broker comes before beat
    broker = next(c for c in report["checks"] if c["name"] == "broker")
    assert broker["ok"] is False and "unreachable" in broker["detail"]


def test_database_down(env: dict[str, str]) -> None:
    code, report = health({**env, "DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"})
    assert code == 3
    database = report["checks"][1]
    assert database == {"name": "database", "ok": False, "detail": database["detail"]}
    assert database["detail"].startswith("unreachable (DATABASE_URL): OperationalError: connection to server")


def test_database_gone_between_the_checks_is_unreachable_not_a_crash(env: dict[str, str]) -> None:
    # `payrecon worker --wait` asks `cannot_start` again and again; PostgreSQL restarting after the
    # reachability check and before the migrations check made the migrations check raise, and the
    # waiting worker exit 1 with a traceback. It is the database being unreachable: wait on.
    gone = Settings.from_env({**env, "DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"})
    check = health_checks._migrations(gone)
    assert check.name == "database" and check.ok is False
    assert check.detail.startswith("unreachable (DATABASE_URL): OperationalError: connection to server")


@pytest.fixture
def behind() -> Iterator[str]:
    with scratch_database(PG_BASE, "payrecon_behind") as url:
        migrate.upgrade(url, "0001")
        yield url


def test_migrations_behind(env: dict[str, str], behind: str) -> None:
    code, report = health({**env, "DATABASE_URL": behind})
    migrations = next(c for c in report["checks"] if c["name"] == "migrations")
    assert code == 4 and "run `payrecon migrate`" in migrations["detail"]


def test_no_provider_configured(env: dict[str, str]) -> None:
    bare = {k: v for k, v in env.items() if not k.startswith(("CINETPAY_", "MTN_MOMO_", "ORANGE_MONEY_", "WAVE_"))}
    code, report = health(bare)
    assert (
        code == 7 and report["checks"][0]["name"] == "providers" and "none configured" in report["checks"][0]["detail"]
    )


def test_broker_down_names_the_url_without_its_password(env: dict[str, str]) -> None:
    code, report = health({**env, "CELERY_BROKER_URL": "redis://:s3cret@127.0.0.1:1/0"})
    broker = next(c for c in report["checks"] if c["name"] == "broker")
    assert code == 5 and "redis://:***@127.0.0.1:1/0 unreachable (CELERY_BROKER_URL)" in broker["detail"]
    assert "s3cret" not in json.dumps(report)


def test_a_started_worker_freezes_what_it_holds_out_of_the_collectors_reach() -> None:
    """At ``worker_ready`` the objects of the started worker are frozen (``gc.freeze``): the collector's full
    passes then leave them alone; and its youngest generation is collected every ``GC_YOUNG`` allocations. So do
    a prefork pool's children."""
    import gc

    from celery import signals

    from worker.signals import GC_YOUNG, _freeze_startup_objects

    assert _freeze_startup_objects in [receiver() for _, receiver in signals.worker_ready.receivers]
    # and in each child of a prefork pool (forked before worker_ready)
    assert _freeze_startup_objects in [receiver() for _, receiver in signals.worker_process_init.receivers]
    thresholds = gc.get_threshold()
    gc.unfreeze()
    try:
        _freeze_startup_objects()  # alone: the signal's other receiver would serve metrics in the test process
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG, *thresholds[1:]) and thresholds[0] < GC_YOUNG
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
