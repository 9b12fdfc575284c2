"""Reconciliation at scale: import a provider-day statement and classify it against our payments.

    .venv/bin/python bench/reconcile_scale.py --payments 1000000

Builds a throwaway PostgreSQL database with N succeeded CinetPay payments of one business day
(COPY, then VACUUM ANALYZE and a CHECKPOINT, as a nightly run finds them; not timed), writes the
day's statement file (N rows in CinetPay's export format, with 1 % of amounts wrong, 0.5 % missing,
0.1 % duplicated and 500 unknown references), then times ``payrecon statements import`` (COPY to a
stage, one optimistic convert-and-insert in two sessions; each stage's time is printed too: ``checksum``, ``check``,
``copy``, ``insert``, as ``bench/import_ab.py`` names them) and the set-based classification of the
day (two sessions). ``--reports`` also times writing the run's report files (not part of the goal).
Peak memory (max RSS) is printed so that runs of different sizes can be compared. ``--fees``: the
provider takes 50 XOF a payment, and posting the fees to the ledger is timed too (not part of the
goal). ``--rerun`` (with ``--reports``): the day re-run after (a new run pointing at the first, as beat's T+1 and
T+3 runs are), and its report files timed: a re-run's reports also list the changes since the run before.
Needs PostgreSQL as for the tests (PAYRECON_TEST_PG).

The floor, measured in the same run on the same file and database before the timed part: COPY of the
file into an unindexed text table, then one FULL OUTER JOIN of the day's payments and the file's
lines (grouped by reference), classified and inserted into an unindexed table; measured twice, the shorter time
taken (the machine's noise only ever adds: the ratio errs against payrecon, whose timed part runs once), each time
and the timed part after a CHECKPOINT (the WAL of what ran before is not the next one's to write; the bench's role
needs to be a superuser or in ``pg_checkpoint``, as for the setup's CHECKPOINT). The last line printed
is ``total_s=<import + classify> floor_s=<floor> ratio=<total/floor> fees_s=<s|none> reports_s=<s|none>``
(``none``: ``--fees`` or ``--reports`` not given). The fees' and the reports' own lines also give each time as a
multiple of the floor: how fast the machine is shows in the floor, so that figures of two machines compare.
"""

from __future__ import annotations

import argparse
import csv
import io
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import create_engine, func, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reconciliation import migrate
from reconciliation.db import make_engine, session_factory, transaction
from reconciliation.models import ReconItem
from reconciliation.nightly import runs
from reconciliation.statements.files import import_file
from tests.helpers import scratch_database

PG_BASE = os.environ.get("PAYRECON_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")
DAY = date(2026, 11, 20)
TZ = ZoneInfo("Africa/Abidjan")


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reference(i: int, shuffled: bool) -> str:
    """The i-th payment's reference: sequential, or in an order unrelated to time (a bijection)."""
    return f"TXN-{(i * 2_654_435_761) % 2**44 if shuffled else i:012X}"


def seed_payments(url: str, n: int, shuffled: bool) -> None:
    """N succeeded payments of the day, by COPY (setup, not timed)."""
    engine = create_engine(url)
    start = datetime(2026, 11, 20, tzinfo=UTC)
    buffer = io.StringIO()
    out = csv.writer(buffer)
    for i in range(n):
        at = (start + timedelta(seconds=i * 86399 // n)).isoformat()
        out.writerow([
            "cinetpay", reference(i, shuffled), "succeeded", 5000, "XOF", f"acct-{i % 5000}", "depannage-monthly", 1,
            "{}", at, 5000, "XOF", at, "true", at, at, 0,
        ])  # fmt: skip
    buffer.seek(0)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.copy_expert(
            "COPY payments (provider, reference, status, amount, currency, account, plan_code, periods, "
            "provider_data, registered_at, confirmed_amount, confirmed_currency, paid_at, settled, created_at, "
            "updated_at, check_count) FROM STDIN WITH (FORMAT csv)",
            buffer,
        )
        raw.commit()
    finally:
        raw.close()
    # As a nightly run finds the day's payments, written through the day: vacuumed, analyzed, checkpointed. Fresh
    # from the COPY, the first statement to read them (the floor's) would set their hint bits, and a checkpoint
    # the COPY's WAL set off would run under the timed part.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE) payments"))
        conn.execute(text("CHECKPOINT"))
    engine.dispose()


def write_statement(path: Path, n: int, shuffled: bool, fee: int = 0) -> None:
    start = datetime(2026, 11, 20)  # noqa: DTZ001 - CinetPay writes local (Abidjan) times without offset
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["transaction_id", "operator_id", "payment_date", "amount", "currency", "fees", "status"])
        for i in range(n):
            if i % 200 == 7:
                continue  # missing at the provider
            amount = 4000 if i % 100 == 3 else 5000
            at = (start + timedelta(seconds=i * 86399 // n)).strftime("%Y-%m-%d %H:%M:%S")
            out.writerow([reference(i, shuffled), f"OP{i}", at, amount, "XOF", fee, "ACCEPTED"])
            if i % 1000 == 11:
                out.writerow([reference(i, shuffled), f"OP{i}-DUP", at, amount, "XOF", fee, "ACCEPTED"])
        for j in range(500):
            out.writerow([f"TXN-UNKNOWN{j:06d}", f"OPX{j}", "2026-11-20 12:00:00", 5000, "XOF", 0, "ACCEPTED"])


def checkpoint(url: str) -> None:
    """A CHECKPOINT: what ran before leaves no WAL and no dirty pages for the next measured step to pay for."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("CHECKPOINT"))
    finally:
        engine.dispose()


def measure_floor(url: str, statement: Path) -> float:
    """Seconds for COPY of the file into an unindexed text table + a set-based classification of the
    day into an unindexed table: what no implementation of import + classify can beat by much."""
    checkpoint(url)
    engine = create_engine(url)
    start, end = datetime(2026, 11, 20, tzinfo=UTC), datetime(2026, 11, 21, tzinfo=UTC)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(
            "CREATE TABLE floor_stage (transaction_id text, operator_id text, payment_date text, amount text, "
            "currency text, fees text, status text); "
            "CREATE TABLE floor_items (reference text, cls text, internal_amount bigint, provider_amount bigint)"
        )
        raw.commit()
        started = time.perf_counter()
        with statement.open("rb") as fh:
            cursor.copy_expert("COPY floor_stage FROM STDIN WITH (FORMAT csv, HEADER)", fh)
        cursor.execute(
            """
            INSERT INTO floor_items (reference, cls, internal_amount, provider_amount)
            SELECT coalesce(p.reference, s.transaction_id),
                   CASE WHEN p.id IS NULL THEN 'missing_in_ledger'
                        WHEN s.transaction_id IS NULL THEN 'missing_at_provider'
                        WHEN s.n > 1 THEN 'duplicate'
                        WHEN p.amount <> s.amount THEN 'amount_mismatch'
                        ELSE 'matched' END,
                   p.amount, s.amount
              FROM (SELECT id, reference, amount FROM payments
                     WHERE provider = 'cinetpay' AND created_at >= %s AND created_at < %s) AS p
              FULL JOIN (SELECT transaction_id, sum(amount::bigint) AS amount, count(*) AS n
                           FROM floor_stage GROUP BY transaction_id) AS s
                ON s.transaction_id = p.reference
            """,
            (start, end),
        )
        raw.commit()
        floor = time.perf_counter() - started
        cursor.execute("DROP TABLE floor_stage, floor_items")
        raw.commit()
    finally:
        raw.close()
    engine.dispose()
    return floor


def _setup(url: str, n: int, statement: Path, shuffled: bool, fee: int) -> None:
    seed_payments(url, n, shuffled)
    write_statement(statement, n, shuffled, fee)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payments", type=int, default=1_000_000)
    parser.add_argument("--reports", action="store_true", help="also time writing the run's report files")
    parser.add_argument(
        "--fees", action="store_true", help="the provider takes 50 XOF a payment: also time posting the fees"
    )
    parser.add_argument(
        "--random-references", action="store_true", help="references in no relation to time (B-trees work harder)"
    )
    parser.add_argument(
        "--rerun",
        action="store_true",
        help="then re-run the day (a new run after the first, as at T+1) and time its report files (with --reports)",
    )
    args = parser.parse_args()
    if args.rerun and not args.reports:
        parser.error("--rerun times the re-run's report files: give --reports too")
    with scratch_database(PG_BASE, "payrecon_scale") as url:
        migrate.upgrade(url)
        with tempfile.TemporaryDirectory() as tmp:
            statement = Path(tmp) / "cinetpay-2026-11-20.csv"
            t = time.perf_counter()
            # Setup in a child process, so that this process's peak memory is the timed part's.
            setup = multiprocessing.get_context("spawn").Process(
                target=_setup, args=(url, args.payments, statement, args.random_references, 50 if args.fees else 0)
            )
            setup.start()
            setup.join()
            print(f"seeded {args.payments} payments and wrote the statement in {time.perf_counter() - t:.1f} s")
            size = statement.stat().st_size / 2**20
            floors = [measure_floor(url, statement) for _ in range(2)]
            floor = min(floors)
            print(
                "floor (COPY into an unindexed text table + classify into an unindexed table): "
                f"{floor:.2f} s (the shorter of {', '.join(f'{f:.2f}' for f in floors)} s)"
            )
            checkpoint(url)
            engine = make_engine(url, pool_size=2)
            sessions = session_factory(engine)
            rss0 = max_rss_mib()
            stages: dict[str, float] = {}  # the import's stages, from the first report of each

            def heard(stage: str, done: int, total: int) -> None:
                stages.setdefault(stage, time.perf_counter())

            started = time.perf_counter()
            with transaction(sessions) as session:
                imported = import_file(session, "cinetpay", statement, business_tz=TZ, progress=heard)
            imported_at = time.perf_counter()
            policy = runs.Policy(tz=TZ, sla=3600)
            run_id = runs.start(sessions, "cinetpay", DAY, policy, "manual")
            items = runs.classify_run(sessions, run_id, policy)
            done = time.perf_counter()
        with sessions() as session:
            counts = dict(
                session.execute(
                    select(ReconItem.cls, func.count()).where(ReconItem.run_id == run_id).group_by(ReconItem.cls)
                ).all()
            )
        print(f"statement: {imported.rows} rows, {size:.0f} MiB")
        print(f"import (COPY, convert, validate, insert): {imported_at - started:.2f} s")
        marks = [*sorted(stages.items(), key=lambda item: item[1]), ("end", imported_at)]
        print("  " + ", ".join(f"{name} {marks[i + 1][1] - at:.2f} s" for i, (name, at) in enumerate(marks[:-1])))
        print(f"match + classify ({items} items): {done - imported_at:.2f} s")
        print(
            f"total: {done - started:.2f} s; peak memory {max_rss_mib():.0f} MiB (before the timed part {rss0:.0f} MiB)"
        )
        print(f"classes: {dict(sorted(counts.items()))}")
        fees_s = reports_s = "none"
        if args.fees:
            started_fees = time.perf_counter()
            fees = runs.post_fees(sessions, run_id)
            fees_s = f"{time.perf_counter() - started_fees:.2f}"
            print(f"fees posted ({fees} payments): {fees_s} s ({float(fees_s) / floor:.2f} x the floor); "
                  f"peak memory {max_rss_mib():.0f} MiB")  # fmt: skip
        if args.reports:
            from reconciliation.reports import run as reports

            written = time.perf_counter()
            with tempfile.TemporaryDirectory() as out, sessions() as session:
                files = reports.export_all(session, run_id, Path(out))
                reports_s = f"{time.perf_counter() - written:.2f}"
                size_mib = sum(p.stat().st_size for p in files) / 2**20
                print(f"reports ({len(files)} files, {size_mib:.0f} MiB): {reports_s} s "
                      f"({float(reports_s) / floor:.2f} x the floor); peak memory {max_rss_mib():.0f} MiB")  # fmt: skip
        if args.rerun:  # with --reports: reports imported above
            rerun_id = runs.start(sessions, "cinetpay", DAY, policy, "rerun")
            runs.classify_run(sessions, rerun_id, policy)
            written = time.perf_counter()
            with tempfile.TemporaryDirectory() as out, sessions() as session:
                files = reports.export_all(session, rerun_id, Path(out))
                seconds = time.perf_counter() - written
                changed = reports.count_changes(session, rerun_id)
                print(f"re-run's reports ({len(files)} files, {changed} changes): {seconds:.2f} s")
        engine.dispose()
        total = done - started
        print(
            f"total_s={total:.2f} floor_s={floor:.2f} ratio={total / floor:.2f} fees_s={fees_s} reports_s={reports_s}"
        )


if __name__ == "__main__":
    main()
