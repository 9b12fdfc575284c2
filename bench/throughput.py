"""Webhook throughput with a slow provider, next to Celery's no-op floor, and the latency at half load.

    .venv/bin/python bench/throughput.py --events 1000 --latency 0.2 --threads 64 --processes 2
    .venv/bin/python bench/throughput.py --events 1000 --sweep 1,10,50,100,200 --json throughput.json
    .venv/bin/python bench/plot_throughput.py throughput.json throughput.png

Every event is a correctly signed CinetPay notification for a registered payment (the sandbox answers each
check after ``--latency`` seconds). In one run, with the same settings:

1. **No-op floor**: ``--processes`` Celery workers started exactly like payrecon's (same command line, same
   ``celeryconfig``, same patched Redis fetch, the environment of the first payrecon run below) but for
   ``bench/noop_app.py``, whose ``payrecon.ingest_webhook`` does nothing, consume ``--events`` messages
   identical to payrecon's.
2. **payrecon**: the real workers (``celery -A worker.app worker -P threads -c THREADS``) verify and settle
   ``--events`` fresh payments; events/s. ``--batch-size`` / ``--batch-wait`` / ``--batch-prefetch`` set
   ``PAYRECON_BATCH_SIZE`` / ``PAYRECON_BATCH_WAIT`` / ``PAYRECON_BATCH_PREFETCH`` for them (unset: the project's
   defaults; a worker without batching ignores them); ``--sweep 1,10,50`` runs this step and the next once per
   batch size (the floor is measured once).
3. **Half load**: the same workers, still running, get ``--latency-events`` fresh payments from a paced
   producer at half the rate just measured; enqueue→settled p50/p95/p99 per payment.

Both timed runs start when the workers are polling the queue (their start-up is left out): the messages
are queued beforehand under another Redis key and moved onto the ``webhooks`` queue in one ``RENAME``.
They end at the latest completion (the no-op task's wall time; payrecon's ``payments.finalized_at``, see
``Bench.settle_times``); the queue, its ``:incoming`` list and the ``unacked`` hash are then checked empty.
Before each payrecon run the database is vacuumed and analyzed, so every batch size starts alike.

CPU per event (ms), from ``/proc/<pid>/stat`` (utime + stime, and the reaped children's cutime + cstime)
over each timed (full-speed) window, split by process: ``workers`` (with any children); ``postgresql``,
the whole cluster (every child of its postmaster: on a shared machine, other databases' work in the window
counts too) and, within it, ``postgresql_bench_db``, the backends of the bench's own database (without
the WAL writer, checkpointer and other background processes); ``redis`` (a redis-server of the bench's
own, no persistence, like the machine's); ``sandbox`` (a subprocess of its own); ``driver`` (this
process: it polls for the end); ``machine`` (all cores, ``/proc/stat``), of which ``interrupts`` (charged
to no process: loopback networking's softirqs) and ``other``: the machine less the processes above
(interrupts, and other users' work on a shared machine). For payrecon, ``cores busy``: ``machine`` times
events/s over the cores: below ~90 % at full speed, the workers waited on something other than the CPU.

Needs PostgreSQL as for the tests (``PAYRECON_TEST_PG``) and ``redis-server`` on PATH. The last line is
machine-readable (with ``--sweep``, the batch size with the most events/s):
``events_per_s=<x> noop_floor_per_s=<y> ratio=<x/y> p99_half_load_ms=<z>``. ``--json PATH`` writes
every figure, the machine and the PostgreSQL settings (``bench/plot_throughput.py`` plots them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from sqlalchemy import Engine, create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from providers.sandbox.client import SandboxClient
from reconciliation import migrate
from schemas.producer import INGEST_TASK, QUEUE
from tests.helpers import PrivateRedis, scratch_database
from worker import pipeline, runtime
from worker.runtime import Runtime
from worker.settings import Settings

PG_BASE = os.environ.get("PAYRECON_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")
CREDS = {"api_key": "bench-key", "site_id": "100000", "secret_key": "bench-secret"}

STAGED = "payrecon-bench:staged"  # where the messages wait until the workers poll
DONE_KEY = "payrecon-bench:noop:done"  # as bench/noop_app.py (not imported: it patches kombu on import)
LAST_KEY = "payrecon-bench:noop:last"
TIMEOUT = 600.0  # seconds, for any one phase
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The provider sandbox in a process of its own, so that its CPU is measurable: ``serve`` as
# ``payrecon sandbox`` runs it, without the per-request log lines (verbose=False) and with the bench's
# credentials. It prints its URL.
SANDBOX_MAIN = """
import sys
from providers.sandbox.server import serve
serve(port=0, verbose=False, latency=float(sys.argv[1]),
      cinetpay_api_key=sys.argv[2], cinetpay_site_id=sys.argv[3], cinetpay_secret_key=sys.argv[4])
"""


class BenchError(Exception):
    """A phase could not run or did not finish; the message says where the logs are."""


def log(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- CPU accounting


@dataclass(frozen=True, slots=True)
class _Proc:
    ppid: int
    own: int  # utime + stime, clock ticks
    reaped: int  # cutime + cstime: children that exited and were waited for


def _proc_table() -> dict[int, _Proc]:
    table: dict[int, _Proc] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
        table[int(entry.name)] = _Proc(
            ppid=int(fields[1]), own=int(fields[11]) + int(fields[12]), reaped=int(fields[13]) + int(fields[14])
        )
    return table


def _tree_ticks(roots: Sequence[int], table: dict[int, _Proc]) -> int:
    """CPU of the processes ``roots`` and all their descendants, the exited ones included (a process that
    exits moves from "live descendant" to its parent's ``reaped`` once waited for: the sum holds)."""
    children: dict[int, list[int]] = {}
    for pid, proc in table.items():
        children.setdefault(proc.ppid, []).append(pid)
    seen: set[int] = set()
    stack = [pid for pid in roots if pid in table]
    total = 0
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += table[pid].own + table[pid].reaped
        stack.extend(children.get(pid, ()))
    return total


def _machine_ticks() -> tuple[int, int]:
    """Busy CPU time of the whole machine, all cores (``/proc/stat``: all but idle and iowait), and the
    part of it spent in interrupts (loopback networking's softirqs mostly: charged to no process)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq + steal, irq + softirq


class CpuMeter:
    """CPU time per group of processes between two snapshots, in ms per event.

    ``trees``: groups of process trees (a root and its descendants, exited ones included). ``sessions``:
    groups of single processes that come and go (PostgreSQL backends): a process seen only in the second
    snapshot started in the window and counts whole; one that ended in the window is missed.
    ``driver`` is this process alone (its children are the other groups), ``machine`` all cores'
    busy time, ``interrupts`` the part of it charged to no process (softirqs: loopback networking),
    ``other`` what the machine did besides the tree groups and the driver (interrupts, other users).
    """

    def __init__(
        self, trees: dict[str, Callable[[], Sequence[int]]], sessions: dict[str, Callable[[], Sequence[int]]]
    ) -> None:
        self.trees = trees
        self.sessions = sessions

    def snapshot(self) -> dict[str, dict[int, int]]:
        pids = {name: list(get()) for name, get in self.sessions.items()}  # before reading /proc
        table = _proc_table()
        ticks = {name: {root: _tree_ticks([root], table) for root in roots()} for name, roots in self.trees.items()}
        for name, group in pids.items():
            ticks[name] = {pid: table[pid].own for pid in group if pid in table}
        me = table.get(os.getpid())
        ticks["driver"] = {0: me.own if me is not None else 0}
        busy, interrupts = _machine_ticks()
        ticks["machine"] = {0: busy}
        ticks["interrupts"] = {0: interrupts}
        return ticks

    def per_event_ms(
        self, before: dict[str, dict[int, int]], after: dict[str, dict[int, int]], events: int
    ) -> dict[str, float]:
        def ms(name: str) -> float:
            delta = sum(ticks - before[name].get(pid, 0) for pid, ticks in after[name].items())
            return delta / CLOCK_TICKS * 1000 / events

        result = {name: ms(name) for name in after}
        result["other"] = result["machine"] - sum(ms(name) for name in [*self.trees, "driver"])
        return {name: round(value, 3) for name, value in result.items()}


def postgres_roots(engine: Engine) -> list[int]:
    """The postmaster of the cluster the bench uses (its children are every PostgreSQL process), from
    ``postmaster.pid``; else every process of the ``postgres`` user whose parent is not one; else none
    (a server out of sight: reported as 0)."""
    try:
        with engine.connect() as conn:
            data_dir = conn.execute(text("SHOW data_directory")).scalar_one()
        pid = int(Path(data_dir, "postmaster.pid").read_text().split()[0])
        if Path(f"/proc/{pid}").exists():
            return [pid]
    except (OSError, ValueError, IndexError):
        pass
    try:
        import pwd

        uid = pwd.getpwnam("postgres").pw_uid
    except KeyError:
        return []
    owned = {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _uid_of(p) == uid}
    table = _proc_table()
    return [pid for pid in owned if pid in table and table[pid].ppid not in owned]


def _uid_of(path: Path) -> int | None:
    try:
        return path.stat().st_uid
    except OSError:
        return None


# --------------------------------------------------------------------------- processes of the bench's own


class Sandbox:
    """The provider sandbox in a subprocess (``providers.sandbox.server.serve``)."""

    def __init__(self, latency: float, logdir: Path) -> None:
        self.latency = latency
        self.log = logdir / "sandbox.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        argv = [sys.executable, "-c", SANDBOX_MAIN, str(self.latency)]
        argv += [CREDS["api_key"], CREDS["site_id"], CREDS["secret_key"]]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self.url:
            for line in self.log.read_text(errors="replace").splitlines():
                if "listening on " in line:
                    self.url = line.split("listening on ", 1)[1].strip()
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the sandbox did not start: see {self.log}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: serve() stops cleanly
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Workers:
    """``--processes`` Celery worker processes, payrecon's command line, for ``app`` (``worker.app`` or the
    no-op ``bench.noop_app``)."""

    def __init__(self, app: str, tag: str, args: argparse.Namespace, env: dict[str, str], logdir: Path) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = [logdir / f"{tag}-w{n}.log" for n in range(args.processes)]
        for n, path in enumerate(self.logs):
            argv = [sys.executable, "-m", "celery", "-A", app, "worker", "-P", "threads", "-c", str(args.threads)]
            argv += ["-Q", "webhooks,verify", "-n", f"{tag}-{n}@%h", "-l", "warning"]
            argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
            with path.open("wb") as out:
                self.procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def wait_polling(self, client: redis.Redis) -> float:
        """Wait until every process's consumer polls the queues, i.e. takes messages as soon as there
        are any (the patched fetch's ``LMOVE``/``BLMOVE``: only the workers' consumers send them to the
        bench's Redis); return the seconds it took."""
        started = time.monotonic()
        while True:
            polling = sum(1 for c in client.client_list() if c.get("cmd") in ("lmove", "blmove"))
            if polling >= len(self.procs):
                return time.monotonic() - started
            for proc, path in zip(self.procs, self.logs, strict=True):
                if proc.poll() is not None:
                    raise BenchError(f"a worker exited at start (code {proc.returncode}): see {path}")
            if time.monotonic() - started > 120:
                raise BenchError(f"workers not polling after 120 s: see {self.logs}")
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- the broker side


class Broker:
    """The bench's Redis: queue messages, hold them back until the workers poll, release them at once."""

    def __init__(self, client: redis.Redis, url: str) -> None:
        self.client = client
        self.producer = Celery("payrecon-bench")
        self.producer.config_from_object("celeryconfig")  # payrecon's queues, routes and JSON serializer
        self.producer.conf.broker_url = url

    def send(self, envelope: dict[str, Any]) -> None:
        self.producer.send_task(INGEST_TASK, kwargs={"envelope": envelope}, queue=QUEUE)

    def stage(self, envelopes: Sequence[dict[str, Any]]) -> None:
        """Queue the messages as a receiver does, then move them aside (no worker is running)."""
        self.check_drained()
        for envelope in envelopes:
            self.send(envelope)
        if self.client.llen(QUEUE) != len(envelopes):
            raise BenchError(f"queued {len(envelopes)} messages, the queue holds {self.client.llen(QUEUE)}")
        self.client.rename(QUEUE, STAGED)

    def release(self) -> None:
        """All the staged messages onto the queue in one step."""
        if self.client.llen(QUEUE):
            raise BenchError(f"the queue {QUEUE!r} is not empty")
        self.client.rename(STAGED, QUEUE)

    def leftover(self) -> int:
        """Messages not yet acknowledged: on the queues, taken but not recorded (``:incoming``), or unacked."""
        pipe = self.client.pipeline(transaction=False)
        for queue in (QUEUE, "verify"):
            pipe.llen(queue)
            pipe.llen(queue + ":incoming")
        pipe.hlen("unacked")
        return sum(pipe.execute())

    def check_drained(self) -> None:
        if left := self.leftover():
            raise BenchError(f"{left} message(s) still on the broker")

    def wait_drained(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while (left := self.leftover()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return left

    def close(self) -> None:
        self.producer.close()


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Payments:
    """A set of fresh payments: their references (all starting with ``prefix``) and notifications."""

    prefix: str
    refs: list[str]
    envelopes: list[dict[str, Any]]


@dataclass(slots=True)
class HalfLoad:
    target_per_s: float
    achieved_per_s: float
    events: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclass(slots=True)
class Run:
    batch_size: int | None
    batch_wait: float | None
    events: int
    seconds: float
    events_per_s: float
    cpu_ms_per_event: dict[str, float]
    ready_s: float  # from the workers' start until they polled the queue (not timed)
    prefetch_multiplier: int
    pg_sessions_opened: int  # PostgreSQL sessions of the bench's database begun in the window (about)
    pg_sessions_ended: int  # of those and the earlier ones, how many ended in the window (about)
    half_load: HalfLoad | None = None
    leftover_messages: int = 0


@dataclass(slots=True)
class Floor:
    events: int
    seconds: float
    events_per_s: float
    cpu_ms_per_event: dict[str, float]
    ready_s: float
    prefetch_multiplier: int
    leftover_messages: int = 0


@dataclass(slots=True)
class Report:
    command: str
    code: dict[str, Any]
    date: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    noop_floor: Floor | None = None
    runs: list[Run] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args: argparse.Namespace, db_url: str, logdir: Path) -> None:
        self.args = args
        self.db_url = db_url
        self.logdir = logdir
        self.redis = PrivateRedis(logdir, appendonly=False)  # the bench's own, never the shared one
        self.sandbox = Sandbox(args.latency, logdir)
        self.engine = create_engine(db_url, pool_size=2)
        self.phase = 0  # each set of payments gets references of its own: TXN-<phase, 2 hex><index, 10 hex>

    @contextmanager
    def running(self) -> Iterator[None]:
        self.redis.start()
        client = redis.Redis(host="127.0.0.1", port=self.redis.port, socket_timeout=10)
        try:
            self.sandbox.start()
            self.broker = Broker(client, self.redis.url)
            self.env = {
                **os.environ,
                "DATABASE_URL": self.db_url,
                "CELERY_BROKER_URL": self.redis.url,
                "CINETPAY_API_URL": self.sandbox.url,
                "CINETPAY_API_KEY": CREDS["api_key"],
                "CINETPAY_SITE_ID": CREDS["site_id"],
                "CINETPAY_SECRET_KEY": CREDS["secret_key"],
                "PAYRECON_WORKER_CONCURRENCY": str(self.args.threads),
                "PAYRECON_BUDGET_CINETPAY": self.args.budget,
                "PAYRECON_METRICS_PORT": "0",  # off: several workers share the host (and other people's)
            }
            for name in ("PAYRECON_BATCH_SIZE", "PAYRECON_BATCH_WAIT", "PAYRECON_BATCH_PREFETCH"):
                self.env.pop(name, None)  # only the options set them
            migrate.upgrade(self.db_url)
            self.rt: Runtime = runtime.build(Settings.from_env(self.env))
            self.control = SandboxClient(self.sandbox.url)
            pg = postgres_roots(self.engine)
            if not pg:
                log("note: PostgreSQL's processes are not visible from here: its CPU reads 0")
            self.workers: Workers | None = None
            self.cpu = CpuMeter(
                trees={
                    "workers": lambda: self.workers.pids if self.workers else [],
                    "postgresql": lambda: pg,
                    "redis": lambda: [self.redis.proc.pid] if self.redis.proc else [],
                    "sandbox": lambda: [self.sandbox.proc.pid] if self.sandbox.proc else [],
                },
                sessions={"postgresql_bench_db": self.bench_db_backends},
            )
            yield
        finally:
            workers: Workers | None = getattr(self, "workers", None)
            if workers is not None:  # a phase failed with its workers running
                workers.stop()
            if hasattr(self, "rt"):
                self.rt.close()
            if hasattr(self, "broker"):
                self.broker.close()
            self.sandbox.stop()
            self.redis.kill()
            self.engine.dispose()

    # ------------------------------------------------------------------ payments

    def prepare(self, count: int) -> Payments:
        """``count`` accepted CinetPay transactions at the sandbox and their registrations, fresh, and
        their signed notifications (envelopes)."""
        self.phase += 1
        prefix = f"TXN-{self.phase:02X}"
        refs = [f"{prefix}{i:010X}" for i in range(count)]

        def one(ref: str) -> dict[str, Any]:
            self.control.create_cinetpay(ref, 5000)
            pipeline.register_payment(
                self.rt,
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
            return self.control.cinetpay_notification(ref)

        with ThreadPoolExecutor(16) as pool:
            envelopes = list(pool.map(one, refs))
        return Payments(prefix, refs, envelopes)

    def bench_db_backends(self) -> list[int]:
        """The PostgreSQL backends serving the bench's database (its share of the cluster's CPU, without the
        background processes and the other databases)."""
        with self.engine.connect() as conn:
            return list(
                conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")).scalars()
            )

    def bench_db_sessions(self) -> int:
        """Sessions ever begun on the bench's database (PostgreSQL 14+; 0 before), as the statistics
        collector knows them (a backend reports its own with a delay of up to a second or so)."""
        with self.engine.connect() as conn:
            count = conn.execute(
                text("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
            ).scalar_one_or_none()
        return int(count or 0)

    def vacuum(self) -> None:
        """Fresh statistics and no dead rows before a timed run, as autovacuum would keep them (it may be off:
        see the report's PostgreSQL settings), so that every batch size starts from the same state."""
        with create_engine(self.db_url, isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(text("VACUUM ANALYZE"))

    def settled(self, prefix: str) -> tuple[int, float | None]:
        """How many of the phase's payments are settled, and when the last one was (epoch seconds)."""
        with self.engine.connect() as conn:
            count, last = conn.execute(
                text("SELECT count(*), max(finalized_at) FROM payments WHERE settled AND reference LIKE :p"),
                {"p": prefix + "%"},
            ).one()
        return int(count), (last.timestamp() if last is not None else None)

    def settle_times(self, prefix: str) -> dict[str, float]:
        """Each settled payment's settlement time (epoch seconds).

        ``payments.finalized_at``: written once, in the settling transaction, in the same row update as
        ``settled`` (``reconciliation.payments.apply_answer``), from ``ctx.now``: Python's
        ``datetime.now(UTC)`` read as the payment's settlement step begins, after the provider's answer
        (``worker.pipeline._settle``). The other candidates: ``ledger_journals.created_at`` and
        ``verifications.created_at`` are PostgreSQL's ``now()``, the start of the transaction (earlier
        still for a batch, and a join away); ``payments.updated_at`` is also moved by any later update of
        the row. Not counted: what follows ``ctx.now`` in the transaction, up to its commit: a few ms on
        the per-message path; on the batched path, the rest of the batch's settlement (its later payments,
        one transaction for all), so a batch's first payments read early by up to that.
        """
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT reference, finalized_at, updated_at FROM payments WHERE settled AND reference LIKE :p"),
                {"p": prefix + "%"},
            ).all()
        missing = sum(1 for _, finalized, _ in rows if finalized is None)
        if missing:
            log(f"note: {missing} settled payment(s) without finalized_at: their updated_at is used")
        return {ref: (finalized or updated).timestamp() for ref, finalized, updated in rows}

    # ------------------------------------------------------------------ phases

    def noop_floor(self, envelopes: Sequence[dict[str, Any]], batch_size: int | None) -> Floor:
        """Celery's cost per message alone: the no-op app's workers consume ``envelopes``, with the
        environment of payrecon's workers at ``batch_size`` (the same ``celeryconfig``: prefetch)."""
        n = len(envelopes)
        env = self.worker_env(batch_size)
        prefetch = prefetch_multiplier(env)
        self.broker.client.delete(DONE_KEY, LAST_KEY)
        self.broker.stage(envelopes)
        with Workers("bench.noop_app", "noop", self.args, env, self.logdir) as self.workers:
            ready = self.workers.wait_polling(self.broker.client)
            before = self.cpu.snapshot()
            started = time.time()
            self.broker.release()
            while int(self.broker.client.get(DONE_KEY) or 0) < n:
                if time.time() - started > TIMEOUT:
                    raise BenchError(f"no-op floor: timed out; logs in {self.logdir}")
                time.sleep(0.02)
            after = self.cpu.snapshot()
            last = float(self.broker.client.get(LAST_KEY) or time.time())
            left = self.broker.wait_drained()
        self.workers = None
        seconds = last - started
        cpu = self.cpu.per_event_ms(before, after, n)
        floor = Floor(n, round(seconds, 3), round(n / seconds, 1), cpu, round(ready, 2), prefetch, left)
        done = int(self.broker.client.get(DONE_KEY) or 0)
        log(
            f"no-op floor: {n} messages in {seconds:.2f} s = {floor.events_per_s:.0f}/s (prefetch multiplier "
            f"{prefetch}; workers polling {ready:.1f} s after start; {done - n} extra deliveries, {left} left "
            "on the broker)"
        )
        log("  CPU ms/event: " + _cpu_line(floor.cpu_ms_per_event))
        return floor

    def worker_env(self, batch_size: int | None) -> dict[str, str]:
        """The workers' environment for ``batch_size`` (None: unset, the project's default) and
        ``--batch-wait`` / ``--batch-prefetch``."""
        env = dict(self.env)
        if batch_size is not None:
            env["PAYRECON_BATCH_SIZE"] = str(batch_size)
        if self.args.batch_wait is not None:
            env["PAYRECON_BATCH_WAIT"] = str(self.args.batch_wait)
        if self.args.batch_prefetch is not None:
            env["PAYRECON_BATCH_PREFETCH"] = str(self.args.batch_prefetch)
        return env

    def payrecon(self, batch_size: int | None, throughput: Payments, half: Payments | None) -> Run:
        """payrecon's workers at ``batch_size``: the ``throughput`` payments as fast as they go, then, on
        the same workers, the ``half`` payments paced at half that rate."""
        n = len(throughput.refs)
        env = self.worker_env(batch_size)
        prefetch = prefetch_multiplier(env)
        label = _label(batch_size)
        self.vacuum()
        self.broker.stage(throughput.envelopes)
        with Workers("worker.app", f"bs{batch_size or 'default'}", self.args, env, self.logdir) as self.workers:
            ready = self.workers.wait_polling(self.broker.client)
            sessions = self.bench_db_sessions()
            before = self.cpu.snapshot()
            started = time.time()
            self.broker.release()
            done, last = 0, None
            while done < n:
                time.sleep(0.25)
                done, last = self.settled(throughput.prefix)
                if time.time() - started > TIMEOUT:
                    raise BenchError(f"payrecon {label}: timed out with {done} settled; logs in {self.logdir}")
            after = self.cpu.snapshot()
            assert last is not None  # noqa: S101 - n > 0 payments are settled
            left = self.broker.wait_drained()
            sessions = self.bench_db_sessions() - sessions
            seconds = last - started
            run = Run(
                batch_size,
                self.args.batch_wait,
                n,
                round(seconds, 3),
                round(n / seconds, 1),
                self.cpu.per_event_ms(before, after, n),
                round(ready, 2),
                prefetch,
                sessions,
                sessions - (len(after["postgresql_bench_db"]) - len(before["postgresql_bench_db"])),
                leftover_messages=left,
            )
            log(
                f"payrecon {label}: {n} events in {seconds:.2f} s = {run.events_per_s:.1f} events/s (prefetch "
                f"multiplier {prefetch}; workers polling {ready:.1f} s after start; {left} message(s) left on the "
                "broker)"
            )
            log("  CPU ms/event: " + _cpu_line(run.cpu_ms_per_event) + _busy(run.cpu_ms_per_event, run.events_per_s))
            if (ended := run.pg_sessions_ended) > 0:
                log(
                    f"  about {sessions} PostgreSQL sessions of the bench's database began in the window and "
                    f"{ended} ended: postgresql_bench_db misses those (postgresql has them)"
                )
            if half is not None:
                run.half_load = self.half_load(run.events_per_s / 2, half, label)
        self.workers = None
        return run

    def half_load(self, rate: float, payments: Payments, label: str) -> HalfLoad:
        """A paced producer at ``rate`` (open loop: each message at its scheduled time, whatever the
        workers do); enqueue→settled per payment."""
        refs, envelopes, prefix = payments.refs, payments.envelopes, payments.prefix
        sent_at: dict[str, float] = {}
        interval = 1.0 / rate
        start = time.monotonic()
        for i, (ref, envelope) in enumerate(zip(refs, envelopes, strict=True)):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent_at[ref] = time.time()
            self.broker.send(envelope)
        producing = time.monotonic() - start
        deadline = time.time() + TIMEOUT
        while (done := self.settled(prefix)[0]) < len(refs):
            if time.time() > deadline:
                raise BenchError(f"half load {label}: timed out with {done} settled; logs in {self.logdir}")
            time.sleep(0.25)
        settled = self.settle_times(prefix)
        latencies = sorted((settled[ref] - sent_at[ref]) * 1000 for ref in refs)
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        result = HalfLoad(
            target_per_s=round(rate, 1),
            achieved_per_s=round((len(refs) - 1) / producing, 1) if producing > 0 else 0.0,
            events=len(refs),
            p50_ms=round(cuts[49], 1),
            p95_ms=round(cuts[94], 1),
            p99_ms=round(cuts[98], 1),
            max_ms=round(latencies[-1], 1),
        )
        log(
            f"  half load {label}: {result.events} events paced at {result.achieved_per_s:.1f}/s "
            f"(target {result.target_per_s:.1f}/s): enqueue→settled p50 {result.p50_ms:.0f} ms, "
            f"p95 {result.p95_ms:.0f} ms, p99 {result.p99_ms:.0f} ms, max {result.max_ms:.0f} ms"
        )
        return result


def prefetch_multiplier(env: dict[str, str]) -> int:
    """``celeryconfig.worker_prefetch_multiplier`` as a worker with ``env`` reads it."""
    code = "import celeryconfig; print(celeryconfig.worker_prefetch_multiplier)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def _label(batch_size: int | None) -> str:
    return "batch size default" if batch_size is None else f"batch size {batch_size}"


def _cpu_line(cpu: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f}" for name, value in cpu.items())


def _busy(cpu: dict[str, float], events_per_s: float) -> str:
    """The share of the machine's cores in use over the window: its CPU an event times events/s."""
    cores = os.cpu_count() or 1
    return f" (cores busy: {cpu.get('machine', 0.0) * events_per_s / 1000 / cores:.0%} of {cores})"


def machine_info(engine: Engine, redis_client: redis.Redis | None = None) -> dict[str, Any]:
    names = (
        "server_version",
        "shared_buffers",
        "work_mem",
        "max_wal_size",
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "wal_level",
        "autovacuum",
        "max_connections",
        "checkpoint_timeout",
    )
    with engine.connect() as conn:
        pg = {name: conn.execute(text(f"SHOW {name}")).scalar_one() for name in names}
    os_name = "unknown"
    release = Path("/etc/os-release")
    if release.exists():
        for line in release.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    mem_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:")
    )
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(mem_kib / 2**20, 1),
        "os": os_name,
        "python": platform.python_version(),
        "postgresql": pg,
    }
    if redis_client is not None:
        info["redis"] = redis_client.info("server")["redis_version"]
    return info


def code_state() -> dict[str, Any]:
    """The commit the workers ran and the files that differed from it (uncommitted work)."""

    def git(*argv: str) -> str:
        out = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)  # noqa: S607
        return out.stdout.rstrip("\n")  # not strip(): a status line begins with its status, maybe a space

    modified = [line[3:] for line in git("status", "--porcelain", "--untracked-files=all").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD"), "modified": modified}


def parse_sizes(value: str) -> list[int]:
    sizes = [int(v) for v in value.split(",") if v.strip()]
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError("batch sizes are integers >= 1, comma-separated")
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1000, help="events per timed run (floor and payrecon)")
    parser.add_argument("--latency", type=float, default=0.2, help="provider answer time, seconds")
    parser.add_argument("--threads", type=int, default=64, help="threads per worker process")
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument(
        "--budget",
        default="100000,100000",
        help="CinetPay's call budget, CALLS_PER_SECOND,BURST (default: high enough not to be what is measured; "
        "the production profile's 5/s would cap the run at 5 events/s)",
    )
    parser.add_argument("--batch-size", type=int, help="PAYRECON_BATCH_SIZE for the workers (default: unset)")
    parser.add_argument("--batch-wait", type=float, help="PAYRECON_BATCH_WAIT for the workers, s (default: unset)")
    parser.add_argument("--batch-prefetch", type=int, help="PAYRECON_BATCH_PREFETCH for the workers (default: unset)")
    parser.add_argument("--sweep", type=parse_sizes, help="batch sizes to run payrecon at, e.g. 1,10,50,100,200")
    parser.add_argument("--latency-events", type=int, help="events of each half-load run (default: --events; 0: none)")
    parser.add_argument("--json", type=Path, help="write the figures there (for bench/plot_throughput.py)")
    args = parser.parse_args(argv)
    if args.sweep and args.batch_size is not None:
        parser.error("--sweep and --batch-size exclude each other")
    if args.events < 2:
        parser.error("--events must be at least 2")
    if args.latency_events is None:
        args.latency_events = args.events
    if args.latency_events == 1:
        parser.error("--latency-events must be 0 or at least 2")
    sizes: list[int | None] = list(args.sweep) if args.sweep else [args.batch_size]
    command = " ".join([".venv/bin/python", "bench/throughput.py", *(argv if argv is not None else sys.argv[1:])])

    logdir = Path(tempfile.mkdtemp(prefix="payrecon-bench-"))
    wall = time.monotonic()
    with scratch_database(PG_BASE, "payrecon_bench") as db_url:
        bench = Bench(args, db_url, logdir)
        with bench.running():
            settings = {
                "events": args.events,
                "latency_s": args.latency,
                "threads": args.threads,
                "processes": args.processes,
                "budget": args.budget,
                "batch_wait": args.batch_wait,
                "batch_prefetch": args.batch_prefetch,
                "latency_events": args.latency_events,
                "sizes": sizes,
            }
            report = Report(
                command,
                code_state(),
                datetime.now(UTC).isoformat(timespec="seconds"),
                machine_info(bench.engine, bench.broker.client),
                settings,
            )
            log(
                f"{args.processes} worker process(es) x {args.threads} threads, provider latency "
                f"{args.latency * 1000:.0f} ms, {args.events} events per run; logs in {logdir}"
            )
            modified = report.code["modified"]
            log(f"code: {report.code['commit']}" + (f" + {len(modified)} uncommitted file(s)" if modified else ""))
            for i, size in enumerate(sizes):
                started = time.monotonic()
                throughput = bench.prepare(args.events)
                half = bench.prepare(args.latency_events) if args.latency_events else None
                log(
                    f"prepared {args.events + (args.latency_events or 0)} transactions and registrations "
                    f"in {time.monotonic() - started:.1f} s"
                )
                if i == 0:  # the floor, once, on the same messages as the first payrecon run, just before it
                    report.noop_floor = bench.noop_floor(throughput.envelopes, size)
                report.runs.append(bench.payrecon(size, throughput, half))
    assert report.noop_floor is not None  # noqa: S101
    best = max(report.runs, key=lambda r: r.events_per_s)
    floor = report.noop_floor.events_per_s
    p99 = best.half_load.p99_ms if best.half_load else float("nan")
    report.summary = {
        "batch_size": best.batch_size,
        "events_per_s": best.events_per_s,
        "noop_floor_per_s": floor,
        "ratio": round(best.events_per_s / floor, 2),
        "p99_half_load_ms": p99,
        "wall_s": round(time.monotonic() - wall, 1),
    }
    if len(report.runs) > 1:
        log("batch size | events/s | p50 / p95 / p99 at half load (ms) | workers CPU ms/event")
        for run in report.runs:
            hl = run.half_load
            lat = f"{hl.p50_ms:.0f} / {hl.p95_ms:.0f} / {hl.p99_ms:.0f}" if hl else "-"
            log(
                f"{_label(run.batch_size)[11:]:>10} | {run.events_per_s:8.1f} | {lat:>34} | "
                f"{run.cpu_ms_per_event['workers']:.2f}"
            )
        log(f"best: {_label(best.batch_size)}")
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
        log(f"figures written to {args.json}")
    log(f"wall time {report.summary['wall_s']:.0f} s")
    print(
        f"events_per_s={best.events_per_s:.1f} noop_floor_per_s={floor:.1f} "
        f"ratio={best.events_per_s / floor:.2f} p99_half_load_ms={p99:.1f}"
    )
    shutil.rmtree(logdir, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        raise SystemExit(f"bench failed: {exc}") from None
