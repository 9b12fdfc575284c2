"""A business day's payments found among all those ever stored: what a nightly run reads first (#14).

    .venv/bin/python bench/day_lookup.py --days 5 --per-day 1000000 --window-minutes 15 --repeat 3

Classification (``matching.classification``), the status-API run (``payments.to_confirm``) and the
day-at-a-glance report select a provider's payments by ``coalesce(paid_at, registered_at, created_at)`` in the
business window; migration 0017's index ``ix_payments_business_time`` finds them without reading the rest of
the table, so a merchant's nightly run does not grow with its history. This builds a throwaway database with
``--days`` days of ``--per-day`` succeeded CinetPay payments each (``generate_series``, not timed; the last day
also holds as many Wave payments: another provider's busy day, which must not be read either), ``VACUUM
ANALYZE``, then times, ``--repeat`` times each and alternated:

- **with the index**: ``EXPLAIN ANALYZE`` of the classifying statement itself for a ``--window-minutes``
  window of the last day (its ``INSERT`` rolled back; the day has no statement lines, so the join is empty and
  what is timed is finding the payments), and ``payments.to_confirm`` for the window (the ORM loading them);
- **without it**: the same, in a transaction that drops the index first and is rolled back;
- **the floor**: the classification's own projection of the payments (its columns, computed) over an unindexed
  table holding only the window's payments, timed at its scan node as the figures it is set against (what
  reading them costs when nothing else is there).

Prints each statement's execution time and its payments scan's, and as its last line
``rows=<n> with_index_ms=<median> without_index_ms=<median> floor_ms=<median> ratio=<with/floor>``.
Needs PostgreSQL as for the tests (``PAYRECON_TEST_PG``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reconciliation import migrate
from reconciliation.db import make_engine, session_factory
from reconciliation.nightly import matching
from reconciliation.payments import to_confirm
from tests.helpers import scratch_database

PG_BASE = os.environ.get("PAYRECON_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")
LAST_DAY = datetime(2026, 11, 20, tzinfo=UTC)
INDEX = "ix_payments_business_time"

_SEED = """
INSERT INTO payments (provider, reference, status, amount, currency, account, plan_code, periods, provider_data,
                      registered_at, confirmed_amount, confirmed_currency, paid_at, settled, created_at, updated_at,
                      check_count)
SELECT p.provider, upper(left(p.provider, 3)) || '-' || d || '-' || i, 'succeeded', 5000, 'XOF', 'acct-' || (i % 5000),
       'depannage-monthly', 1, '{}', t.at, 5000, 'XOF', t.at, true, t.at, t.at, 0
  FROM generate_series(0, :days - 1) AS d,
       generate_series(0, :per_day - 1) AS i,
       LATERAL (SELECT :last_day - d * interval '1 day' + i * (86399.0 / :per_day) * interval '1 second' AS at) AS t,
       LATERAL (SELECT 'cinetpay' AS provider UNION ALL SELECT 'wave' WHERE d = 0) AS p
"""


def _scan(node: dict[str, Any], relation: str) -> dict[str, Any] | None:
    """The node of a JSON plan that reads ``relation``."""
    if node.get("Relation Name") == relation and node["Node Type"] != "ModifyTable":
        return node
    for child in node.get("Plans", []):
        found = _scan(child, relation)
        if found is not None:
            return found
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=5, help="days of CinetPay payments stored")
    parser.add_argument("--per-day", type=int, default=1_000_000, help="payments a day (each provider)")
    parser.add_argument("--window-minutes", type=int, default=15, help="the business window looked up, in minutes")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    start = LAST_DAY + timedelta(hours=12)
    end = start + timedelta(minutes=args.window_minutes)
    window = matching.Window(provider="cinetpay", start=start, end=end, sla_cutoff=start)
    params = {"run_id": 0, "provider": "cinetpay", "start": start, "end": end, "sla_cutoff": start,
              "tolerance": 0, "fee_bps": None, "day": LAST_DAY.date()}  # fmt: skip
    with scratch_database(PG_BASE, "payrecon_day_lookup") as url:
        migrate.upgrade(url)
        engine = make_engine(url, pool_size=2)
        sessions = session_factory(engine)
        seeded = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(text(_SEED), {"days": args.days, "per_day": args.per_day, "last_day": LAST_DAY})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE payments"))
            total = conn.execute(text("SELECT count(*) FROM payments")).scalar_one()
            conn.execute(
                text(
                    "CREATE TABLE day_floor AS SELECT * FROM payments WHERE provider = 'cinetpay' "
                    "AND coalesce(paid_at, registered_at, created_at) >= :start "
                    "AND coalesce(paid_at, registered_at, created_at) < :end"
                ),
                {"start": window.start, "end": window.end},
            )
            conn.execute(text("VACUUM ANALYZE day_floor"))
            rows = conn.execute(text("SELECT count(*) FROM day_floor")).scalar_one()
        print(
            f"{total} payments over {args.days} days (and a day of Wave's) in {time.perf_counter() - seeded:.1f} s; "
            f"{rows} CinetPay payments in the {args.window_minutes}-minute window"
        )

        def classify(drop: bool) -> tuple[float, float, str]:
            """(the statement's ms, its payments scan's ms, that scan's node type)."""
            with sessions() as session:
                if drop:
                    session.execute(text(f"DROP INDEX {INDEX}"))
                plan = session.execute(
                    matching.classification(prefix="EXPLAIN (ANALYZE, FORMAT JSON) "), params
                ).scalar_one()[0]
                session.rollback()
            scan = _scan(plan["Plan"], "payments")
            if scan is None or int(scan["Actual Rows"]) != rows:
                raise SystemExit(f"the classification did not read the window's {rows} payments: {scan}")
            return float(plan["Execution Time"]), float(scan["Actual Total Time"]), str(scan["Node Type"])

        def confirm(drop: bool) -> float:
            with sessions() as session:
                if drop:
                    session.execute(text(f"DROP INDEX {INDEX}"))
                began = time.perf_counter()
                found = to_confirm(session, "cinetpay", window.start, window.end)
                spent = 1000 * (time.perf_counter() - began)
                session.rollback()
            if not found:
                raise SystemExit("to_confirm found no payment in the window")
            return spent

        # The classification's own projection of the payments (its columns, deformed and computed), over a table
        # holding only the window's payments, timed at the scan node as the figures it is set against.
        select = matching._CLASSIFY[matching._CLASSIFY.index("SELECT id AS payment_id") :]
        select = select[: select.index("FROM payments")]
        floor_sql = text(f"EXPLAIN (ANALYZE, FORMAT JSON) {select} FROM day_floor")

        def floor() -> float:
            with sessions() as session:
                plan = session.execute(floor_sql).scalar_one()[0]
            scan = _scan(plan["Plan"], "day_floor")
            if scan is None or int(scan["Actual Rows"]) != rows:
                raise SystemExit(f"the floor did not read the window's {rows} payments: {scan}")
            return float(scan["Actual Total Time"])

        figures: dict[str, list[float]] = {name: [] for name in ("with", "without", "floor", "confirm with",
                                                                 "confirm without")}  # fmt: skip
        classify(False), floor(), confirm(False)  # caches (and SQLAlchemy's first query) warm for every step alike
        for _ in range(args.repeat):
            for drop in (False, True):
                spent, scan_ms, node = classify(drop)
                name = "without" if drop else "with"
                figures[name].append(scan_ms)
                print(f"classification {name} the index: {spent:.1f} ms; its payments: {node}, {scan_ms:.1f} ms")
            figures["floor"].append(floor())
            print(f"floor (the window's payments alone, read whole): {figures['floor'][-1]:.2f} ms")
            for drop in (False, True):
                name = "without" if drop else "with"
                figures[f"confirm {name}"].append(confirm(drop))
                print(f"payments.to_confirm {name} the index: {figures[f'confirm {name}'][-1]:.1f} ms (ORM objects)")
        engine.dispose()
    median = {name: statistics.median(values) for name, values in figures.items()}
    print(
        f"rows={rows} with_index_ms={median['with']:.2f} without_index_ms={median['without']:.2f} "
        f"floor_ms={median['floor']:.2f} ratio={median['with'] / median['floor']:.2f}"
    )


if __name__ == "__main__":
    main()
