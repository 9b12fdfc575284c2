"""The storm (issue #10): seeded traffic across all four providers while workers are killed and the broker
and the database restart; then the invariants are checked against the providers' truth.

    .venv/bin/python bench/storm.py --seed 1                      # 3000 payments, ~4 min of storm, Redis broker
    .venv/bin/python bench/storm.py --seed 1 --broker rabbitmq    # the machine's RabbitMQ, on a vhost of its own
    .venv/bin/python bench/storm.py --short --seed 7              # a few hundred payments, a few kills (the test)

What it starts, all of its own (removed at the end): a Redis server (AOF on, ``appendfsync always``: a crash
loses nothing Redis acknowledged, so whatever is lost is payrecon's doing), a PostgreSQL cluster (the storm's
database lives there), the provider sandbox, two ``payrecon worker`` and one ``payrecon beat`` processes started
as the README starts them, from a temporary working directory, with the environment a user would set
(``DATABASE_URL``, ``CELERY_BROKER_URL``, the sandbox's provider variables, ``PAYRECON_BUDGET_<P>``; metrics
off, since several nodes share the host). With ``--broker rabbitmq`` the broker is a vhost created on the
machine's RabbitMQ (deleted at the end) and the storm's Redis holds the call budget only.

Traffic (seeded): ``--payments`` payments over about N/4 accounts, CinetPay on the technician marketplace's
``depannage-monthly`` (1, 3 or 6 periods), MTN MoMo, Orange Money and Wave on the reading platform's plans (prices
and periods from the database's plan catalogue); fates accepted, refused, waiting then accepted or refused,
waiting (half of those forced to a final status later: the sandbox notifies, retrying while the broker is down),
and accepted at a different amount (a tampered checkout). Each final payment's webhook is built by the sandbox
(real wire format) and published as a receiver would, retried while the broker is down: 30 % are delivered 2-5
times (half of those at once), 10 % before their registration. Forged and tampered callbacks, invalid
envelopes, malformed bodies and invalid registrations on top. The sandbox answers 10 % of provider calls with
a 5xx, 5 % with a 429 and 5 % slowly (``--fault-rates``).

Faults: a random worker SIGKILLed every ``--kill-every`` seconds and a replacement started a second later (as a
supervisor would); one crash-restart of the storm's Redis and one of its PostgreSQL (immediate shutdown) during
the run. A worker or beat that exits on its own is recorded and restarted too.

Then, once the faults stop (and the provider faults with them), it polls until every paid customer has their
access (or ``--access-within`` seconds pass), and checks, from the database and the sandbox's truth (each
payment's real status at its provider), the invariants it prints as a table: lost payments, wrongly paid,
registrations lost, double and undue grants, subscription days = paid periods x period length for every
account, unbalanced journals, revenue = what the providers confirmed, forged callbacks accepted, dead letters =
the malformed input only (and all of it), worker or beat exits other than the kills, and the time to settle.
Evidence follows (inbox and payment statuses, broker queues and unacked messages, dead-letter reasons, process
exits). Exit 1 on any violation, 2 if the storm itself could not run. The last line is machine-readable:
``storm seed=<s> broker=<b> payments=<n> kills=<k> violations=<v> settle_s=<t>``.

``--self-check`` then plants one violation of each kind in the database and fails unless the checks see
every one. ``--code DIR`` runs payrecon's processes from another source tree (e.g. ``git archive`` of an older
commit) to compare before and after. Needs redis-server, PostgreSQL's server binaries (run as the ``postgres``
user when started as root) and, for ``--broker rabbitmq``, rabbitmqctl.
"""

from __future__ import annotations

import argparse
import base64
import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from providers.sandbox.client import SandboxClient, SandboxError
from providers.sandbox.server import SandboxServer
from schemas.producer import INGEST_TASK, QUEUE, REGISTER_TASK

PROVIDERS = ("cinetpay", "mtn_momo", "orange_money", "wave")
#: The field naming a transaction in each provider's sandbox control API.
ID_FIELD = {"cinetpay": "transaction_id", "mtn_momo": "reference", "orange_money": "reference", "wave": "reference"}
#: Wire statuses the storm forces on "waiting" payments: (paid, refused).
FORCED = {
    "cinetpay": ("ACCEPTED", "REFUSED"),
    "mtn_momo": ("SUCCESSFUL", "FAILED"),
    "orange_money": ("SUCCESS", "FAILED"),
    "wave": ("succeeded", "cancelled"),
}
#: Wire statuses meaning "paid" at each provider (the truth).
PAID = frozenset({"ACCEPTED", "SUCCESSFUL", "SUCCESS", "succeeded"})
#: Callbacks a provider signs: a forged one must be quarantined.
SIGNED = frozenset({"cinetpay", "orange_money", "wave"})
#: What a tampered callback changes after it was signed (or, unsigned, what it claims).
TAMPER = {
    "cinetpay": {"cpm_amount": "1"},
    "mtn_momo": {"status": "SUCCESSFUL"},
    "orange_money": {"status": "SUCCESS"},
    "wave": {"amount": "1"},
}
#: Providers where a tampered callback breaks the signature (must be quarantined too).
TAMPER_BREAKS_SIGNATURE = frozenset({"cinetpay", "wave"})
#: The dead-letter reasons of malformed input: the only ones the storm expects.
MALFORMED_REASONS = frozenset({"invalid_envelope", "malformed_body", "invalid_registration"})
QUEUES = ("webhooks", "verify", "maintenance")
#: How a malformed message of the storm names itself (whole tag: ``-1-1`` is not ``-1-10``).
MALFORMED_TAG = re.compile(r"storm-malformed-[0-9]+-[0-9]+(?![0-9])")


class StormError(Exception):
    """The storm itself could not run (not a finding about payrecon)."""


def log(message: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Config:
    seed: int
    payments: int
    broker: str
    kill_every: float
    duration: float
    access_within: float
    settle_timeout: float
    redis_restart: bool
    pg_restart: bool
    down_seconds: float
    latency: float
    fault_rates: tuple[float, float, float]
    slow_seconds: float
    budget: str
    workers: int
    code: Path
    keep: bool
    self_check: bool


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--payments", type=int, help="payments (default 3000; --short: 240)")
    parser.add_argument("--broker", choices=("redis", "rabbitmq"), default="redis")
    parser.add_argument("--kill-every", type=float, help="seconds between worker SIGKILLs (default 20; --short: 8)")
    parser.add_argument(
        "--duration",
        type=float,
        help="seconds of traffic and faults (default payments / 12.5, at least 60; --short: 36)",
    )
    parser.add_argument(
        "--access-within",
        type=float,
        help="every paid customer must have access this long after the faults stop (default 120)",
    )
    parser.add_argument("--settle-timeout", type=float, help="how long to wait for settling (default: --access-within)")
    parser.add_argument("--short", action="store_true", help="a few hundred payments and a few kills (the test suite)")
    parser.add_argument("--no-redis-restart", dest="redis_restart", action="store_false")
    parser.add_argument("--no-pg-restart", dest="pg_restart", action="store_false")
    parser.add_argument("--down-seconds", type=float, default=3.0, help="how long Redis and PostgreSQL stay down")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds every provider answer takes")
    parser.add_argument(
        "--fault-rates",
        default="0.10,0.05,0.05",
        help="shares of provider answers that are a 5xx, a 429, slow (default 0.10,0.05,0.05)",
    )
    parser.add_argument("--slow-seconds", type=float, default=2.0, help="how slow a slow provider answer is")
    parser.add_argument(
        "--budget",
        default="30,60",
        help="PAYRECON_BUDGET_<PROVIDER> for every provider, RATE,BURST (a merchant's quota above the storm's "
        "rate); 'profile': the profiles' own (5/s; the storm then measures the budget)",
    )
    parser.add_argument("--workers", type=int, default=2, help="payrecon worker processes")
    parser.add_argument("--code", type=Path, default=ROOT, help="the payrecon source tree the processes run from")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs, data) at the end")
    parser.add_argument("--self-check", action="store_true", help="then plant violations and check they are seen")
    args = parser.parse_args(argv)
    payments = args.payments or (240 if args.short else 3000)
    duration = args.duration or (36.0 if args.short else max(60.0, payments / 12.5))
    access_within = args.access_within or 120.0
    rates = tuple(float(x) for x in args.fault_rates.split(","))
    if len(rates) != 3 or sum(rates) > 1 or min(rates) < 0:
        parser.error("--fault-rates: three shares (5xx, 429, slow) adding up to at most 1")
    return Config(
        seed=args.seed,
        payments=payments,
        broker=args.broker,
        kill_every=args.kill_every or (8.0 if args.short else 20.0),
        duration=duration,
        access_within=access_within,
        settle_timeout=args.settle_timeout or access_within,
        redis_restart=args.redis_restart,
        pg_restart=args.pg_restart,
        down_seconds=args.down_seconds,
        latency=args.latency,
        fault_rates=(rates[0], rates[1], rates[2]),
        slow_seconds=args.slow_seconds,
        budget=args.budget,
        workers=args.workers,
        code=args.code.resolve(),
        keep=args.keep,
        self_check=args.self_check,
    )


# --------------------------------------------------------------------------- the storm's own services


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its binaries as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


class OwnRedis:
    """A redis-server of the storm's own: AOF on, fsync at every write, its own directory and port."""

    def __init__(self, run_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise StormError("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.dir = run_dir / "redis"
        self.dir.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        argv += ["--appendonly", "yes", "--appendfsync", "always", "--save", "", "--logfile", "redis.log"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise StormError(f"own redis did not start (see {self.dir}/redis.log)") from None
                time.sleep(0.1)
        client.close()

    def crash(self) -> None:
        """SIGKILL: nothing is flushed at exit (with fsync always, nothing acknowledged is lost either)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class OwnPostgres:
    """A PostgreSQL cluster of the storm's own (initdb into the run directory, trust auth)."""

    def __init__(self, run_dir: Path) -> None:
        found = shutil.which("initdb") or max(glob.glob("/usr/lib/postgresql/*/bin/initdb"), default=None)
        if found is None:
            raise StormError("PostgreSQL's initdb is not installed")
        self.bin = Path(found).parent
        self.port = free_port()
        self.home = run_dir / "pg"
        self.home.mkdir()
        self.data = self.home / "data"
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/payrecon_storm"

    def _run(self, *argv: str, timeout: float = 120) -> None:
        result = subprocess.run(_as_postgres(list(argv)), capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode:
            raise StormError(f"{argv[0]} failed: {result.stderr.strip() or result.stdout.strip()}")

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.home, "postgres", "postgres")
        initdb = str(self.bin / "initdb")
        self._run(initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        settings = (
            f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.home}'\n"
            "max_connections = 300\nshared_buffers = 64MB\nfsync = on\nsynchronous_commit = on\n"
        )
        conf = self.data / "postgresql.conf"
        self._run("sh", "-c", f"cat >> '{conf}' <<'EOF'\n{settings}EOF")

    def start(self) -> None:
        pg_ctl = str(self.bin / "pg_ctl")
        self._run(pg_ctl, "-D", str(self.data), "-l", str(self.home / "postgres.log"), "-w", "-t", "60", "start")

    def create_database(self) -> None:
        admin = create_engine(
            f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres", isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.execute(text("CREATE DATABASE payrecon_storm"))
        admin.dispose()

    def crash(self) -> None:
        """Immediate shutdown: no checkpoint, recovery from the WAL at the next start (as after a crash)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        with suppress(StormError, subprocess.TimeoutExpired):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=60)


class RabbitVhost:
    """A vhost of the storm's own on the machine's RabbitMQ (guest/guest), deleted at the end."""

    def __init__(self, seed: int) -> None:
        found = shutil.which("rabbitmqctl")
        if found is None:
            raise StormError("rabbitmqctl is not installed")
        self.rabbitmqctl = found
        self.name = f"payrecon-storm-{seed}-{uuid.uuid4().hex[:6]}"
        self.url = f"amqp://guest:guest@127.0.0.1:5672/{self.name}"
        self.created = False

    def _ctl(self, *argv: str) -> str:
        result = subprocess.run([self.rabbitmqctl, *argv], capture_output=True, text=True, timeout=60, check=False)
        if result.returncode:
            raise StormError(f"rabbitmqctl {argv[0]} failed: {result.stderr.strip()}")
        return result.stdout

    def create(self) -> None:
        self._ctl("add_vhost", self.name)
        self.created = True
        self._ctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")

    def queues(self) -> str:
        listing = self._ctl("list_queues", "-p", self.name, "name", "messages_ready", "messages_unacknowledged")
        rows = [line.split("\t") for line in listing.splitlines()]
        return ", ".join(f"{r[0]}: {r[1]} ready, {r[2]} unacked" for r in rows if len(r) == 3 and r[0] in QUEUES)

    def delete(self) -> None:
        if self.created:
            with suppress(StormError, subprocess.TimeoutExpired):
                self._ctl("delete_vhost", self.name)


# --------------------------------------------------------------------------- payrecon's processes


@dataclass
class Proc:
    name: str
    kind: str  # worker | beat
    popen: subprocess.Popen[bytes]
    log: Path
    expected_exit: bool = False


@dataclass(frozen=True)
class Exit:
    name: str
    kind: str
    returncode: int
    at: float  # seconds into the storm
    tail: str


class Fleet:
    """The workers and beat, as a supervisor runs them: a process that exits is started again."""

    READY = {"worker": b" ready.", "beat": b"Starting"}

    def __init__(self, env: dict[str, str], run_dir: Path, clock: Callable[[], float]) -> None:
        self.env = env
        self.run_dir = run_dir
        self.clock = clock
        self.logs = run_dir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.payrecon = str(Path(sys.executable).with_name("payrecon"))
        self.procs: list[Proc] = []
        self.lock = threading.Lock()
        self.unexpected: list[Exit] = []
        self.kills: list[tuple[float, str]] = []
        self.count = 0
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None

    def spawn(self, kind: str) -> Proc:
        with self.lock:
            self.count += 1
            name = f"storm-{'w' if kind == 'worker' else 'beat'}{self.count}"
        # As docker-compose.yml starts them (--wait): a replacement started while PostgreSQL is down
        # waits for it instead of exiting 1 (which a supervisor would answer with a restart).
        argv = (
            [self.payrecon, "worker", "--wait", "-n", f"{name}@%h"]
            if kind == "worker"
            else [self.payrecon, "beat", "--wait"]
        )
        log_path = self.logs / f"{name}.log"
        with log_path.open("wb") as out:
            popen = subprocess.Popen(
                argv, cwd=self.run_dir, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        proc = Proc(name, kind, popen, log_path)
        with self.lock:
            self.procs.append(proc)
        return proc

    def wait_ready(self, proc: Proc, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.READY[proc.kind] not in proc.log.read_bytes():
            if proc.popen.poll() is not None:
                raise StormError(f"{proc.name} exited at start:\n{tail(proc.log)}")
            if time.monotonic() > deadline:
                raise StormError(f"{proc.name} not ready after {timeout:.0f} s:\n{tail(proc.log)}")
            time.sleep(0.2)

    def live(self, kind: str) -> list[Proc]:
        with self.lock:
            return [p for p in self.procs if p.kind == kind and p.popen.poll() is None and not p.expected_exit]

    def kill_random_worker(self, rng: random.Random, restart_after: float = 1.0) -> str | None:
        """SIGKILL a random live worker (its whole process group); start a replacement shortly after."""
        candidates = self.live("worker")
        if not candidates:
            return None
        victim = rng.choice(candidates)
        victim.expected_exit = True
        with suppress(ProcessLookupError):
            os.killpg(victim.popen.pid, signal.SIGKILL)
        victim.popen.wait()
        self.kills.append((self.clock(), victim.name))
        time.sleep(restart_after)
        self.spawn("worker")
        return victim.name

    def start_monitor(self) -> None:
        self._monitor = threading.Thread(target=self._watch, name="storm-supervisor", daemon=True)
        self._monitor.start()

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            with self.lock:
                gone = [p for p in self.procs if p.popen.poll() is not None and not p.expected_exit]
                for proc in gone:
                    proc.expected_exit = True  # handled: recorded once
            for proc in gone:
                code = proc.popen.returncode
                self.unexpected.append(Exit(proc.name, proc.kind, code, self.clock(), tail(proc.log)))
                log(f"!! {proc.name} exited by itself with code {code}: starting another (supervisor)")
                time.sleep(1.0)
                if not self._stopping.is_set():
                    self.spawn(proc.kind)

    def stop(self) -> None:
        self._stopping.set()
        if self._monitor is not None:
            self._monitor.join(5)
        with self.lock:
            procs = list(self.procs)
        for proc in procs:
            if proc.popen.poll() is None:
                proc.expected_exit = True
                with suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 25
        for proc in procs:
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()


def tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- traffic


@dataclass
class Pay:
    """One payment of the storm and what it will go through."""

    idx: int
    provider: str
    reference: str
    account: str
    product: str
    plan: str
    periods: int
    period_days: int
    amount: int
    fate: str
    confirm_amount: int | None = None
    provider_data: dict[str, Any] = field(default_factory=dict)
    webhook: bool = True
    copies: int = 1
    concurrent: bool = False
    webhook_first: bool = False
    forged: bool = False
    tampered: bool = False
    force: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.provider, self.reference)

    def registration(self) -> dict[str, Any]:
        return {
            "schema": "payrecon.payment/1",
            "provider": self.provider,
            "reference": self.reference,
            "amount": self.amount,
            "currency": "XOF",
            "account": self.account,
            "plan": self.plan,
            "periods": self.periods,
            "provider_data": self.provider_data,
        }


@dataclass(frozen=True)
class Plan:
    code: str
    product: str
    price: int
    period_days: int


@dataclass(order=True)
class Event:
    at: float
    seq: int
    kind: str = field(compare=False)
    pay: Pay | None = field(compare=False, default=None)
    arg: Any = field(compare=False, default=None)


def plan_traffic(cfg: Config, catalogue: dict[str, Plan], rng: random.Random) -> tuple[list[Pay], list[Event]]:
    """Every payment and every event of the storm, from the seed alone."""
    if "depannage-monthly" not in catalogue:
        raise StormError("the plan catalogue has no depannage-monthly")
    coko = sorted(code for code in catalogue if code.startswith("coko-"))
    if not coko:
        raise StormError("the plan catalogue has no coko-* plans")
    accounts = max(4, cfg.payments // 4)
    technicians, readers = max(1, accounts // 4), max(1, accounts - accounts // 4)
    window = cfg.duration * 0.8
    payments: list[Pay] = []
    events: list[Event] = []
    seq = iter(range(10**9))

    def add(at: float, kind: str, pay: Pay | None = None, arg: Any = None) -> None:
        events.append(Event(min(at, cfg.duration - 0.5), next(seq), kind, pay, arg))

    for idx in range(cfg.payments):
        provider = rng.choice(PROVIDERS)
        if provider == "cinetpay":
            plan, periods, account = (
                catalogue["depannage-monthly"],
                rng.choice((1, 3, 6)),
                f"tech-{rng.randrange(technicians)}",
            )
        else:
            plan, periods, account = catalogue[rng.choice(coko)], 1, f"reader-{rng.randrange(readers)}"
        reference = {
            "cinetpay": f"TXN-S{cfg.seed}-{idx:06d}",
            "mtn_momo": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "orange_money": f"OM-S{cfg.seed}-{idx:06d}",
            "wave": f"WV-S{cfg.seed}-{idx:06d}",
        }[provider]
        roll = rng.random()
        fate = (
            "accepted" if roll < 0.55 else "refused" if roll < 0.70 else "waiting_then_accepted" if roll < 0.80
            else "waiting_then_refused" if roll < 0.85 else "waiting" if roll < 0.95 else "tampered"
        )  # fmt: skip
        pay = Pay(
            idx, provider, reference, account, plan.product, plan.code, periods, plan.period_days,
            plan.price * periods, "accepted" if fate == "tampered" else fate,
        )  # fmt: skip
        if fate == "tampered":  # the checkout was tampered with: the provider confirms another amount
            pay.confirm_amount = max(1, pay.amount // 10)
        pay.webhook = pay.fate in ("accepted", "refused")
        if pay.fate == "waiting" and rng.random() < 0.5:
            pay.force = FORCED[provider][0 if rng.random() < 0.7 else 1]
        if pay.webhook:
            if rng.random() < 0.30:
                pay.copies, pay.concurrent = rng.randint(2, 5), rng.random() < 0.5
            pay.webhook_first = rng.random() < 0.10
        pay.forged = rng.random() < 0.06
        pay.tampered = pay.webhook and rng.random() < 0.03
        payments.append(pay)

        start = rng.uniform(0.5, window)
        register_at = start + rng.uniform(1.0, 5.0) if pay.webhook_first else start
        add(register_at, "register", pay)
        if pay.webhook:
            first = start if pay.webhook_first else start + rng.uniform(0.2, 2.0)
            add(first, "webhook", pay, pay.copies if pay.concurrent else 1)
            if not pay.concurrent:
                for _ in range(pay.copies - 1):
                    add(first + rng.uniform(1.0, 15.0), "webhook", pay, 1)
        if pay.forged:
            add(start + rng.uniform(0.0, 4.0), "forged", pay)
        if pay.tampered:
            add(start + rng.uniform(0.0, 4.0), "tampered", pay)
        if pay.force is not None:
            add(start + rng.uniform(5.0, 30.0), "force", pay, pay.force)

    for n in range(max(4, cfg.payments * 3 // 100)):
        add(
            rng.uniform(0.5, window),
            "malformed",
            None,
            (("envelope", "body", "registration")[n % 3], f"{cfg.seed}-{n}"),
        )
    events.sort()
    return payments, events


def malformed_message(kind: str, nonce: str, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """(task, kwargs) of one malformed input, identifiable by its nonce."""
    tag = f"storm-malformed-{nonce}"
    if kind == "registration":  # amount as a string: refused by the contract
        payment = {
            "schema": "payrecon.payment/1", "provider": "wave", "reference": tag, "amount": "6500",
            "currency": "XOF", "account": "nobody", "plan": "coko-premium-monthly", "periods": 1,
        }  # fmt: skip
        return REGISTER_TASK, {"payment": payment}
    if kind == "envelope":
        envelope: Any = rng.choice(
            [{"schema": "payrecon.webhook/1", "provider": "cinetpay", "body": tag}, ["not", "an", "envelope", tag]]
        )
        return INGEST_TASK, {"envelope": envelope}
    provider = rng.choice(PROVIDERS)
    body, path, content_type = {
        "cinetpay": (f"cpm_site_id=100000&cpm_designation={tag}", "/depannage/api/cinetpay/notify/", "form"),
        "mtn_momo": (f"not json {tag}", f"/momo/callback/{uuid.uuid4()}", "json"),
        "orange_money": (json.dumps({"status": "SUCCESS", "note": tag}), "/orange/notify/OM-X", "json"),
        "wave": (json.dumps({"note": tag}), "/wave/webhook", "json"),
    }[provider]
    form = "application/x-www-form-urlencoded"
    envelope = {
        "schema": "payrecon.webhook/1", "provider": provider, "received_at": datetime.now(UTC).isoformat(),
        "method": "POST", "path": path, "query": {},
        "headers": {"Content-Type": "application/json" if content_type == "json" else form},
        "body": body, "receiver": "storm",
    }  # fmt: skip
    return INGEST_TASK, {"envelope": envelope}


class Producer:
    """What the merchant app and the webhook receivers do: publish, and keep trying while the broker is down."""

    def __init__(self, broker_url: str, give_up_after: float = 300.0) -> None:
        self.url = broker_url
        self.app = Celery("storm-producer", broker=broker_url, backend="disabled", set_as_current=False)
        self.app.conf.update(
            task_serializer="json", accept_content=["json"], broker_connection_retry_on_startup=True,
            broker_connection_timeout=3,
        )  # fmt: skip
        self.give_up_after = give_up_after
        self.lock = threading.Lock()
        self.sent = 0
        self.retries = 0

    def send(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        """Publish every message, in order; a broker error retries the rest on a new connection."""
        deadline = time.monotonic() + self.give_up_after
        pending = list(messages)
        while pending:
            try:
                with self.app.connection_for_write(self.url) as connection:
                    while pending:
                        task, kwargs = pending[0]
                        self.app.send_task(
                            task, kwargs=kwargs, queue=QUEUE, serializer="json", connection=connection,
                            ignore_result=True, retry=False,
                        )  # fmt: skip
                        pending.pop(0)
                        with self.lock:
                            self.sent += 1
            except Exception as exc:
                with self.lock:
                    self.retries += 1
                if time.monotonic() > deadline:
                    raise StormError(f"the broker refused a message for {self.give_up_after:.0f} s: {exc}") from exc
                time.sleep(0.5)

    def close(self) -> None:
        self.app.close()


class Traffic:
    """Runs the planned events against the sandbox and the broker, on a pool of threads."""

    def __init__(self, sandbox_url: str, producer: Producer, rng: random.Random) -> None:
        self.sandbox_url = sandbox_url
        self.producer = producer
        self.rng = rng
        self.local = threading.local()
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.errors: list[str] = []
        #: Forged and tampered callbacks that must be quarantined: (provider, body, headers).
        self.must_quarantine: list[tuple[str, str, dict[str, str]]] = []
        self.targeted: set[tuple[str, str]] = set()
        #: Tags of the malformed messages published (each must become a dead letter).
        self.malformed: set[str] = set()

    def client(self) -> SandboxClient:
        sandbox: SandboxClient | None = getattr(self.local, "client", None)
        if sandbox is None:
            sandbox = self.local.client = SandboxClient(self.sandbox_url)
        return sandbox

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] += n

    def create(self, pay: Pay) -> None:
        fields: dict[str, Any] = {ID_FIELD[pay.provider]: pay.reference, "amount": pay.amount, "currency": "XOF"}
        fields |= {"fate": pay.fate, "pending_checks": 1, "notify_url": "enqueue"}
        if pay.confirm_amount is not None:
            fields["confirm_amount"] = pay.confirm_amount
            if pay.provider == "orange_money":
                # Orange's documented status answer has no amount: only a deployment that echoes it shows the
                # tampering in flight (without the echo it is granted, and the statement flags it at night).
                fields["echo_amount"] = True
        state = self.client().create(pay.provider, **fields)
        pay.provider_data = dict(state.get("provider_data") or {})

    def run(self, event: Event) -> None:
        try:
            self._run(event)
        except SandboxError as exc:  # e.g. Wave sends no event for an open session: nothing to deliver
            self.count(f"skipped_{event.kind}")
            with self.lock:
                self.errors.append(f"{event.kind}: {exc}")
        except Exception as exc:  # the storm failed to send it (the broker for minutes, a bug): not payrecon's
            self.count("storm_errors")
            with self.lock:
                self.errors.append(f"{event.kind}: {type(exc).__name__}: {exc}")

    def _run(self, event: Event) -> None:
        pay = event.pay
        if event.kind == "register" and pay is not None:
            self.producer.send([(REGISTER_TASK, {"payment": pay.registration()})])
            self.count("registrations")
        elif event.kind == "webhook" and pay is not None:
            envelope = self.client().notification(pay.provider, pay.reference)
            self.producer.send([(INGEST_TASK, {"envelope": envelope})] * int(event.arg))
            self.count("webhooks", int(event.arg))
        elif event.kind in ("forged", "tampered") and pay is not None:
            options: dict[str, Any] = {"forged": True} if event.kind == "forged" else {"tamper": TAMPER[pay.provider]}
            if pay.provider == "wave":
                options["event_type"] = "checkout.session.completed"
            envelope = self.client().notification(pay.provider, pay.reference, **options)
            if pay.provider in SIGNED and (event.kind == "forged" or pay.provider in TAMPER_BREAKS_SIGNATURE):
                with self.lock:
                    self.must_quarantine.append((pay.provider, envelope["body"], dict(envelope["headers"])))
            with self.lock:
                self.targeted.add(pay.key)
            self.producer.send([(INGEST_TASK, {"envelope": envelope})])
            self.count(event.kind)
        elif event.kind == "force" and pay is not None:
            self.client().set_status(pay.provider, pay.reference, str(event.arg))
            self.count("forced_status_changes")
        elif event.kind == "malformed":
            kind, nonce = event.arg
            with self.lock:
                message = malformed_message(kind, nonce, self.rng)
            self.producer.send([message])
            with self.lock:
                self.malformed.add(f"storm-malformed-{nonce}")
            self.count(f"malformed_{kind}")


# --------------------------------------------------------------------------- the checks


@dataclass
class Row:
    name: str
    expected: str
    found: str
    ok: bool
    detail: str = ""


@dataclass
class Snapshot:
    """What the providers say and what payrecon says, read one after the other."""

    truth: dict[tuple[str, str], str]
    truth_after: dict[tuple[str, str], str]
    payments: dict[tuple[str, str], dict[str, Any]]
    subscriptions: dict[tuple[str, str], dict[str, Any]]
    grants: list[dict[str, Any]]
    revenue: int = 0  # the revenue:subscriptions balance, in the same database snapshot


class Checker:
    def __init__(self, engine: Engine, sandbox: SandboxClient, payments: list[Pay]) -> None:
        self.engine = engine
        self.sandbox = sandbox
        self.payments = payments
        self.by_key = {p.key: p for p in payments}
        #: Payments found lost, wrongly paid or unregistered by the last check (for the evidence).
        self.problems: dict[tuple[str, str], str] = {}

    def truth(self) -> dict[tuple[str, str], str]:
        out: dict[tuple[str, str], str] = {}
        for provider in PROVIDERS:
            for txn in self.sandbox.transactions(provider):
                out[(provider, txn.get("transaction_id") or txn.get("reference") or "")] = str(txn["status"])
        return out

    def snapshot(self) -> Snapshot:
        truth = self.truth()
        # One database snapshot for every read (payments keep settling while the checker reads).
        with self.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
            rows = conn.execute(
                text(
                    "SELECT id, provider, reference, status, settled, amount, confirmed_amount, "
                    "registered_at IS NOT NULL AS registered FROM payments"
                )
            ).mappings()
            payments = {(r["provider"], r["reference"]): dict(r) for r in rows}
            subs = conn.execute(
                text("SELECT id, product, account, starts_at, ends_at, active FROM subscriptions")
            ).mappings()
            subscriptions = {(r["product"], r["account"]): dict(r) for r in subs}
            grants = [
                dict(r)
                for r in conn.execute(
                    text(
                        "SELECT g.subscription_id, g.payment_id, g.kind, g.days, p.provider, p.reference "
                        "FROM subscription_grants g LEFT JOIN payments p ON p.id = g.payment_id"
                    )
                ).mappings()
            ]
            revenue = conn.execute(
                text(
                    "SELECT coalesce(sum(CASE e.side WHEN 'credit' THEN e.amount ELSE -e.amount END), 0) "
                    "FROM ledger_entries e JOIN ledger_accounts a ON a.id = e.account_id "
                    "WHERE a.code = 'revenue:subscriptions'"
                )
            ).scalar_one()
        truth_after = self.truth()
        return Snapshot(truth, truth_after, payments, subscriptions, grants, int(revenue))

    def letters_missing(self, malformed: set[str]) -> list[str]:
        """The tags of malformed messages not dead-lettered yet (with a malformed input's reason)."""
        with self.engine.connect() as conn:
            letters = conn.execute(text("SELECT reason, payload FROM dead_letters")).all()
        seen = {
            tag
            for reason, payload in letters
            if reason in MALFORMED_REASONS
            for tag in MALFORMED_TAG.findall(payload or "")
        }
        return sorted(malformed - seen)

    def due(self, snap: Snapshot) -> list[Pay]:
        """Payments the provider says were paid, at the registered amount: each must grant access."""
        return [p for p in self.payments if snap.truth.get(p.key) in PAID and p.confirm_amount is None]

    def settled_state(self, snap: Snapshot, now: datetime) -> dict[str, list[str]]:
        """The invariants that settling must reach (polled until they hold): problem examples per name."""
        problems: dict[str, list[str]] = {"lost": [], "wrongly_paid": [], "registrations_lost": [], "access": []}
        self.problems = {}
        for pay in self.payments:
            ours = snap.payments.get(pay.key)
            name = f"{pay.provider}:{pay.reference}"
            if snap.truth.get(pay.key) in PAID and (ours is None or ours["status"] not in ("succeeded", "refunded")):
                problems["lost"].append(f"{name} ({ours['status'] if ours else 'unknown'})")
                self.problems[pay.key] = "lost"
            if ours is not None and ours["status"] == "succeeded" and snap.truth_after.get(pay.key) not in PAID:
                problems["wrongly_paid"].append(f"{name} ({snap.truth_after.get(pay.key)})")
                self.problems[pay.key] = "wrongly paid"
            if ours is None or not ours["registered"]:
                problems["registrations_lost"].append(name)
                self.problems.setdefault(pay.key, "registration lost")
        problems["access"] = self.account_problems(snap, now)
        return problems

    def expected_days(self, snap: Snapshot) -> dict[tuple[str, str], int]:
        days: Counter[tuple[str, str]] = Counter()
        for pay in self.due(snap):
            days[(pay.product, pay.account)] += pay.periods * pay.period_days
        return dict(days)

    def account_problems(self, snap: Snapshot, now: datetime) -> list[str]:
        """Accounts whose access differs from their paid periods x period length."""
        expected = self.expected_days(snap)
        granted: Counter[int] = Counter()
        for grant in snap.grants:
            granted[grant["subscription_id"]] += grant["days"]
        problems: list[str] = []
        for key in sorted(set(expected) | set(snap.subscriptions)):
            want, sub = expected.get(key, 0), snap.subscriptions.get(key)
            if sub is None:
                if want:
                    problems.append(f"{key[1]}: no subscription, {want} days paid")
                continue
            span = sub["ends_at"] - sub["starts_at"]
            span_days = span.days + span.seconds / 86400
            has = granted[sub["id"]]
            if has != want or abs(span_days - want) > 1e-6 or (want and (not sub["active"] or sub["ends_at"] <= now)):
                problems.append(
                    f"{key[1]}: paid {want} d, granted {has} d, ends-starts {span_days:g} d, active {sub['active']}"
                )
        return problems

    def full(self, snap: Snapshot, traffic: Traffic, fleet: Fleet, settle_s: float | None, cfg: Config) -> list[Row]:
        now = datetime.now(UTC)
        state = self.settled_state(snap, now)
        rows = [
            row("lost: paid at the provider, not in payrecon", state["lost"]),
            row("wrongly paid: paid in payrecon, not at the provider", state["wrongly_paid"]),
            row("registrations lost", state["registrations_lost"]),
        ]
        due = {p.key for p in self.due(snap)}
        per_payment: Counter[tuple[str, str]] = Counter()
        undue: list[str] = []
        for grant in snap.grants:
            if grant["kind"] != "payment":
                undue.append(f"{grant['kind']} grant on subscription {grant['subscription_id']}")
                continue
            key = (grant["provider"], grant["reference"])
            per_payment[key] += 1
            if key not in due:
                undue.append(f"{key[0]}:{key[1]} ({snap.truth.get(key)})")
        with self.engine.connect() as conn:
            double_journals = conn.execute(
                text(
                    "SELECT payment_id, kind, count(*) FROM ledger_journals WHERE payment_id IS NOT NULL "
                    "GROUP BY payment_id, kind HAVING count(*) > 1"
                )
            ).all()
            unbalanced = conn.execute(
                text(
                    "SELECT j.id FROM ledger_journals j LEFT JOIN ledger_entries e ON e.journal_id = j.id "
                    "GROUP BY j.id HAVING coalesce(sum(CASE e.side WHEN 'debit' THEN e.amount "
                    "ELSE -e.amount END), 0) <> 0 OR count(e.id) = 0"
                )
            ).all()
            letters = conn.execute(text("SELECT id, reason, payload FROM dead_letters")).all()
            inbox = (
                conn.execute(
                    text("SELECT provider, body, headers, status FROM inbox WHERE body = ANY(:bodies)"),
                    {"bodies": [body for _, body, _ in traffic.must_quarantine]},
                ).all()
                if traffic.must_quarantine
                else []
            )
        doubles = [f"{k[0]}:{k[1]} x{n}" for k, n in per_payment.items() if n > 1]
        doubles += [f"payment {pid}: {n} {kind} journals" for pid, kind, n in double_journals]
        rows.append(row("double grants or journals", doubles))
        rows.append(row("undue grants (refused, mismatched or unpaid)", undue))
        rows.append(row("accounts: days granted = paid periods x period", state["access"]))
        rows.append(row("unbalanced journals", [f"journal {j}" for (j,) in unbalanced]))
        # Revenue in the snapshot = the amounts of the payments settled in it (lost and wrongly paid above
        # hold those to the providers' truth, read before and after the snapshot).
        revenue = snap.revenue
        want_revenue = sum(
            p.amount
            for p in self.payments
            if (ours := snap.payments.get(p.key)) is not None and ours["status"] == "succeeded" and ours["settled"]
        )
        rows.append(
            Row(
                "revenue = what the providers confirmed", str(want_revenue), str(revenue), revenue == want_revenue,
                "" if revenue == want_revenue else f"difference {int(revenue) - want_revenue}",
            )
        )  # fmt: skip
        accepted: list[str] = []
        for provider, body, headers in traffic.must_quarantine:
            for r_provider, r_body, r_headers, status in inbox:
                same = {k.lower(): v for k, v in (r_headers or {}).items()} == {
                    k.lower(): v for k, v in headers.items()
                }
                if r_provider == provider and r_body == body and same and status == "processed":
                    accepted.append(f"{provider} {body[:40]!r}")
        for key in traffic.targeted:
            ours = snap.payments.get(key)
            if ours is not None and ours["status"] == "succeeded" and snap.truth_after.get(key) not in PAID:
                accepted.append(f"{key[0]}:{key[1]} paid after a forged callback")
        rows.append(row("forged callbacks accepted", accepted))
        nonces = set(traffic.malformed)
        seen: Counter[str] = Counter()
        unexpected: list[str] = []
        for letter_id, reason, payload in letters:
            tags = set(MALFORMED_TAG.findall(payload or "")) & nonces
            if reason in MALFORMED_REASONS and tags:
                seen.update(tags)
            else:
                unexpected.append(f"#{letter_id} {reason}")
        missing = sorted(nonces - set(seen))
        reasons = Counter(reason for _, reason, _ in letters if reason not in MALFORMED_REASONS)
        detail = ", ".join(f"{r}: {n}" for r, n in reasons.most_common())
        if missing:
            detail = f"{detail}; malformed input without its dead letter: {len(missing)}".lstrip("; ")
        rows.append(
            Row(
                "dead letters = the malformed input, all of it", f"{len(nonces)} malformed only",
                f"{len(letters)} ({len(unexpected)} other, {len(missing)} missing)", not unexpected and not missing,
                detail,
            )
        )  # fmt: skip
        exits = [f"{e.name} exit {e.returncode} at {e.at:.0f} s" for e in fleet.unexpected]
        rows.append(row("worker or beat exits other than the kills", exits))
        ok = settle_s is not None and settle_s <= cfg.access_within
        rows.append(
            Row(
                f"every paid customer has access within {cfg.access_within:.0f} s after the faults stop",
                f"<= {cfg.access_within:.0f} s", "never" if settle_s is None else f"{settle_s:.1f} s", ok,
                "" if ok else f"not settled after {cfg.settle_timeout:.0f} s" if settle_s is None else "too slow",
            )
        )  # fmt: skip
        return rows


def row(name: str, problems: list[str]) -> Row:
    return Row(name, "0", str(len(problems)), not problems, "; ".join(problems[:3]))


def print_table(rows: list[Row]) -> None:
    width = max(len(r.name) for r in rows)
    print(f"\n{'invariant':<{width}}  {'expected':>12}  {'found':>22}  result")
    print("-" * (width + 50))
    for r in rows:
        result = "ok" if r.ok else "VIOLATION"
        print(f"{r.name:<{width}}  {r.expected:>12}  {r.found:>22}  {result}{'  ' + r.detail if r.detail else ''}")
    print(flush=True)


# --------------------------------------------------------------------------- evidence


def evidence(
    engine: Engine,
    *,
    broker: str,
    vhost: RabbitVhost | None,
    fleet: Fleet,
    traffic: Traffic,
    fault_rates: dict[str, Any] | None,
    checker: Checker,
) -> None:
    print("evidence:")
    with engine.connect() as conn:
        for title, sql in (
            ("inbox by status", "SELECT status, count(*) FROM inbox GROUP BY status ORDER BY 2 DESC"),
            ("payments by status", "SELECT status, count(*) FROM payments GROUP BY status ORDER BY 2 DESC"),
            ("dead letters by reason", "SELECT reason, count(*) FROM dead_letters GROUP BY reason ORDER BY 2 DESC"),
            (
                "non-final payments by next check",
                "SELECT CASE WHEN next_check_at IS NULL THEN 'none' WHEN next_check_at <= now() THEN 'due' "
                "ELSE 'in ' || (ceil(extract(epoch FROM next_check_at - now()) / 60))::int || ' min' END, count(*) "
                "FROM payments WHERE status IN ('registered', 'pending') GROUP BY 1 ORDER BY 2 DESC",
            ),
        ):
            with suppress(Exception):
                found = ", ".join(f"{k}: {n}" for k, n in conn.execute(text(sql)).all())
                print(f"  {title}: {found or '-'}")
        with suppress(Exception):
            stuck = conn.execute(
                text("SELECT provider, count(*) FROM inbox WHERE status = 'received' GROUP BY provider")
            ).all()
            if stuck:
                print(f"  inbox rows still 'received': {', '.join(f'{p}: {n}' for p, n in stuck)}")
    if broker.startswith("redis"):
        client = redis.Redis.from_url(broker)
        with suppress(redis.RedisError):
            lengths = {q: client.llen(q) for q in QUEUES}
            print(f"  broker lists: {', '.join(f'{q}: {n}' for q, n in lengths.items())}")
            held = unacked_messages(client, checker)
            print(f"  'unacked' (delivered to a consumer, never acknowledged): {sum(held.values())} messages")
            for (task, names), n in sorted(held.items(), key=lambda item: -item[1])[:8]:
                print(f"    {n} x {task}{' about ' + names if names else ''}")
        client.close()
    elif vhost is not None:
        with suppress(StormError):
            print(f"  rabbitmq queues: {vhost.queues()}")
    for e in fleet.unexpected:
        print(f"  {e.name} ({e.kind}) exited by itself, code {e.returncode}, at {e.at:.0f} s; last lines:")
        for line in e.tail.splitlines()[-4:]:
            print(f"    {line[:300]}")
    for line in problem_histories(engine, checker):
        print(f"  {line}")
    tracebacks = sum(p.read_text(errors="replace").count("Traceback") for p in fleet.logs.glob("*.log"))
    print(f"  tracebacks in the worker and beat logs: {tracebacks}")
    counts = ", ".join(f"{k}: {n}" for k, n in sorted(traffic.counts.items()))
    print(f"  traffic: {counts}; publish retries: {traffic.producer.retries}")
    if traffic.errors:
        print(f"  traffic errors ({len(traffic.errors)}), first: {traffic.errors[0]}")
    if fault_rates:
        injected = ", ".join(f"{r['fault']}: {r['injected']}" for r in fault_rates["rates"])
        print(f"  provider faults injected over {fault_rates['drawn']} answers: {injected or 'none (stopped)'}")
    print(flush=True)


def unacked_messages(client: redis.Redis, checker: Checker) -> Counter[tuple[str, str]]:
    """What sits in kombu's ``unacked`` hash: (task, the problem payments it names) -> count."""
    held: Counter[tuple[str, str]] = Counter()
    references = {key[1]: f"{key[0]}:{key[1]}" for key in checker.problems}
    for raw in client.hvals("unacked"):
        try:
            message = json.loads(raw)[0]
            task = str(message["headers"]["task"])
            body = base64.b64decode(message["body"]).decode(errors="replace")
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            held[("unreadable", f"{type(exc).__name__}: {raw[:120]!r}")] += 1
            continue
        named = sorted(name for reference, name in references.items() if reference in body)
        held[(task, ", ".join(named[:3]))] += 1
    return held


def problem_histories(engine: Engine, checker: Checker, limit: int = 6) -> list[str]:
    """A line per problem payment: what payrecon knows of it."""
    lines: list[str] = []
    with engine.connect() as conn:
        for (provider, reference), problem in list(checker.problems.items())[:limit]:
            pay = checker.by_key[(provider, reference)]
            found = conn.execute(
                text(
                    "SELECT p.status, p.registered_at IS NOT NULL, p.check_count, "
                    "round(extract(epoch FROM p.next_check_at - now())), "
                    "(SELECT count(*) FROM verifications v WHERE v.payment_id = p.id) "
                    "FROM payments p WHERE p.provider = :p AND p.reference = :r"
                ),
                {"p": provider, "r": reference},
            ).first()
            inbox = conn.execute(
                text("SELECT status, count(*) FROM inbox WHERE provider = :p AND reference = :r GROUP BY status"),
                {"p": provider, "r": reference},
            ).all()
            what = (
                f"payrecon {found[0]}, registered {found[1]}, {found[4]} verifications, next check in {found[3]} s"
                if found is not None
                else "unknown to payrecon"
            )
            deliveries = ", ".join(f"{status} x{n}" for status, n in inbox) or "none"
            story = f"fate {pay.fate}, webhooks {pay.copies if pay.webhook else 0}, first {pay.webhook_first}"
            lines.append(f"{problem}: {provider}:{reference} ({story}): {what}; inbox: {deliveries}")
    return lines


def plant_violations(engine: Engine, snap: Snapshot, checker: Checker) -> dict[str, int]:
    """Self-check: one violation of each kind the database can hold; returns the rows expected to grow."""
    refused = next(p for p in checker.payments if snap.truth.get(p.key) not in PAID and p.key in snap.payments)
    granted = next(p for p in checker.due(snap) if p.key in snap.payments)
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))  # no triggers: a saboteur
        conn.execute(
            text("UPDATE payments SET status = 'succeeded' WHERE provider = :p AND reference = :r"),
            {"p": refused.provider, "r": refused.reference},
        )
        conn.execute(
            text("UPDATE payments SET status = 'pending' WHERE provider = :p AND reference = :r"),
            {"p": granted.provider, "r": granted.reference},
        )
        conn.execute(
            text("UPDATE subscriptions SET ends_at = ends_at + interval '1 day' WHERE account = :a AND product = :pr"),
            {"a": granted.account, "pr": granted.product},
        )
        conn.execute(
            text(
                "INSERT INTO dead_letters (task, reason, detail, payload, created_at) "
                "VALUES ('payrecon.ingest_webhook', 'internal_error', 'planted', '{}', now())"
            )
        )
        journal = conn.execute(
            text(
                "INSERT INTO ledger_journals (kind, memo, created_at) VALUES ('planted', 'planted', now()) RETURNING id"
            )
        ).scalar_one()
        account = conn.execute(text("SELECT id, currency FROM ledger_accounts LIMIT 1")).one()
        conn.execute(
            text(
                "INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency) "
                "VALUES (:j, :a, 'debit', 100, :c)"
            ),
            {"j": journal, "a": account[0], "c": account[1]},
        )
    return {
        "wrongly paid: paid in payrecon, not at the provider": 1,
        "lost: paid at the provider, not in payrecon": 1,
        "accounts: days granted = paid periods x period": 1,
        "unbalanced journals": 1,
    }


# --------------------------------------------------------------------------- the run


@contextmanager
def run_directory(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="payrecon-storm-"))
    path.chmod(0o755)  # the postgres user walks into it
    try:
        yield path
    finally:
        if keep:
            log(f"run directory kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def worker_env(cfg: Config, db_url: str, broker_url: str, redis_url: str, sandbox: SandboxServer) -> dict[str, str]:
    """The environment a user sets for payrecon (nothing of the caller's payrecon settings leaks in)."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PAYRECON_", "CELERY_", "CINETPAY_", "MTN_MOMO_", "ORANGE_MONEY_", "WAVE_"))
        and k not in ("DATABASE_URL", "PYTHONPATH", "PROMETHEUS_MULTIPROC_DIR")
    }
    env = base | sandbox.worker_env()
    env |= {"DATABASE_URL": db_url, "CELERY_BROKER_URL": broker_url, "PYTHONPATH": str(cfg.code)}
    env |= {"PAYRECON_METRICS_PORT": "0", "PAYRECON_BEAT_METRICS_PORT": "0"}
    if not broker_url.startswith("redis"):
        env["PAYRECON_REDIS_URL"] = redis_url
    if cfg.budget != "profile":
        env |= {f"PAYRECON_BUDGET_{p.upper()}": cfg.budget for p in PROVIDERS}
    return env


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        return run(cfg)
    except StormError as exc:
        log(f"the storm could not run: {exc}")
        print(f"storm seed={cfg.seed} broker={cfg.broker} payments={cfg.payments} kills=0 violations=? settle_s=none")
        return 2


def run(cfg: Config) -> int:
    rng = random.Random(cfg.seed)
    started = time.monotonic()
    log(
        f"storm seed={cfg.seed}: {cfg.payments} payments in {cfg.duration:.0f} s, broker {cfg.broker}, "
        f"{cfg.workers} workers + beat from {cfg.code}, a worker SIGKILLed every ~{cfg.kill_every:.0f} s"
    )
    with run_directory(cfg.keep) as run_dir:
        own_redis, own_pg = OwnRedis(run_dir), OwnPostgres(run_dir)
        vhost = RabbitVhost(cfg.seed) if cfg.broker == "rabbitmq" else None
        sandbox: SandboxServer | None = None
        fleet: Fleet | None = None
        producer: Producer | None = None
        engine: Engine | None = None
        try:
            own_redis.start()
            own_pg.init()
            own_pg.start()
            own_pg.create_database()
            if vhost is not None:
                vhost.create()
            broker_url = vhost.url if vhost is not None else f"{own_redis.url}/0"
            redis_url = f"{own_redis.url}/0"
            sandbox = SandboxServer(broker_url=broker_url, latency=cfg.latency, notify_retry_for=600.0).start()
            env = worker_env(cfg, own_pg.url, broker_url, redis_url, sandbox)
            migrated = subprocess.run(
                [str(Path(sys.executable).with_name("payrecon")), "migrate"],
                cwd=run_dir, env=env, capture_output=True, text=True, timeout=180, check=False,
            )  # fmt: skip
            if migrated.returncode:
                raise StormError(f"payrecon migrate failed: {migrated.stderr[-2000:]}")
            engine = create_engine(own_pg.url, pool_pre_ping=True, pool_size=4)
            with engine.connect() as conn:
                catalogue = {
                    r.code: Plan(r.code, r.product, int(r.price), int(r.period_days))
                    for r in conn.execute(text("SELECT code, product, price, period_days FROM plans WHERE active"))
                }
            payments, events = plan_traffic(cfg, catalogue, rng)
            producer = Producer(broker_url)
            traffic = Traffic(sandbox.url, producer, random.Random(cfg.seed + 1))
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(traffic.create, payments))
            log(f"{len(payments)} transactions scripted at the sandbox; {len(events)} events planned")

            clock_zero = [time.monotonic()]
            fleet = Fleet(env, run_dir, lambda: time.monotonic() - clock_zero[0])
            starting = [fleet.spawn("worker") for _ in range(cfg.workers)] + [fleet.spawn("beat")]
            for proc in starting:
                fleet.wait_ready(proc)
            fleet.start_monitor()
            log(f"{cfg.workers} workers and beat ready ({time.monotonic() - started:.0f} s since start)")

            control = SandboxClient(sandbox.url)
            five, limited, slow = cfg.fault_rates
            control.set_fault_rates(
                [
                    {"probability": five, "fault": {"status": 503}},
                    {"probability": limited, "fault": {"status": 429, "retry_after": 1}},
                    {"probability": slow, "fault": {"delay": cfg.slow_seconds}},
                ],
                seed=cfg.seed,
            )
            clock_zero[0] = time.monotonic()
            fault_errors: list[BaseException] = []

            def faulting() -> None:
                try:
                    run_faults(cfg, fleet, own_redis, own_pg, random.Random(cfg.seed + 2))
                except BaseException as exc:
                    fault_errors.append(exc)

            faults = threading.Thread(target=faulting, name="storm-faults", daemon=True)
            faults.start()
            with ThreadPoolExecutor(16) as pool:
                for event in events:
                    wait = clock_zero[0] + event.at - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    pool.submit(traffic.run, event)
            faults.join()
            if fault_errors:
                raise StormError(f"the faults could not be played: {fault_errors[0]!r}")
            control.set_fault_rates([])
            faults_stopped = time.monotonic()
            log(
                f"traffic and faults over at {faults_stopped - clock_zero[0]:.0f} s: {len(fleet.kills)} kills, "
                f"{len(fleet.unexpected)} exits by themselves; waiting for every paid customer's access"
            )
            if traffic.counts["storm_errors"]:
                raise StormError(f"{traffic.counts['storm_errors']} events could not be sent: {traffic.errors[0]}")

            checker = Checker(engine, control, payments)
            settle_s: float | None = None
            letters_missing: list[str] = []
            while True:
                try:
                    snap = checker.snapshot()
                    state = checker.settled_state(snap, datetime.now(UTC))
                    # A malformed delivery a killed worker held is dead-lettered once its lease ends.
                    letters_missing = checker.letters_missing(traffic.malformed)
                except Exception as exc:  # the database between restarts: try again
                    log(f"check failed, retrying: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                    state = {"error": ["check failed"]}
                elapsed = time.monotonic() - faults_stopped
                settled = not (
                    state.get("lost") or state.get("wrongly_paid") or state.get("access") or state.get("error")
                )
                if settled and settle_s is None:
                    settle_s = elapsed  # every paid customer has access: the time the storm reports
                if (settled and not letters_missing) or elapsed > cfg.settle_timeout:
                    break
                time.sleep(2.0)
            log(f"settled in {settle_s:.1f} s" if settle_s is not None else "NOT settled: checking anyway")
            if letters_missing:
                log(f"malformed input still without its dead letter: {len(letters_missing)}")
            snap = checker.snapshot()
            rows = checker.full(snap, traffic, fleet, settle_s, cfg)
            print_table(rows)
            evidence(
                engine, broker=broker_url, vhost=vhost, fleet=fleet, traffic=traffic,
                fault_rates=control.fault_rates(), checker=checker,
            )  # fmt: skip
            violations = sum(not r.ok for r in rows)
            self_check = ""
            if cfg.self_check:
                verdict = run_self_check(
                    engine, checker, snap=snap, traffic=traffic, fleet=fleet, settle_s=settle_s, cfg=cfg, before=rows
                )
                self_check = f" self_check={verdict}"
            print(
                f"storm seed={cfg.seed} broker={cfg.broker} payments={cfg.payments} kills={len(fleet.kills)} "
                f"violations={violations} settle_s={'none' if settle_s is None else f'{settle_s:.1f}'}{self_check}",
                flush=True,
            )
            return 1 if violations or self_check.endswith("failed") else 0
        finally:
            if fleet is not None:
                fleet.stop()
            if producer is not None:
                producer.close()
            if sandbox is not None:
                sandbox.stop()
            if engine is not None:
                engine.dispose()
            if vhost is not None:
                vhost.delete()
            own_pg.stop()
            own_redis.stop()


def run_faults(cfg: Config, fleet: Fleet, own_redis: OwnRedis, own_pg: OwnPostgres, rng: random.Random) -> None:
    """Kills every ~kill_every s, one Redis and one PostgreSQL crash-restart, until the storm's duration."""
    plan: list[tuple[float, str]] = []
    at = cfg.kill_every * rng.uniform(0.75, 1.25)
    while at < cfg.duration - 2:
        plan.append((at, "kill"))
        at += cfg.kill_every * rng.uniform(0.75, 1.25)
    if cfg.redis_restart:
        plan.append((cfg.duration * 0.35, "redis"))
    if cfg.pg_restart:
        plan.append((cfg.duration * 0.65, "postgres"))
    zero = time.monotonic()
    for at, what in sorted(plan):
        wait = zero + at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if what == "kill":
            victim = fleet.kill_random_worker(rng)
            log(f"SIGKILL {victim} (a replacement starts)")
        elif what == "redis":
            log(f"crash-restarting the storm's Redis ({cfg.down_seconds:.0f} s down)")
            own_redis.crash()
            time.sleep(cfg.down_seconds)
            own_redis.start()
        else:
            log(f"crash-restarting the storm's PostgreSQL ({cfg.down_seconds:.0f} s down)")
            own_pg.crash()
            time.sleep(cfg.down_seconds)
            own_pg.start()
    rest = zero + cfg.duration - time.monotonic()
    if rest > 0:
        time.sleep(rest)


def run_self_check(
    engine: Engine,
    checker: Checker,
    *,
    snap: Snapshot,
    traffic: Traffic,
    fleet: Fleet,
    settle_s: float | None,
    cfg: Config,
    before: list[Row],
) -> str:
    """Plant violations, check again: every planted one must be seen."""
    try:
        expected = plant_violations(engine, snap, checker)
    except StopIteration:
        log("self-check: not enough payments to plant violations in")
        return "failed"
    after = {r.name: r for r in checker.full(checker.snapshot(), traffic, fleet, settle_s, cfg)}
    was = {r.name: r for r in before}
    missed = []
    for name, grew in expected.items():
        delta = int(after[name].found) - int(was[name].found)
        if delta < grew:
            missed.append(f"{name} (+{delta}, planted {grew})")
    letters = after["dead letters = the malformed input, all of it"]
    if letters.ok:
        missed.append("a planted internal_error dead letter")
    log(f"self-check: {len(expected) + 1 - len(missed)} of {len(expected) + 1} planted violations seen")
    for name in missed:
        log(f"self-check MISSED: {name}")
    return "failed" if missed else "ok"


if __name__ == "__main__":
    sys.exit(main())
