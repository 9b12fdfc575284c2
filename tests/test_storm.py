"""The short storm of issue #10 (``bench/storm.py --short``): a few hundred payments across the four
providers through real ``payrecon worker`` and ``payrecon beat`` processes, workers SIGKILLed every few
seconds, one crash-restart of the storm's own Redis and one of its own PostgreSQL; then every invariant
checked against the sandbox's truth. ``--self-check`` then plants one violation of each kind and fails
unless the checks see them all, so a green run means the checks ran and could have failed.

It starts its own Redis and PostgreSQL cluster (never the machine's), so it needs redis-server and
PostgreSQL's server binaries. It takes about 65-115 s, and up to about 3 minutes when payments never settle
(``--access-within`` is 120 s).
"""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e

INVARIANTS = (
    "lost: paid at the provider, not in payrecon",
    "wrongly paid: paid in payrecon, not at the provider",
    "registrations lost",
    "double grants or journals",
    "undue grants (refused, mismatched or unpaid)",
    "accounts: days granted = paid periods x period",
    "unbalanced journals",
    "revenue = what the providers confirmed",
    "forged callbacks accepted",
    "dead letters = the malformed input, all of it",
    "worker or beat exits other than the kills",
    "every paid customer has access within",
)
SUMMARY = re.compile(
    r"storm seed=7 broker=redis payments=(\d+) kills=(\d+) violations=(\d+) settle_s=(\S+) self_check=(\w+)"
)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
@pytest.mark.skipif(
    shutil.which("initdb") is None and not glob.glob("/usr/lib/postgresql/*/bin/initdb"),
    reason="needs PostgreSQL's server binaries (initdb, pg_ctl)",
)
def test_short_storm_keeps_every_invariant() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "storm.py"), "--short", "--seed", "7", "--self-check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    out = result.stdout
    lines = out.strip().splitlines()
    summary = SUMMARY.fullmatch(lines[-1]) if lines else None
    assert summary is not None, f"no summary line (exit {result.returncode}):\n{out[-4000:]}\n{result.stderr[-4000:]}"
    payments, kills, violations, _settle, self_check = summary.groups()
    table = [line for line in lines if line.startswith(INVARIANTS)]
    assert len(table) == len(INVARIANTS), f"the invariants table is incomplete:\n{out[-4000:]}"
    assert int(payments) >= 200 and int(kills) >= 2, lines[-1]
    assert self_check == "ok", f"the checks missed planted violations:\n{out[-3000:]}"
    failed = [line for line in table if "VIOLATION" in line]
    evidence = out[out.find("evidence:") :]
    assert not failed and int(violations) == 0 and result.returncode == 0, (
        "storm violations:\n" + "\n".join(failed) + "\n\n" + evidence[:4000]
    )
