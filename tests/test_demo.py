"""The README's first command: the embedded demo runs with no server at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import worker_env

pytestmark = pytest.mark.e2e


def test_demo_runs_on_embedded_defaults(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL"}}
    env["TMPDIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "demo", "--payments", "32"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=tmp_path,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "broker    sqlite:///" in out  # kombu's SQLAlchemy transport on SQLite: no server
    assert "(CinetPay, MTN MoMo, Orange Money and Wave wire formats)" in out
    for provider in ("cinetpay", "mtn_momo", "orange_money", "wave"):
        assert f"provider_clearing:{provider}" in out  # every provider settled money
    assert "pending, then paid; no callback ever: janitor      -> 4 succeeded" in out
    assert "forged 'paid' callback for a refused payment       -> 4 failed" in out
    assert "provider confirms a smaller amount (tampered)      -> 4 succeeded" in out
    assert "every journal balances: yes" in out
    assert "amount_mismatch" in out
    # then the nightly reconciliation of the day, every class at least once, with its reports
    assert (
        "every class seen: amount_mismatch, currency_mismatch, duplicate, fee_variance, matched, "
        "missing_after_sla, missing_at_provider, missing_in_ledger, status_mismatch"
    ) in out
    assert "reports (csv, xlsx, json, html + manifest)" in out
    assert list(tmp_path.iterdir()) == []  # the demo cleaned up after itself


def test_demo_through_a_running_stack(
    e2e: Any, pg_url: str, redis_url: str, sandbox_server: Any, tmp_path: Path
) -> None:
    """What `docker compose run worker payrecon demo --sandbox-url http://sandbox:8765 --external-worker`
    does: the traffic goes through the stack's own worker and beat (here: the test session's worker
    and a beat process), so the stack's metrics and dashboard show it."""
    env = {**os.environ, **worker_env(pg_url, redis_url, sandbox_server, PAYRECON_RECHECK_INTERVAL="0.5")}
    with (tmp_path / "beat.log").open("wb") as log:
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "beat", "-s", str(tmp_path / "schedule")],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        result = subprocess.run(
            [sys.executable, "-m", "worker.cli", "demo", "--payments", "16", "--sandbox-url", sandbox_server.url,
             "--external-worker"],
            env=env, capture_output=True, text=True, timeout=240, check=False, cwd=tmp_path,
        )  # fmt: skip
    finally:
        beat.terminate()
        beat.wait(timeout=20)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "worker    the running stack's" in result.stdout
    assert "pending, then paid; no callback ever: janitor      -> 4 succeeded" in result.stdout
    assert "every journal balances: yes" in result.stdout


def test_demo_keep_leaves_the_database_and_the_four_reports(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL"}}
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "demo", "--payments", "16", "--keep"],
        env=env, capture_output=True, text=True, timeout=240, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    kept = tmp_path / "var" / "demo"
    assert (kept / "payrecon.sqlite").exists()
    for provider in ("cinetpay", "mtn_momo", "orange_money", "wave"):
        suffixes = sorted(p.suffix for p in (kept / "reports" / provider).iterdir())
        assert suffixes == [".csv", ".csv", ".html", ".json", ".json", ".xlsx"]  # 4 reports, payouts CSV, manifest
