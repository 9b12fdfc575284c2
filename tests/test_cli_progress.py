"""Progress of the long commands, as a user sees it: the installed ``payrecon`` run as a real
subprocess, on a pseudo-terminal (bars on the terminal) and on pipes or with ``--json`` (no bars)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis

from providers.sandbox.client import SandboxClient
from tests.conftest import worker_env
from tests.helpers import new_reference, payrecon_command, registration
from worker import pipeline
from worker.runtime import Runtime
from worker.settings import CREDENTIALS

ABIDJAN = ZoneInfo("Africa/Abidjan")  # the tests' business time zone (PAYRECON_TIMEZONE)
#: click draws a bar after a carriage return, hiding the cursor while it does.
BAR = "\r\x1b[?25l"


@pytest.fixture
def env(rt: Runtime, pg_url: str, redis_url: str, sandbox_server: Any) -> Iterator[dict[str, str]]:
    yield {**os.environ, **worker_env(pg_url, redis_url, sandbox_server)}
    client = redis.Redis.from_url(redis_url)
    client.delete("webhooks")
    client.close()


def on_terminal(args: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    """Run ``payrecon ARGS`` with stdin, stdout and stderr on one pseudo-terminal: (exit code, what
    the terminal received, its CR LF line ends made LF)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([payrecon_command(), *args], stdin=slave, stdout=slave, stderr=slave, env=env)
    finally:
        os.close(slave)
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the program ended and closed the terminal
                break
            if not data:
                break
            received += data
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, received.decode("utf-8", "replace").replace("\r\n", "\n")


def on_pipes(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [payrecon_command(), *args], env=env, capture_output=True, text=True, check=False, timeout=120
    )


def statement(path: Path, references: list[str]) -> Path:
    """A CinetPay portal export of today, one accepted 5000 XOF payment per reference."""
    when = datetime.now(ABIDJAN).strftime("%Y-%m-%d %H:%M:%S")
    lines = ["transaction_id,operator_id,payment_date,amount,currency,fees,status,payment_method"]
    lines += [f"{ref},MP{n:06d},{when},5000,XOF,175,ACCEPTED,OM" for n, ref in enumerate(references)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_statement_import_shows_each_stage_on_a_terminal_and_nothing_on_pipes(
    env: dict[str, str], tmp_path: Path
) -> None:
    big = statement(tmp_path / "big.csv", [new_reference() for _ in range(3000)])
    code, screen = on_terminal(["statements", "import", "--provider", "cinetpay", str(big)], env)
    assert code == 0, screen
    for stage in ("checksum", "check", "copy", "insert"):
        assert re.search(rf"big\.csv: {stage} +\[#+\] +100%", screen), (stage, screen)
    assert BAR in screen
    assert screen.rstrip("\n").endswith("imported 3000 row(s) from big.csv (import #1); business days: " + today())

    small = statement(tmp_path / "b.csv", ["R1"])
    piped = on_pipes(["statements", "import", "--provider", "cinetpay", str(small)], env)
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == ""
    assert piped.stdout == f"imported 1 row(s) from b.csv (import #2); business days: {today()}\n"


def today() -> str:
    return datetime.now(ABIDJAN).date().isoformat()


NO_CLIENTS = {name for names in CREDENTIALS.values() for name in names}


def test_reconcile_shows_its_stages_on_a_terminal_and_none_with_json(
    rt: Runtime, sandbox: SandboxClient, env: dict[str, str], tmp_path: Path
) -> None:
    paid = new_reference()
    pipeline.register_payment(rt, registration(paid))
    sandbox.create_cinetpay(paid, 5000)
    pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(paid))
    env = {k: v for k, v in env.items() if k not in NO_CLIENTS}  # CinetPay from its statement file alone
    imported = on_pipes(["statements", "import", "--provider", "cinetpay", str(statement(tmp_path / "c.csv", [paid]))],
                        env)  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    day = datetime.now(rt.settings.timezone).date().isoformat()

    reconcile = ["reconcile", "--provider", "cinetpay", "--date", day]
    code, screen = on_terminal([*reconcile, "--out", str(tmp_path / "r")], env)
    assert code == 0, screen
    for stage in ("import", "classify", "fees", "reports"):
        assert re.search(rf"cinetpay: {stage} +\[#+\] +100%", screen), (stage, screen)
    assert re.search(r"^cinetpay +run \d+: 1 matched$", screen, re.MULTILINE), screen

    code, screen = on_terminal([*reconcile, "--json"], env)
    assert code == 0, screen
    assert BAR not in screen
    assert json.loads(screen)["counts"]["by_class"] == {"matched": 1}  # the terminal got the JSON, byte for byte

    piped = on_pipes([*reconcile, "--out", str(tmp_path / "p")], env)
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    assert re.fullmatch(r"cinetpay +run \d+: 1 matched\n(  \S+\n){6}", piped.stdout), piped.stdout


def test_report_export_shows_files_written_on_a_terminal_and_only_paths_on_pipes(
    rt: Runtime, sandbox: SandboxClient, env: dict[str, str], tmp_path: Path
) -> None:
    from reconciliation.nightly import runs
    from worker.nightly import policy

    reference = new_reference()
    pipeline.register_payment(rt, registration(reference))
    sandbox.create_cinetpay(reference, 5000)
    day = datetime.now(rt.settings.timezone).date()
    run_id = runs.reconcile_stored(rt.sessions, "cinetpay", day, policy(rt, "cinetpay"))

    code, screen = on_terminal(["report", "export", str(run_id), "--out", str(tmp_path / "t")], env)
    assert code == 0, screen
    assert re.search(rf"run {run_id}: reports +\[#+\] +100%", screen), screen
    assert screen.rstrip("\n").endswith(str(tmp_path / "t" / "manifest.json"))

    piped = on_pipes(["report", "export", str(run_id), "--format", "csv", "--out", str(tmp_path / "p")], env)
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    assert piped.stdout.splitlines() == [
        str(tmp_path / "p" / f"recon_cinetpay_{day}_run{run_id}.csv"),
        str(tmp_path / "p" / f"recon_cinetpay_{day}_run{run_id}_payouts.csv"),
    ]


def test_ledger_export_counts_entries_on_a_terminal_and_nothing_on_pipes(
    rt: Runtime, sandbox: SandboxClient, env: dict[str, str], tmp_path: Path
) -> None:
    for _ in range(3):
        reference = new_reference()
        pipeline.register_payment(rt, registration(reference))
        sandbox.create_cinetpay(reference, 5000)
        pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(reference))
    day = datetime.now(rt.settings.timezone).date().isoformat()
    args = ["ledger", "export", "--from", day, "--to", day, "--format", "csv", "--unmapped", "keep"]

    code, screen = on_terminal([*args, "--out", str(tmp_path / "t.csv")], env)
    assert code == 0, screen
    assert re.search(r"t\.csv: entries +\[#+\] +100%", screen), screen
    assert "wrote 6 entries of 3 journal(s)" in screen

    piped = on_pipes([*args, "--out", str(tmp_path / "p.csv")], env)
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr.startswith("warning: kept") and len(piped.stderr.splitlines()) == 1, piped.stderr
    assert piped.stdout.startswith("wrote 6 entries of 3 journal(s)")


def test_reconcile_reports_each_status_check_then_its_steps(rt: Runtime, sandbox: SandboxClient) -> None:
    """Without a statement file: the ``import`` stage counts the payments asked about."""
    from worker.nightly import run_day

    for _ in range(3):
        reference = new_reference()
        pipeline.register_payment(rt, registration(reference))
        sandbox.create_cinetpay(reference, 5000)
    heard: list[tuple[str, int, int]] = []
    day = datetime.now(rt.settings.timezone).date()
    run_day(rt, "cinetpay", day, progress=lambda *event: heard.append(event))
    assert heard == [
        ("import", 0, 3), ("import", 1, 3), ("import", 2, 3), ("import", 3, 3),
        ("classify", 0, 4), ("classify", 1, 4), ("classify", 2, 4), ("classify", 3, 4), ("classify", 4, 4),
        ("fees", 0, 2), ("fees", 1, 2), ("fees", 2, 2),
    ]  # fmt: skip
