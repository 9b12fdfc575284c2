"""One classifying share alone, then the day's shares side by side: what the sessions cost each other (#14).

    .venv/bin/python bench/classify_shares.py --payments 1000000 --rounds 3
    .venv/bin/python bench/classify_shares.py --payments 1000000 --rounds 3 --exceptions-only

``bench/reconcile_scale.py`` runs the classification in two sessions side by side (``runs.classify_run``); on a
two-core machine they are worth less than two of one. Here the bench's CinetPay day (``reconcile_scale``: N
payments, vacuumed, analyzed and checkpointed, and the day's statement imported) is classified over and over,
each time rolled back: share 0 of ``--shares`` alone, then all the shares at once, one session each (threads),
``--rounds`` times. Meanwhile ``pg_stat_activity`` is sampled every 50 ms for what the classifying sessions wait
on (``CPU`` when they wait on nothing). ``--exceptions-only``: the same statement writing only the exceptions (the
matched items not inserted), to tell the inserts' share of the cost and of the contention from the rest;
``--packed``: the exceptions as rows and the matched items packed ``PACK`` to a row of a scratch table, an array per
column (what a run storing its matched items compactly would write). For
comparison, two pure-CPU queries (a hash of six million numbers each) alone and side by side, which share nothing
(sampled too, so that the sampler costs both the same).

Last line: ``alone_s=<median> together_s=<median of the slowest share> cpu_alone_s=<median> cpu_together_s=<median>``.
Needs PostgreSQL as for the tests (``PAYRECON_TEST_PG``).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import reconcile_scale

from reconciliation import migrate
from reconciliation.db import make_engine, session_factory, transaction
from reconciliation.nightly import matching, runs
from reconciliation.statements.files import import_file
from tests.helpers import scratch_database

PG_BASE = os.environ.get("PAYRECON_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")
CPU_QUERY = "SELECT sum(hashtext(i::text)) FROM generate_series(1, 6000000) AS i"


class Waits:
    """What the client sessions of one database wait on, sampled every 50 ms while ``with`` lasts."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.seen, self.stop = engine, collections.Counter[str](), threading.Event()

    def __enter__(self) -> Waits:
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _sample(self) -> None:
        conn = self.engine.raw_connection()
        try:
            cursor = conn.cursor()
            while not self.stop.is_set():
                cursor.execute(
                    "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity "
                    "WHERE datname = current_database() AND state = 'active' AND backend_type = 'client backend' "
                    "AND pid <> pg_backend_pid()"
                )
                self.seen.update(event for (event,) in cursor.fetchall())
                conn.commit()  # the next sample in a transaction of its own: a new view of the sessions
                time.sleep(0.05)
        finally:
            conn.close()

    def shares(self) -> str:
        total = sum(self.seen.values()) or 1
        return ", ".join(f"{event} {n * 100 / total:.1f} %" for event, n in self.seen.most_common(8))


def _cpu_pair(engine: Engine) -> tuple[float, float]:
    """Seconds for the CPU query alone, and for the slower of two at once."""

    def one() -> float:
        conn = engine.raw_connection()
        try:
            cursor = conn.cursor()
            cursor.execute("SET LOCAL max_parallel_workers_per_gather = 0")  # one backend each
            started = time.perf_counter()
            cursor.execute(CPU_QUERY)
            cursor.fetchall()
            return time.perf_counter() - started
        finally:
            conn.close()  # rolled back: the setting goes with the transaction

    alone = one()
    with ThreadPoolExecutor(2) as pool:
        together = [job.result() for job in [pool.submit(one) for _ in range(2)]]
    return alone, max(together)


#: Matched items a row of the ``--packed`` variant.
PACK = 10_000
#: The ``--packed`` variant's table: the matched items' columns that differ between items, as arrays.
PACKED_TABLE = """
CREATE TABLE packed_matches (run_id bigint, part bigint, payment_ids bigint[], refs text[], txn_ids text[],
                             internal_amounts bigint[], provider_amounts bigint[], fees bigint[], lines int[])
"""


def _packed(statement: str) -> str:
    """The classifying statement writing its exceptions to ``recon_items`` and its matched items ``PACK`` to a row of
    ``packed_matches`` (one pass over the classified rows, materialized once)."""
    insert, select = statement.split("SELECT :run_id, cls,", 1)
    if "INSERT INTO recon_items" not in insert:
        raise SystemExit("the classifying statement changed: --packed no longer knows where to cut")
    columns = insert[insert.index("(") :].strip()
    return (
        f"WITH c AS MATERIALIZED (SELECT :run_id AS run_id, cls,{select}),\n"  # noqa: S608 - our own statement
        f"exceptions AS (INSERT INTO recon_items {columns} SELECT * FROM c WHERE cls <> 'matched')\n"
        "INSERT INTO packed_matches SELECT :run_id, part, array_agg(payment_id), array_agg(reference), "
        "array_agg(provider_txn_id), array_agg(internal_amount), array_agg(provider_amount), array_agg(fee), "
        f"array_agg(provider_lines) FROM (SELECT c.*, (row_number() OVER ()) / {PACK} AS part FROM c "
        "WHERE cls = 'matched') AS m GROUP BY part"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payments", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shares", type=int, default=2, help="sessions side by side (PAYRECON_RECON_SESSIONS)")
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument("--exceptions-only", action="store_true", help="write only the exceptions, not the matched")
    variant.add_argument("--packed", action="store_true", help=f"the matched items {PACK} to a row, in arrays")
    args = parser.parse_args()
    if args.packed:
        matching._CLASSIFY = _packed(matching._CLASSIFY)
    if args.exceptions_only:
        if matching._CLASSIFY.count("WHERE cls IS NOT NULL") != 1:
            raise SystemExit("the classifying statement changed: --exceptions-only no longer knows where to cut")
        matching._CLASSIFY = matching._CLASSIFY.replace(  # a variant of the statement, for this bench
            "WHERE cls IS NOT NULL", "WHERE cls IS NOT NULL AND cls <> 'matched'"
        )
    with scratch_database(PG_BASE, "payrecon_shares") as url, tempfile.TemporaryDirectory() as tmp:
        migrate.upgrade(url)
        if args.packed:
            with make_engine(url).begin() as conn:
                conn.execute(text(PACKED_TABLE))
        statement = Path(tmp) / "cinetpay-2026-11-20.csv"
        reconcile_scale.seed_payments(url, args.payments, False)
        reconcile_scale.write_statement(statement, args.payments, False)
        engine = make_engine(url, pool_size=args.shares)
        sessions = session_factory(engine)
        with transaction(sessions) as session:
            import_file(session, "cinetpay", statement, business_tz=reconcile_scale.TZ)
        policy = runs.Policy(tz=reconcile_scale.TZ, sla=3600)
        run_id = runs.start(sessions, "cinetpay", reconcile_scale.DAY, policy, "manual")
        with sessions() as session:
            window = session.execute(
                text("SELECT window_start, window_end FROM recon_runs WHERE id = :id"), {"id": run_id}
            ).one()
        day = matching.Window(
            provider="cinetpay", start=window[0], end=window[1], sla_cutoff=datetime.now(UTC) - timedelta(hours=1)
        )

        def share(k: int, out: list[float]) -> None:
            with sessions() as session:  # as classify does, rolled back: each round classifies the same day
                started = time.perf_counter()
                matching.classify(session, run_id, day, reconcile_scale.DAY, (k, args.shares))
                out.append(time.perf_counter() - started)
                session.rollback()

        share(0, [])  # the lines' hint bits set, the caches warm: not timed
        alone, together, cpu_alone, cpu_together = [], [], [], []
        for n in range(args.rounds):
            one: list[float] = []
            with Waits(engine) as waits_alone:
                share(0, one)
            side: list[float] = []
            with Waits(engine) as waits_side, ThreadPoolExecutor(args.shares) as pool:
                for job in [pool.submit(share, k, side) for k in range(args.shares)]:
                    job.result()  # a share that failed fails the bench
            with Waits(engine):  # the sampler's own cost, as for the shares
                pair = _cpu_pair(engine)
            alone.append(one[0])
            together.append(max(side))
            cpu_alone.append(pair[0])
            cpu_together.append(pair[1])
            shares = ", ".join(f"{s:.2f}" for s in side)
            print(
                f"{n + 1}: share alone {one[0]:.2f} s; {args.shares} side by side {shares} s; "
                f"CPU query alone {pair[0]:.2f} s, two at once {pair[1]:.2f} s",
                flush=True,
            )
            print(f"   waits alone: {waits_alone.shares()}")
            print(f"   waits side by side: {waits_side.shares()}", flush=True)
        engine.dispose()
    print(
        f"alone_s={statistics.median(alone):.2f} together_s={statistics.median(together):.2f} "
        f"cpu_alone_s={statistics.median(cpu_alone):.2f} cpu_together_s={statistics.median(cpu_together):.2f}"
    )


if __name__ == "__main__":
    main()
