"""How long migration 0025 takes over a day of fees posted a journal each (its backfill and its check).

    # 1. with the code before 0025 (a checkout of 1c9e94e at /work/wtA): a day of N payments, its fees a journal each
    cd /work/wtA && PYTHONPATH=/work/wtA /work/main/.venv/bin/python <this file> before 1000000
    # 2. with this tree: time ``migrate.upgrade`` (0024 -> 0025), check the postings, drop the database
    cd /work/main && PYTHONPATH=/work/main .venv/bin/python <this file> after
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from bench import reconcile_scale as rs
from reconciliation import migrate
from reconciliation.db import make_engine, session_factory, transaction
from reconciliation.nightly import runs
from reconciliation.statements.files import import_file

NAME = "payrecon_probe_0025"
URL = f"{rs.PG_BASE}/{NAME}"


def admin(sql: str) -> None:
    engine = create_engine(f"{rs.PG_BASE}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(sql))
    engine.dispose()


if sys.argv[1] == "before":
    n = int(sys.argv[2])
    admin(f'DROP DATABASE IF EXISTS "{NAME}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{NAME}"')
    migrate.upgrade(URL)
    with tempfile.TemporaryDirectory() as tmp:
        statement = Path(tmp) / "cinetpay-2026-11-20.csv"
        rs._setup(URL, n, statement, False, 50)
        sessions = session_factory(make_engine(URL, pool_size=2))
        with transaction(sessions) as session:
            import_file(session, "cinetpay", statement, business_tz=rs.TZ)
        policy = runs.Policy(tz=rs.TZ, sla=3600)
        run_id = runs.start(sessions, "cinetpay", rs.DAY, policy, "manual")
        runs.classify_run(sessions, run_id, policy)
        print("fee journals posted:", runs.post_fees(sessions, run_id))
    rs.checkpoint(URL)
else:
    engine = create_engine(URL)
    with engine.connect() as conn:
        print("at", conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one(),
              "fee journals", conn.execute(text("SELECT count(*) FROM ledger_journals WHERE kind = 'fee'")).scalar_one())
    t = time.perf_counter()
    migrate.upgrade(URL)
    print(f"upgrade to 0025: {time.perf_counter() - t:.2f} s")
    with engine.connect() as conn:
        print("postings", conn.execute(text("SELECT count(*), sum(amount) FROM fee_postings")).one())
    engine.dispose()
    admin(f'DROP DATABASE IF EXISTS "{NAME}" WITH (FORCE)')
