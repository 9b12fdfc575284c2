"""``payrecon demo``: the whole pipeline offline, on embedded defaults.

SQLite for the data, kombu's SQLAlchemy transport on SQLite as the broker, the
provider sandbox in this process, and a real Celery worker process (with beat
embedded for the re-checks), all in ``./var/demo`` (``--tmp``: a temporary
directory, removed at the end). ``DATABASE_URL`` / ``CELERY_BROKER_URL`` replace
the embedded stores when set. It registers a few dozen payments with mixed fates,
delivers their notifications through the broker, waits for the worker to settle
them, and prints what happened. Then it writes the statement file each provider's
portal would export for the day (the sandbox's truth, with deliberate anomalies),
imports them, and prints the command that reconciles the day: it does not
reconcile the day itself, so that command finds the lost webhooks to heal.
"""

from __future__ import annotations

import csv
import os
import secrets
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
from sqlalchemy import func, select

from providers.profiles import PROFILES
from providers.sandbox.client import SandboxClient
from providers.sandbox.server import SandboxServer
from reconciliation import migrate, views
from reconciliation.db import make_engine, normalize_database_url, session_factory, transaction
from reconciliation.models import FlagKind, InboxDelivery, InboxStatus, Payment, PaymentFlag, PaymentStatus
from reconciliation.reports.labels import PROVIDERS as PROVIDERS_LABELS
from reconciliation.reports.labels import label
from reconciliation.statements.files import MAPPINGS, import_file
from schemas.currency import format_amount, to_major
from schemas.producer import INGEST_TASK, QUEUE, REGISTER_TASK
from worker.settings import PROVIDERS

CREDENTIALS = {"api_key": "demo-api-key", "site_id": "100000", "secret_key": "demo-secret-key"}
#: (plan, price per period): the marketplace sells through CinetPay, the reading platform the others.
PLANS = {
    "cinetpay": ("depannage-monthly", 5000),
    "mtn_momo": ("coko-premium-monthly", 6500),
    "orange_money": ("coko-premium-monthly", 6500),
    "wave": ("coko-premium-monthly", 6500),
}
PERIODS = (1, 3, 6)


@dataclass
class Case:
    provider: str
    reference: str
    story: str
    fate: str = "accepted"
    periods: int = 1
    expect: PaymentStatus | None = PaymentStatus.SUCCEEDED  # None: never registered with us
    options: dict[str, Any] = field(default_factory=dict)
    deliveries: int = 1
    forged: bool = False
    register_late: bool = False
    provider_data: dict[str, Any] = field(default_factory=dict)
    created_hours_ago: int = 0
    created_at: datetime | None = None  # as registered (``_created_at``)
    paid_later: bool = False  # paid at the provider once the worker has stopped looking: a lost webhook

    @property
    def amount(self) -> int:
        return PLANS[self.provider][1] * self.periods


RUN = secrets.token_hex(3).upper()  # references differ between runs that share a database


def _reference(provider: str, i: int) -> str:
    if provider == "mtn_momo":  # MoMo's reference is the X-Reference-Id, a UUID v4
        return str(uuid.uuid4())
    return {"cinetpay": "TXN", "orange_money": "ORD", "wave": "CR"}[provider] + f"-D{RUN}{i:05X}"


#: The stories of the nightly reconciliation, each at one provider (after the stories told at every provider).
SLA, LOST, UNKNOWN, REFUND = (
    "pending past its settlement SLA",
    "lost webhook: paid after the last check",
    "paid, never registered with us",
    "paid, then refunded by the provider",
)
NIGHTLY = (SLA, LOST, UNKNOWN, REFUND)


def scenario(count: int) -> list[Case]:
    cases = []
    for i in range(count):
        provider = PROVIDERS[i % len(PROVIDERS)]
        ref, periods, kind = _reference(provider, i), PERIODS[i % 3], (i // len(PROVIDERS)) % 8
        price = PLANS[provider][1]
        if kind == 1:
            case = Case(provider, ref, "refused by the customer", "refused", periods, PaymentStatus.FAILED)
        elif kind == 2:
            case = Case(provider, ref, "pending, then paid; no callback ever: janitor", "waiting_then_accepted",
                        periods, options={"pending_checks": 1}, deliveries=0)  # fmt: skip
        elif kind == 3:
            case = Case(provider, ref, "paid, callback delivered 3 times", periods=periods, deliveries=3)
        elif kind == 4:
            case = Case(provider, ref, "forged 'paid' callback for a refused payment", "refused", periods,
                        PaymentStatus.FAILED, forged=True)  # fmt: skip
        elif kind == 5:
            # Orange's documented status answer has no amount: here, a deployment that echoes it (one that
            # does not is settled at the registered amount and its statement flags the difference).
            echo = {"echo_amount": True} if provider == "orange_money" else {}
            case = Case(provider, ref, "provider confirms a smaller amount (tampered)", periods=periods,
                        options={"confirm_amount": price * periods // 5, **echo})  # fmt: skip
        elif kind == 6:
            case = Case(provider, ref, "callback before its registration", periods=periods, register_late=True)
        elif kind == 7:
            case = Case(provider, ref, "provider answers 500, then 429, then paid", periods=periods,
                        options={"faults": [{"status": 500}, {"status": 429, "retry_after": 0}]})  # fmt: skip
        else:
            case = Case(provider, ref, "paid", periods=periods)
        cases.append(case)
    # For the nightly reconciliation: a payment stuck past its settlement SLA (CinetPay), webhooks lost
    # (MoMo, Orange: paid once the worker stopped looking), money Orange took for a payment nobody
    # registered with us, and a payment Wave refunded (its statement says so; its status API does not).
    n = count
    cases += [
        Case("cinetpay", _reference("cinetpay", n), SLA, "waiting", expect=PaymentStatus.PENDING, deliveries=0,
             created_hours_ago=2),
        Case("mtn_momo", _reference("mtn_momo", n + 1), LOST, "waiting", expect=PaymentStatus.PENDING, deliveries=0,
             paid_later=True),
        Case("orange_money", _reference("orange_money", n + 2), LOST, "waiting", expect=PaymentStatus.PENDING,
             deliveries=0, paid_later=True),
        Case("orange_money", _reference("orange_money", n + 3), UNKNOWN, expect=None, deliveries=0),
        Case("wave", _reference("wave", n + 4), REFUND, options={"refunded_at": datetime.now(UTC).isoformat()}),
    ]  # fmt: skip
    return cases


def _prepare_sqlite_broker(path: Path) -> None:
    # WAL persists in the file: set it once before the worker polls it (2.4x faster).
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


#: Where the demo keeps its state (relative to the current directory), unless ``--tmp``.
DEMO_DIR = Path("var/demo")
#: What a previous demo left in ``DEMO_DIR``: removed when the next one starts (nothing else is).
DEMO_FILES = (
    "payrecon.sqlite", "payrecon.sqlite-wal", "payrecon.sqlite-shm", "broker.sqlite", "broker.sqlite-wal",
    "broker.sqlite-shm", "worker.log", "celerybeat-schedule", "celerybeat-schedule.db", "statements", "reports",
)  # fmt: skip


def run_demo(
    *, count: int = 36, tmp: bool = False, sandbox_url: str | None = None, external_worker: bool = False
) -> int:
    """Run the scenario; ``sandbox_url`` / ``external_worker``: use a running stack's instead of our own."""
    workdir = Path(tempfile.mkdtemp(prefix="payrecon-demo-")) if tmp else _fresh(DEMO_DIR.resolve())
    database_url = _database_url(workdir)
    broker_url = os.environ.get("CELERY_BROKER_URL") or f"sqla+sqlite:///{workdir / 'broker.sqlite'}"
    if external_worker and not (os.environ.get("DATABASE_URL") and os.environ.get("CELERY_BROKER_URL")):
        raise click.UsageError("--external-worker needs DATABASE_URL and CELERY_BROKER_URL of the running stack")
    if broker_url.startswith("sqla+sqlite:///"):
        _prepare_sqlite_broker(Path(broker_url.removeprefix("sqla+sqlite:///")))
    click.secho("payrecon demo", bold=True)
    click.echo(f"  directory {_shown(workdir)}{' (temporary: removed at the end)' if tmp else ''}")
    click.echo(f"  database  {_safe(database_url)}\n  broker    {_safe(broker_url)}")
    migrate.upgrade(database_url)
    sandbox = _start_sandbox() if sandbox_url is None else None
    api_url: str = sandbox.url if sandbox is not None else sandbox_url or ""
    click.echo(f"  sandbox   {api_url} (CinetPay, MTN MoMo, Orange Money and Wave wire formats)")
    log_path = workdir / "worker.log"
    worker = None
    if external_worker:
        click.echo("  worker    the running stack's (its beat re-checks pending payments on their schedule)")
    else:
        assert sandbox is not None  # noqa: S101 - our own worker talks to our own sandbox
        worker = _start_worker(_worker_env(sandbox, database_url, broker_url), workdir, log_path)
    engine = make_engine(database_url, pool_size=2)
    sessions = session_factory(engine)
    control = SandboxClient(api_url)
    cases = scenario(count)
    try:
        _send(cases, control, broker_url)
        ok = _wait(sessions, cases, timeout=120 if worker else 600)
        if worker is not None:  # before the lost webhooks' payments happen: nothing may heal them now
            _stop(worker)
            worker = None
        _print_summary(sessions, cases)
        if not ok:
            click.secho("\nthe worker did not settle every payment in time", fg="red")
            click.echo(log_path.read_text(errors="replace")[-4000:] if log_path.exists() else "")
            return 1
        _leave_the_day(control, sessions, cases, workdir, database_url, tmp=tmp)
        return 0
    finally:
        if worker is not None:
            _stop(worker)
        control.close()
        if sandbox is not None:
            sandbox.stop()
        engine.dispose()
        if tmp:
            shutil.rmtree(workdir, ignore_errors=True)


def _leave_the_day(
    control: SandboxClient, sessions: Any, cases: list[Case], workdir: Path, database_url: str, *, tmp: bool
) -> None:
    """What the nightly reconciliation will find: the lost webhooks' payments happen at the provider,
    each provider's statement of the day is written and imported, and the command to run is printed."""
    for case in cases:
        if case.paid_later:  # the customer pays after the worker's last check; its webhook is lost
            control.set_status(case.provider, case.reference, PAID[case.provider])
    tz = _zone()
    day = datetime.now(tz).date()
    _statements(control, sessions, cases, workdir / "statements", day=day, tz=tz)
    _next_steps(cases, workdir, day, database_url, tmp=tmp)


def _fresh(workdir: Path) -> Path:
    """``workdir``, without what a previous demo left there (a demo starts afresh)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in DEMO_FILES:
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return workdir


def _shown(path: Path) -> str:
    """``path`` relative to the current directory when it is below it (shorter to copy), else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _start_sandbox() -> SandboxServer:
    return SandboxServer(
        cinetpay_api_key=CREDENTIALS["api_key"],
        cinetpay_site_id=CREDENTIALS["site_id"],
        cinetpay_secret_key=CREDENTIALS["secret_key"],
    ).start()


def _database_url(workdir: Path) -> str:
    """The user's DATABASE_URL (on psycopg2 in whatever form it came), else a SQLite file of the demo's."""
    given = os.environ.get("DATABASE_URL")
    if not given:
        return f"sqlite:///{workdir / 'payrecon.sqlite'}"
    try:
        return normalize_database_url(given)
    except ValueError as exc:
        raise click.UsageError(f"DATABASE_URL {exc}") from None


def _worker_env(sandbox: SandboxServer, database_url: str, broker_url: str) -> dict[str, str]:
    """Our own worker: fast re-checks, so the janitor's cases finish in seconds."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        **sandbox.worker_env(),
        "PAYRECON_RECHECK_INTERVAL": "1",
        "PAYRECON_RECHECK_SCHEDULE": "1,2,3",
        "PAYRECON_WORKER_CONCURRENCY": "8",
        "PAYRECON_METRICS_PORT": "0",
        "PAYRECON_LOG_FORMAT": "text",
    }


def _stop(worker: subprocess.Popen[bytes]) -> None:
    worker.terminate()
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        worker.kill()


#: The provider's fee in its statement, basis points of the gross amount: what payrecon expects
#: (``worker.nightly.DEFAULT_FEES_BPS``) and, for CinetPay, whose fees payrecon has no schedule
#: for, its common 3.5 %.
FEES_BPS = {"cinetpay": 350, "mtn_momo": 250, "orange_money": 200, "wave": 100}
#: The sandbox state's field holding the provider's transaction id.
TXN_ID = {"cinetpay": "operator_id", "mtn_momo": "financial_transaction_id", "orange_money": "txnid",
          "wave": "wave_transaction_id"}  # fmt: skip
#: The provider's wire status of a paid transaction.
PAID = {"cinetpay": "ACCEPTED", "mtn_momo": "SUCCESSFUL", "orange_money": "SUCCESS", "wave": "succeeded"}
#: What Orange's export gets wrong, one each, on its first successful payments (in this order).
ORANGE_ANOMALIES = ("omitted", "amount", "currency", "failed", "duplicate", "fee")
#: How each provider's statement differs from a plain copy of what the worker settled (printed).
NOTES = {
    "cinetpay": "a payment still pending past its SLA",
    "mtn_momo": "a lost webhook (paid after the worker's last check)",
    "orange_money": "a lost webhook, a payment never registered with us, and one row omitted, one amount, "
    "one currency and one status wrong, one row twice, one fee off",
    "wave": "a refund, and the payout of the day's net to the bank",
}


def _statements(
    control: SandboxClient, sessions: Any, cases: list[Case], folder: Path, *, day: date, tz: ZoneInfo
) -> list[Path]:
    """Write and import, for every provider, the statement its portal would export for ``day``."""
    folder.mkdir(parents=True, exist_ok=True)
    click.secho(f"\nStatements of {day}, as each provider's portal exports them (imported)", bold=True)
    paths = []
    for provider in PROVIDERS:
        rows = _rows(control, [c for c in cases if c.provider == provider], provider)
        path = folder / f"{provider}_{day.isoformat()}.csv"
        _write_statement(path, provider, rows)
        with transaction(sessions) as session:
            imported = import_file(session, provider, path, business_tz=tz)
        click.echo(f"  {provider:<13} {_shown(path)}: {imported.rows} rows; {NOTES[provider]}")
        paths.append(path)
    return paths


def _rows(control: SandboxClient, cases: list[Case], provider: str) -> list[dict[str, Any]]:
    """The provider's truth (the sandbox's state of each transaction), with the portal's anomalies."""
    rows: list[dict[str, Any]] = []
    anomalies = iter(ORANGE_ANOMALIES if provider == "orange_money" else ())
    payout = f"PO-{datetime.now(UTC):%Y%m%d}-{RUN}"
    for case in cases:
        state = control.get(provider, case.reference)
        status = str(state["status"])
        paid = MAPPINGS[provider].statuses.get(status) == "succeeded"
        currency = state.get("confirm_currency") or state["currency"]
        amount = int(state["confirm_amount"] if state.get("confirm_amount") is not None else state["amount"])
        row = {
            "reference": case.reference, "txn_id": state.get(TXN_ID[provider]) or "", "status": status,
            "time": datetime.fromisoformat(str(state.get("paid_at") or state["created_at"]).replace("Z", "+00:00")),
            "amount": amount, "currency": currency, "fee": (amount * FEES_BPS[provider] + 5000) // 10000 if paid else 0,
            "payout": payout if paid and provider == "wave" else "",
        }  # fmt: skip
        if state.get("refunded_at"):  # Wave returns its fee with the money
            refunded = datetime.fromisoformat(str(state["refunded_at"]).replace("Z", "+00:00"))
            row |= {"status": "refunded", "fee": 0, "payout": "", "time": max(refunded, row["time"])}
        anomaly = next(anomalies, None) if paid and case.story not in {LOST, UNKNOWN} else None
        if anomaly == "omitted":
            continue
        if anomaly == "amount":
            row["amount"] -= 500
        elif anomaly == "currency":
            row["currency"] = "XAF"
        elif anomaly == "failed":
            row |= {"status": "FAILED", "fee": 0}
        elif anomaly == "duplicate":
            rows.append({**row, "txn_id": f"{row['txn_id']}-2"})
        elif anomaly == "fee":
            row["fee"] += 100
        rows.append(row)
    if provider == "wave":  # Wave pays the day's net out to the merchant's bank
        net = sum(r["amount"] - r["fee"] for r in rows if r["payout"])
        last = max(r["time"] for r in rows)
        rows.append({"reference": "", "txn_id": "", "status": "payout", "time": last + timedelta(seconds=1),
                     "amount": net, "currency": "XOF", "fee": 0, "payout": payout})  # fmt: skip
    return sorted(rows, key=lambda r: r["time"])


def _write_statement(path: Path, provider: str, rows: list[dict[str, Any]]) -> None:
    """``rows`` in the provider's export layout (``MAPPINGS``, ``docs/statements/<provider>.csv``)."""
    m = MAPPINGS[provider]
    fields = {"reference": m.reference, "txn_id": m.txn_id, "time": m.time, "amount": m.amount,
              "currency": m.currency, "fee": m.fee, "status": m.status, "payout": m.payout}  # fmt: skip
    columns = {key: name for key, name in fields.items() if name is not None}
    zone = ZoneInfo(m.tz)
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(columns.values())
        for row in rows:
            when: datetime = row["time"]
            cells = {
                **row,
                # CinetPay and Orange write local times without an offset (``Mapping.tz``), the others ISO 8601
                "time": when.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")
                if provider in {"cinetpay", "orange_money"}
                else when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "amount": format(to_major(row["amount"], row["currency"]), "f"),
                "fee": format(to_major(row["fee"], row["currency"]), "f"),
            }
            out.writerow([cells[key] for key in columns])


def _next_steps(cases: list[Case], workdir: Path, day: date, database_url: str, *, tmp: bool) -> None:
    """The command that reconciles the day, ready to paste."""
    if tmp and "DATABASE_URL" not in os.environ:
        click.echo("\nA throw-away run: its database is removed now. Run `payrecon demo` without --tmp to keep")
        click.echo("it in ./var/demo and reconcile its day afterwards.")
        return
    given = "DATABASE_URL" in os.environ  # the user's: it may carry a password, so it is not printed
    prefix = [] if given else [f"DATABASE_URL={database_url}"]
    payrecon = _payrecon()
    out = _shown(workdir / "reports")
    reconcile = [*prefix, payrecon, "reconcile", "--date", day.isoformat(), "--out", out]
    lost = next(c for c in cases if c.story == LOST and c.provider == "orange_money")
    show = [*prefix, payrecon, "payments", "show", lost.reference]
    click.secho("\nNext: reconcile the day at the four providers (the demo did not)", bold=True)
    click.echo(f"  {shlex.join(reconcile)}")
    _sla_note(cases)
    click.echo("It classifies each payment of the day against the statements, heals the lost webhooks, and writes")
    click.echo(f"each run's reports (csv, xlsx, json, html + manifest) into {out}/<provider>/. Then look at one:")
    click.echo(f"  {shlex.join(show)}")
    click.echo("the day at a glance across the four providers, with charts (HTML and XLSX):")
    click.echo(f"  {shlex.join([*prefix, payrecon, 'report', 'day', '--date', day.isoformat(), '--out', out])}")
    click.echo("and the exceptions finance works, each a case that ages until resolved (docs/exceptions.md):")
    click.echo(f"  {shlex.join([*prefix, payrecon, 'exceptions', 'list'])}")
    if given:
        click.echo("(with this demo's DATABASE_URL set)")


def _sla_note(cases: list[Case]) -> None:
    """In the first hour of a day, the demo's payment stuck past its SLA is not past it yet: say from when."""
    stuck = next((c for c in cases if c.story == SLA and c.created_at is not None), None)
    if stuck is None or stuck.created_at is None:
        return
    past = stuck.created_at + timedelta(seconds=PROFILES[stuck.provider].settle_sla)
    if past > datetime.now(UTC):
        local = past.astimezone(_zone())
        click.echo(
            f"(The day began less than {label(PROVIDERS_LABELS, stuck.provider)}'s settlement SLA ago: its pending "
            "payment is past the SLA "
            f"from {local:%H:%M} local; reconcile after that to see missing_after_sla.)"
        )


def _payrecon() -> str:
    """How to run this ``payrecon``: by name when it is the one on the PATH, else by its path."""
    script = Path(sys.executable).parent / "payrecon"
    found = shutil.which("payrecon")
    if not script.exists() or (found is not None and Path(found).resolve() == script.resolve()):
        return "payrecon"
    return _shown(script)


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url.removeprefix("sqla+")).render_as_string(hide_password=True) if "://" in url else url


def _start_worker(env: dict[str, str], workdir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv: this interpreter running celery
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.app",
                "worker",
                "-B",
                "-s",
                str(workdir / "celerybeat-schedule"),
                "-Q",
                "webhooks,verify,maintenance",
                "-P",
                "threads",
                "-c",
                "8",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "info",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while b"ready." not in log_path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise click.ClickException("the worker did not start:\n" + log_path.read_text(errors="replace")[-3000:])
        time.sleep(0.1)
    click.echo(f"  worker    pid {proc.pid}, log {log_path}")
    return proc


def _zone() -> ZoneInfo:
    return ZoneInfo(os.environ.get("PAYRECON_TIMEZONE") or "Africa/Abidjan")


def _created_at(case: Case) -> datetime | None:
    """When the registration says a payment was created (None: now). The payment stuck past its SLA was
    registered ``created_hours_ago``, but never before the demo's business day (today) began: in the first
    hours of a day it is younger, and past the SLA only once the day is older than it (``_sla_note``)."""
    if not case.created_hours_ago:
        return None
    now = datetime.now(UTC)
    day_start = datetime.combine(now.astimezone(_zone()).date(), clock_time(0), tzinfo=_zone()).astimezone(UTC)
    return max(now - timedelta(hours=case.created_hours_ago), day_start + timedelta(minutes=1))


def _registration(case: Case, index: int) -> dict[str, Any]:
    case.created_at = _created_at(case)
    return {
        "schema": "payrecon.payment/1",
        "provider": case.provider,
        "reference": case.reference,
        "amount": case.amount,
        "currency": "XOF",
        "account": f"{'technician' if case.provider == 'cinetpay' else 'reader'}-{index % 10:02d}",
        "plan": PLANS[case.provider][0],
        "periods": case.periods,
        "provider_data": case.provider_data,
        **({"created_at": case.created_at.isoformat()} if case.created_at is not None else {}),
    }


def _send(cases: list[Case], sandbox: SandboxClient, broker_url: str) -> None:
    from celery import Celery

    producer = Celery("demo-producer", broker=broker_url)
    producer.conf.update(task_serializer="json", accept_content=["json"])

    def send(task: str, **kwargs: Any) -> None:
        producer.send_task(task, kwargs=kwargs, queue=QUEUE)

    late, registered = [], 0
    for index, case in enumerate(cases):
        id_field = "transaction_id" if case.provider == "cinetpay" else "reference"
        state = sandbox.create(
            case.provider, **{id_field: case.reference}, amount=case.amount, currency="XOF", fate=case.fate,
            **case.options,
        )  # fmt: skip
        case.provider_data = dict(state.get("provider_data") or {})
        if case.expect is None:  # the provider has it; the merchant app never told us
            continue
        registered += 1
        if case.register_late:
            late.append((index, case))
        else:
            send(REGISTER_TASK, payment=_registration(case, index))
    deliveries = 0
    for case in cases:
        if not case.deliveries:
            continue
        envelope = sandbox.notification(case.provider, case.reference, forged=case.forged)
        for _ in range(case.deliveries):
            send(INGEST_TASK, envelope=envelope)
            deliveries += 1
    for index, case in late:
        send(REGISTER_TASK, payment=_registration(case, index))
    producer.close()
    click.echo(f"\nsent {registered} registrations and {deliveries} webhook deliveries; waiting for the worker...")


def _wait(sessions: Any, cases: list[Case], timeout: float) -> bool:
    expected = {c.reference: c.expect for c in cases if c.expect is not None}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sessions() as session:
            rows = dict(session.execute(select(Payment.reference, Payment.status)).all())
        if all(rows.get(ref) is status for ref, status in expected.items()):
            return True
        time.sleep(0.3)
    return False


def _print_summary(sessions: Any, cases: list[Case]) -> None:
    now = datetime.now(UTC)
    with sessions() as session:
        summary = views.summary(session, now)
        deliveries = Counter(
            dict(session.execute(select(InboxDelivery.status, func.count()).group_by(InboxDelivery.status)).all())
        )
        repeats = session.scalar(select(func.coalesce(func.sum(InboxDelivery.repeat_count), 0)))
        flag_counts = Counter(
            dict(session.execute(select(PaymentFlag.kind, func.count()).group_by(PaymentFlag.kind)).all())
        )
        balances = views.balances(session)
        statuses = dict(session.execute(select(Payment.reference, Payment.status)).all())
    stories: dict[str, Counter[str]] = {}
    for c in cases:
        if c.story not in NIGHTLY:
            stories.setdefault(c.story, Counter())[statuses[c.reference].value if c.reference in statuses else "?"] += 1
    click.secho("\nWhat happened (each story at every provider)", bold=True)
    for story, results in sorted(stories.items()):
        label = ", ".join(f"{n} {status}" for status, n in sorted(results.items()))
        click.echo(f"  {story:<50} -> {label}")
    click.secho("\nFor the nightly reconciliation", bold=True)
    for c in cases:
        if c.story in NIGHTLY:
            status = statuses.get(c.reference)
            click.echo(f"  {c.provider:<13} {c.story:<40} -> {status.value if status else 'not in our database'}")
    click.secho("\nPayments by status", bold=True)
    for status, n in summary["payments"].items():
        if n:
            click.echo(f"  {status:<11} {n:>4}")
    click.secho("\nWebhook deliveries", bold=True)
    for status, n in sorted(deliveries.items()):
        note = "  (waiting for a retry: registration or budget)" if status is InboxStatus.RECEIVED else ""
        click.echo(f"  {status.value:<11} {n:>4}{note}")
    click.echo(f"  repeats     {repeats:>4}  (duplicates counted, first raw body kept)")
    click.secho("\nFlags for review", bold=True)
    for kind in FlagKind:
        if flag_counts.get(kind):
            click.echo(f"  {kind.value:<20} {flag_counts[kind]:>3}")
    click.secho("\nSubscriptions", bold=True)
    click.echo(f"  grants {summary['grants']}, active subscriptions {summary['subscriptions_active']}")
    click.secho("\nLedger", bold=True)
    for row in balances:
        click.echo(f"  {row['account']:<30} {format_amount(row['balance'], row['currency']):>16}")
    balanced = summary["unbalanced_journals"] == 0
    click.secho(f"  every journal balances: {'yes' if balanced else 'NO'}", fg="green" if balanced else "red")
