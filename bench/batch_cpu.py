"""CPU per event of the batched webhook path, in one process: the worker's share and PostgreSQL's.

    .venv/bin/python bench/batch_cpu.py --events 3000
    .venv/bin/python bench/batch_cpu.py --events 3000 --profile batch.prof   # cProfile of the timed part

``bench/throughput.py`` measures the whole system, whose figures move with the machine by a third within the
hour; this one measures what a change to ``worker.pipeline.ingest_batch`` or to its SQL costs, steadily enough
to compare two checkouts run one after the other (alternate them: A, B, A, B...). With the same set-up as
``bench/throughput.py`` (its ``Bench``: a scratch database, the bench's own redis-server, the sandbox in a
subprocess answering after ``--latency`` seconds, ``--events`` correctly signed CinetPay notifications of
registered payments, the database vacuumed and analyzed), it calls ``ingest_batch`` on batches of
``--batch-size`` envelopes, one after the other in this thread (a worker's pool thread does the same for each
batch), and prints:

- the process's CPU (``time.process_time``) per event: the pipeline's Python, psycopg2, the HTTP client; not
  Celery's consumption of the messages (``bench/throughput.py``'s no-op floor measures that);
- the CPU of the PostgreSQL backends serving the bench's database (``/proc/<pid>/stat``), per event;
- the collector's thresholds and this process's resident memory before and after the timed batches (the
  warm-up batch's objects are frozen and the thresholds set as a started worker does: ``--gc-young`` overrides
  the youngest generation's);
- per table, the sequential and index scans the timed part made (``pg_stat_user_tables``): a sequential scan
  per event of a growing table is how a statement or a foreign key check that reads too much shows up.

The first batch is not timed (connections, caches). Needs PostgreSQL as for the tests (``PAYRECON_TEST_PG``)
and ``redis-server`` on PATH; PostgreSQL's processes must be visible from here (the same machine) for its CPU.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's code, whatever the environment has installed
sys.path.insert(0, str(ROOT / "bench"))

from throughput import CLOCK_TICKS, PG_BASE, Bench, _proc_table, _tree_ticks

from tests.helpers import scratch_database
from worker import pipeline
from worker.signals import _freeze_startup_objects


def _backend_seconds(bench: Bench) -> float:
    """CPU seconds so far of the PostgreSQL backends serving the bench's database."""
    return _tree_ticks(bench.bench_db_backends(), _proc_table()) / CLOCK_TICKS


def _rss_kib() -> int:
    """This process's resident memory now, KiB (``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _scans(bench: Bench) -> dict[str, tuple[int, int, int]]:
    """Per table: sequential scans, rows they read, index scans (cumulative)."""
    with bench.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT relname, seq_scan, seq_tup_read, coalesce(idx_scan, 0) FROM pg_stat_user_tables")
        )
        return {name: (seq, read, idx) for name, seq, read, idx in rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=3000, help="notifications to settle (default 3000)")
    parser.add_argument("--batch-size", type=int, default=100, help="envelopes per ingest_batch call (default 100)")
    parser.add_argument("--latency", type=float, default=0.01, help="the sandbox's answer time, s (default 0.01)")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the timed part there")
    parser.add_argument(
        "--gc-young",
        type=int,
        help="the youngest generation's threshold after the warm-up (default: the worker's, worker.signals.GC_YOUNG)",
    )
    args = parser.parse_args(argv)
    if args.events < 2 * args.batch_size:
        parser.error("--events must be at least two batches")
    options = argparse.Namespace(latency=args.latency, threads=1, budget="100000,100000", batch_size=args.batch_size,
                                 batch_wait=None)  # fmt: skip
    with scratch_database(PG_BASE, "payrecon_batch_cpu") as db_url:
        bench = Bench(options, db_url, Path(tempfile.mkdtemp(prefix="payrecon-batch-cpu-")))
        with bench.running():
            started = time.monotonic()
            payments = bench.prepare(args.events)
            print(f"prepared {args.events} payments in {time.monotonic() - started:.1f} s", flush=True)
            bench.vacuum()
            envelopes = payments.envelopes
            size = args.batch_size
            pipeline.ingest_batch(bench.rt, envelopes[:size])  # warm-up, not timed
            # What a worker does once started (worker_ready): its objects frozen, its collector's thresholds.
            _freeze_startup_objects()
            if args.gc_young is not None:
                gc.set_threshold(args.gc_young, *gc.get_threshold()[1:])
            rss_before = _rss_kib()
            time.sleep(1)  # the statistics collector's last report (PostgreSQL 15: every second at most)
            scans_before, pg_before = _scans(bench), _backend_seconds(bench)
            profile = cProfile.Profile() if args.profile else None
            cpu_before, wall_before = time.process_time(), time.monotonic()
            if profile is not None:
                profile.enable()
            results: list[Any] = []
            for start in range(size, len(envelopes), size):
                results += pipeline.ingest_batch(bench.rt, envelopes[start : start + size])
            if profile is not None:
                profile.disable()
                profile.dump_stats(args.profile)
            cpu, wall = time.process_time() - cpu_before, time.monotonic() - wall_before
            pg = _backend_seconds(bench) - pg_before
            time.sleep(1)
            scans_after = _scans(bench)
            timed = len(envelopes) - size
            settled, _ = bench.settled(payments.prefix)
            accepted = sum(1 for r in results if getattr(r, "outcome", None) == pipeline.Disposition.ACCEPTED)
            if settled != len(envelopes) or accepted != timed:
                raise SystemExit(f"{settled} of {len(envelopes)} settled, {accepted} of {timed} accepted: see the logs")
            print(f"{timed} events in batches of {size}, sandbox latency {args.latency * 1000:.0f} ms")
            for name in sorted(scans_after):
                before = scans_before.get(name, (0, 0, 0))
                seq, read, idx = (after - b for after, b in zip(scans_after[name], before, strict=True))
                if seq or idx:
                    print(f"  {name}: {seq / timed:.2f} seq scans/event ({read / timed:.0f} rows), "
                          f"{idx / timed:.2f} index scans/event")  # fmt: skip
            memory = f"{rss_before / 1024:.1f} MiB before the timed batches, {_rss_kib() / 1024:.1f} MiB after"
            print(f"  collector thresholds {gc.get_threshold()}; this process's resident memory {memory}")
            print(f"worker_cpu_ms={cpu / timed * 1000:.3f} postgresql_cpu_ms={pg / timed * 1000:.3f} "
                  f"wall_ms={wall / timed * 1000:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
