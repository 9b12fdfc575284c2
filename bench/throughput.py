"""Webhook throughput with a slow provider: verified and settled events per second.

    .venv/bin/python bench/throughput.py --events 3000 --latency 0.2 --threads 64 --processes 2

Builds a throwaway PostgreSQL database, fills the sandbox with N accepted CinetPay
transactions (each check answered after ``--latency`` seconds), registers the N
payments, queues N signed notifications on Redis, then starts real worker processes
and times them from ready until every payment is settled (ledger + grant).
Needs PostgreSQL and Redis as for the tests (PAYRECON_TEST_PG, PAYRECON_TEST_REDIS).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
from celery import Celery
from sqlalchemy import create_engine, func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from providers.sandbox.client import SandboxClient
from providers.sandbox.server import SandboxServer
from reconciliation import migrate
from reconciliation.models import Payment
from tests.helpers import scratch_database
from worker import pipeline, runtime
from worker.settings import Settings

PG_BASE = os.environ.get("PAYRECON_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")
REDIS_BASE = os.environ.get("PAYRECON_TEST_REDIS", "redis://127.0.0.1:6379")
CREDS = {"api_key": "bench-key", "site_id": "100000", "secret_key": "bench-secret"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--latency", type=float, default=0.2, help="provider answer time, seconds")
    parser.add_argument("--threads", type=int, default=64, help="threads per worker process")
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--redis-db", type=int, default=12)
    parser.add_argument(
        "--budget",
        default="100000,100000",
        help="CinetPay's call budget, CALLS_PER_SECOND,BURST (default: high enough not to be what is measured; "
        "the production profile's 5/s would cap the run at 5 events/s)",
    )
    args = parser.parse_args()
    with scratch_database(PG_BASE, "payrecon_bench") as db_url:
        run(args, db_url)


def run(args: argparse.Namespace, db_url: str) -> None:
    broker = f"{REDIS_BASE}/{args.redis_db}"
    redis.Redis.from_url(broker).flushdb()
    workers: list[subprocess.Popen[bytes]] = []
    sandbox = SandboxServer(
        cinetpay_api_key=CREDS["api_key"],
        cinetpay_site_id=CREDS["site_id"],
        cinetpay_secret_key=CREDS["secret_key"],
        latency=args.latency,
    ).start()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "CELERY_BROKER_URL": broker,
        "CINETPAY_API_URL": sandbox.url,
        "CINETPAY_API_KEY": CREDS["api_key"],
        "CINETPAY_SITE_ID": CREDS["site_id"],
        "CINETPAY_SECRET_KEY": CREDS["secret_key"],
        "PAYRECON_WORKER_CONCURRENCY": str(args.threads),
        "PAYRECON_BUDGET_CINETPAY": args.budget,
    }
    try:
        migrate.upgrade(db_url)
        rt = runtime.build(Settings.from_env(env))
        refs = [f"TXN-B{i:011X}" for i in range(args.events)]
        control = SandboxClient(sandbox.url)

        def prepare(ref: str) -> dict[str, object]:
            control.create_cinetpay(ref, 5000)
            pipeline.register_payment(
                rt,
                {
                    "schema": "payrecon.payment/1",
                    "provider": "cinetpay",
                    "reference": ref,
                    "amount": 5000,
                    "currency": "XOF",
                    "account": f"acct-{ref}",
                    "plan": "depannage-monthly",
                    "periods": 1,
                },
            )
            return control.cinetpay_notification(ref)

        started = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            envelopes = list(pool.map(prepare, refs))
        print(f"prepared {len(refs)} transactions and registrations in {time.perf_counter() - started:.1f} s")
        producer = Celery("bench", broker=broker)
        producer.conf.update(task_serializer="json")
        started = time.perf_counter()
        for envelope in envelopes:
            producer.send_task("payrecon.ingest_webhook", kwargs={"envelope": envelope}, queue="webhooks")
        print(f"queued {len(envelopes)} deliveries in {time.perf_counter() - started:.1f} s")
        producer.close()

        logdir = Path(tempfile.mkdtemp(prefix="payrecon-bench-"))
        for n in range(args.processes):
            log = (logdir / f"w{n}.log").open("wb")
            workers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "worker.app",
                        "worker",
                        "-P",
                        "threads",
                        "-c",
                        str(args.threads),
                        "-Q",
                        "webhooks,verify",
                        "-n",
                        f"bench{n}@%h",
                        "--without-gossip",
                        "--without-mingle",
                        "--without-heartbeat",
                        "-l",
                        "warning",
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        engine = create_engine(db_url)
        started = time.perf_counter()
        done = 0
        while done < args.events:
            time.sleep(0.2)
            with engine.connect() as conn:
                done = conn.execute(select(func.count()).select_from(Payment).where(Payment.settled)).scalar_one()
            if time.perf_counter() - started > 600:
                raise SystemExit(f"timed out with {done} settled; logs in {logdir}")
        elapsed = time.perf_counter() - started
        engine.dispose()
        rt.close()
        print(
            f"settled {args.events} events in {elapsed:.2f} s = {args.events / elapsed:.0f} events/s "
            f"(provider latency {args.latency * 1000:.0f} ms, {args.processes} process(es) x {args.threads} threads; "
            "includes worker start-up)"
        )
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(timeout=30)
        sandbox.stop()
        redis.Redis.from_url(broker).flushdb()


if __name__ == "__main__":
    main()
