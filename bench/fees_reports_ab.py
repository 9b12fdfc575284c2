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
machine other databases' work counts too). The trees must share the schema of this tree's migrations.
Last line, per tree: ``code=<dir> fees_s=<median> reports_s=<median> postgres_cpu_s=<median>``.
Needs PostgreSQL as for the tests (``PAYRECON_TEST_PG``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import reconcile_scale
from throughput import CLOCK_TICKS, _proc_table, _tree_ticks, postgres_roots

from reconciliation import migrate
from reconciliation.db import make_engine, session_factory, transaction
from reconciliation.nightly import runs
from reconciliation.statements.files import import_file
from tests.helpers import scratch_database

PG_BASE = os.environ.get("PAYRECON_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")

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
journals = runs.post_fees(sessions, run_id)
posted = time.perf_counter()
with tempfile.TemporaryDirectory() as out, sessions() as session:
    files = reports.export_all(session, run_id, Path(out))
    written = time.perf_counter()
    size = sum(p.stat().st_size for p in files)
engine.dispose()
print(json.dumps({"journals": journals, "fees": posted - started, "reports": written - posted, "bytes": size}))
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
        runs.classify_run(sessions, run_id, policy)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))  # as the day's items would be by the time the fees are posted
    finally:
        engine.dispose()
    return run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payments", type=int, default=1_000_000)
    parser.add_argument("--pairs", type=int, default=3, help="runs per tree, alternated")
    parser.add_argument("--code", type=Path, action="append", help="a code tree to time (repeatable)")
    args = parser.parse_args()
    trees = [ROOT, *args.code] if args.code and len(args.code) == 1 else (args.code or [ROOT])
    trees = [tree.resolve() for tree in trees]
    admin = create_engine(f"{PG_BASE}/postgres", isolation_level="AUTOCOMMIT")
    roots = postgres_roots(admin)
    if not roots:
        raise SystemExit("the PostgreSQL cluster's processes are out of sight: its CPU cannot be counted")
    times: dict[Path, list[dict[str, float]]] = {tree: [] for tree in trees}
    with scratch_database(PG_BASE, "payrecon_fees_ab") as url, tempfile.TemporaryDirectory() as tmp:
        template = url.rsplit("/", 1)[1]
        migrate.upgrade(url)
        built = time.perf_counter()
        run_id = _template(url, args.payments, Path(tmp) / "cinetpay-2026-11-20.csv")
        print(
            f"{args.payments} payments, their statement imported and classified in {time.perf_counter() - built:.1f} s"
        )
        for n in range(args.pairs):
            for tree in trees if n % 2 == 0 else trees[::-1]:  # ABBA: neither always goes first
                copy = f"{template}_copy"
                with admin.connect() as conn:
                    conn.execute(text(f'CREATE DATABASE "{copy}" TEMPLATE "{template}"'))
                    conn.execute(text("CHECKPOINT"))
                before = _tree_ticks(roots, _proc_table())
                try:
                    child = subprocess.run(
                        [sys.executable, "-c", CHILD, url.rsplit("/", 1)[0] + "/" + copy, str(run_id)],
                        cwd=tree,
                        env={**os.environ, "PYTHONPATH": str(tree)},
                        capture_output=True,
                        text=True,
                        check=False,
                    )
                    spent = (_tree_ticks(roots, _proc_table()) - before) / CLOCK_TICKS
                finally:
                    with admin.connect() as conn:
                        conn.execute(text(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)'))
                if child.returncode != 0:
                    raise SystemExit(f"the run in {tree} failed:\n{child.stderr[-2000:]}")
                result = json.loads(child.stdout.strip().splitlines()[-1])
                figures = {"fees": result["fees"], "reports": result["reports"], "postgres_cpu": spent}
                times[tree].append(figures)
                print(
                    f"{n + 1}: {tree}: {result['journals']} fee journals in {figures['fees']:.2f} s, report files "
                    f"({result['bytes'] / 2**20:.0f} MiB) in {figures['reports']:.2f} s, "
                    f"postgres_cpu {spent:.2f} s",
                    flush=True,
                )
    admin.dispose()
    for tree, measured in times.items():
        fees = statistics.median(run["fees"] for run in measured)
        written = statistics.median(run["reports"] for run in measured)
        cpu = statistics.median(run["postgres_cpu"] for run in measured)
        print(f"code={tree} fees_s={fees:.2f} reports_s={written:.2f} postgres_cpu_s={cpu:.2f}")


if __name__ == "__main__":
    main()
