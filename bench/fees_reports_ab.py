"""A run's fee posting and report files timed, for two versions of the code alternated on copies of one database (#14).

    .venv/bin/python bench/fees_reports_ab.py --payments 1000000 --pairs 3                     # this tree, three times
    .venv/bin/python bench/fees_reports_ab.py --payments 1000000 --pairs 3 --code /path/to/other/checkout

``bench/reconcile_scale.py`` times a whole run once, and its fees and reports move with the machine's noise
as much as a change to either does. Here the bench's CinetPay day (``reconcile_scale.seed_payments`` and
``write_statement``: N payments, vacuumed, analyzed and checkpointed; the statement with a fee of 50 XOF a
payment) is imported and classified once, by this tree, in a template database; then, on a fresh copy of it
(``CREATE DATABASE ... TEMPLATE``) for each ``--code`` in turn and the other way round the next time (ABBA), a
child process started in the code tree under test (its own ``PYTHONPATH``) posts the run's fees
(``runs.post_fees``) and then writes its report files (``reports.export_all``), each timed; and the CPU the
child cost PostgreSQL is counted as ``bench/import_ab.py`` counts it (every process of the cluster: on a shared
machine other databases' work counts too). Each tree runs on the schema of its own migrations
(``bench/ab.py``: an older tree's copy is taken down to its last migration).
Last line, per tree: ``code=<dir> fees_s=<median> reports_s=<median> postgres_cpu_s=<median>``.
Needs PostgreSQL as for the tests (``PAYRECON_TEST_PG``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import ab
import reconcile_scale

from reconciliation.db import make_engine, session_factory, transaction
from reconciliation.nightly import runs
from reconciliation.statements.files import import_file

#: What a child runs in the tree under test: the run's fees, then its report files; the times as JSON on the last line.
CHILD = """
import json, sys, tempfile, time
from pathlib import Path
from reconciliation.db import make_engine, session_factory
from reconciliation.nightly import runs
from reconciliation.reports import run as reports

url, run_id = sys.argv[1], int(sys.argv[2])
engine = make_engine(url, pool_size=2)
sessions = session_factory(engine)
started = time.perf_counter()
fees_posted = runs.post_fees(sessions, run_id)
posted = time.perf_counter()
with tempfile.TemporaryDirectory() as out, sessions() as session:
    files = reports.export_all(session, run_id, Path(out))
    written = time.perf_counter()
    size = sum(p.stat().st_size for p in files)
engine.dispose()
print(json.dumps({"payments": fees_posted, "fees": posted - started, "reports": written - posted, "bytes": size}))
"""


def _template(url: str, payments: int, statement: Path) -> int:
    """The day seeded, its statement imported and its run classified, fees not posted; returns the run's id."""
    reconcile_scale.seed_payments(url, payments, False)
    reconcile_scale.write_statement(statement, payments, False, fee=50)
    engine = make_engine(url, pool_size=2)
    sessions = session_factory(engine)
    try:
        with transaction(sessions) as session:
            import_file(session, "cinetpay", statement, business_tz=reconcile_scale.TZ)
        policy = runs.Policy(tz=reconcile_scale.TZ, sla=3600)
        run_id = runs.start(sessions, "cinetpay", reconcile_scale.DAY, policy, "manual")
        runs.classify_run(sessions, run_id, policy)  # its items not analyzed, as the nightly run finds them
    finally:
        engine.dispose()
    return run_id


def _prepare(url: str, tmp: Path, payments: int) -> list[str]:
    """The template (``_template``); the child's argument: the run's id."""
    built = time.perf_counter()
    run_id = _template(url, payments, tmp / "cinetpay-2026-11-20.csv")
    print(f"{payments} payments, their statement imported and classified in {time.perf_counter() - built:.1f} s")
    return [str(run_id)]


def _measure(n: int, tree: Path, result: dict[str, Any], spent: float) -> dict[str, float]:
    figures = {"fees": result["fees"], "reports": result["reports"], "postgres_cpu": spent}
    print(
        f"{n}: {tree}: {result['payments']} fees posted in {figures['fees']:.2f} s, report files "
        f"({result['bytes'] / 2**20:.0f} MiB) in {figures['reports']:.2f} s, postgres_cpu {spent:.2f} s",
        flush=True,
    )
    return figures


def main() -> None:
    ab.compare(
        __doc__ or "",
        what="runs",
        database="payrecon_fees_ab",
        child=CHILD,
        prepare=_prepare,
        measure=_measure,
        names=("fees", "reports", "postgres_cpu"),
    )


if __name__ == "__main__":
    main()
