"""``payrecon demo``: the whole pipeline offline, on embedded defaults.

SQLite for the data, kombu's SQLAlchemy transport on SQLite as the broker, the
provider sandbox in this process, and a real Celery worker process (with beat
embedded for the re-checks). ``DATABASE_URL`` / ``CELERY_BROKER_URL`` replace
the embedded stores when set. It registers a few dozen payments with mixed fates,
delivers their notifications through the broker, waits for the worker to settle
them, and prints what happened.
"""

from __future__ import annotations

import csv
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from sqlalchemy import func, select

from providers.sandbox.client import SandboxClient
from providers.sandbox.server import SandboxServer
from reconciliation import migrate, views
from reconciliation.db import make_engine, session_factory
from reconciliation.models import FlagKind, InboxDelivery, InboxStatus, Payment, PaymentFlag, PaymentStatus
from schemas.currency import format_amount

CREDENTIALS = {"api_key": "demo-api-key", "site_id": "100000", "secret_key": "demo-secret-key"}
PROVIDERS = ("cinetpay", "mtn_momo", "orange_money", "wave")
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
    expect: PaymentStatus = PaymentStatus.SUCCEEDED
    options: dict[str, Any] = field(default_factory=dict)
    deliveries: int = 1
    forged: bool = False
    register_late: bool = False
    provider_data: dict[str, Any] = field(default_factory=dict)
    created_hours_ago: int = 0

    @property
    def amount(self) -> int:
        return PLANS[self.provider][1] * self.periods


RUN = secrets.token_hex(3).upper()  # references differ between runs that share a database


def _reference(provider: str, i: int) -> str:
    if provider == "mtn_momo":  # MoMo's reference is the X-Reference-Id, a UUID v4
        return str(uuid.uuid4())
    return {"cinetpay": "TXN", "orange_money": "ORD", "wave": "CR"}[provider] + f"-D{RUN}{i:05X}"


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
            case = Case(provider, ref, "provider confirms a smaller amount (tampered)", periods=periods,
                        options={"confirm_amount": price * periods // 5})  # fmt: skip
        elif kind == 6:
            case = Case(provider, ref, "callback before its registration", periods=periods, register_late=True)
        elif kind == 7:
            case = Case(provider, ref, "provider answers 500, then 429, then paid", periods=periods,
                        options={"faults": [{"status": 500}, {"status": 429, "retry_after": 0}]})  # fmt: skip
        else:
            case = Case(provider, ref, "paid", periods=periods)
        cases.append(case)
    # For the nightly reconciliation: a payment stuck past its settlement SLA, and a payment whose
    # webhook was lost and which only Orange's statement reports paid.
    cases.append(Case("cinetpay", _reference("cinetpay", count), "pending past its settlement SLA", "waiting",
                      expect=PaymentStatus.PENDING, deliveries=0, created_hours_ago=2))  # fmt: skip
    cases.append(Case("orange_money", _reference("orange_money", count + 1), "lost webhook, paid per statement",
                      "waiting", expect=PaymentStatus.PENDING, deliveries=0))  # fmt: skip
    return cases


def _prepare_sqlite_broker(path: Path) -> None:
    # WAL persists in the file: set it once before the worker polls it (2.4x faster).
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


def run_demo(
    *, count: int = 36, keep: bool = False, sandbox_url: str | None = None, external_worker: bool = False
) -> int:
    """Run the scenario; ``sandbox_url`` / ``external_worker``: use a running stack's instead of our own."""
    workdir = Path("var/demo").resolve() if keep else Path(tempfile.mkdtemp(prefix="payrecon-demo-"))
    if keep and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{workdir / 'payrecon.sqlite'}"
    broker_url = os.environ.get("CELERY_BROKER_URL") or f"sqla+sqlite:///{workdir / 'broker.sqlite'}"
    if external_worker and not (os.environ.get("DATABASE_URL") and os.environ.get("CELERY_BROKER_URL")):
        raise click.UsageError("--external-worker needs DATABASE_URL and CELERY_BROKER_URL of the running stack")
    if broker_url.startswith("sqla+sqlite:///"):
        _prepare_sqlite_broker(Path(broker_url.removeprefix("sqla+sqlite:///")))
    click.secho("payrecon demo", bold=True)
    click.echo(f"  database  {_safe(database_url)}")
    click.echo(f"  broker    {_safe(broker_url)}")
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
    cases = scenario(count)
    try:
        _send(cases, SandboxClient(api_url), broker_url)
        ok = _wait(sessions, cases, timeout=120 if worker else 600)
        _print_summary(sessions, cases)
        if ok and sandbox is not None:  # reconciliation asks the providers: only with our own sandbox
            ok = _reconcile(sandbox, database_url, broker_url, cases, workdir / "reports", keep=keep)
        if not ok:
            click.secho("\nthe worker did not settle every payment in time", fg="red")
            if worker is not None:
                click.echo(log_path.read_text(errors="replace")[-4000:])
            return 1
        if keep or "DATABASE_URL" in os.environ:
            hint = f"DATABASE_URL={_safe(database_url)} payrecon payments show {cases[5].reference}"
            click.echo(f"\nInspect one:  {hint}")
        return 0
    finally:
        if worker is not None:
            _stop(worker)
        if sandbox is not None:
            sandbox.stop()
        engine.dispose()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _start_sandbox() -> SandboxServer:
    return SandboxServer(
        cinetpay_api_key=CREDENTIALS["api_key"],
        cinetpay_site_id=CREDENTIALS["site_id"],
        cinetpay_secret_key=CREDENTIALS["secret_key"],
    ).start()


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


def _orange_statement(cases: list[Case], sessions: Any, path: Path) -> None:
    """What Orange's portal would export for the day: the truth, with one anomaly of each kind."""
    with sessions() as session:
        paid = {
            p.reference: p
            for p in session.scalars(
                select(Payment).where(Payment.provider == "orange_money", Payment.status == PaymentStatus.SUCCEEDED)
            )
        }
    rows = []
    anomalies = iter(["omitted", "amount", "currency", "failed", "duplicate", "fee"])
    for case in cases:
        if case.provider != "orange_money":
            continue
        if case.story.startswith("lost webhook"):
            rows.append((case.reference, case.amount, "XOF", case.amount * 2 // 100, "SUCCESS"))
            continue
        payment = paid.get(case.reference)
        if payment is None or payment.confirmed_amount is None:
            continue
        amount, fee = payment.confirmed_amount, payment.confirmed_amount * 2 // 100  # Orange takes 2 %
        anomaly = next(anomalies, None)
        if anomaly == "omitted":
            continue
        row = (case.reference, amount, "XOF", fee, "SUCCESS")
        if anomaly == "amount":
            row = (case.reference, amount - 500, "XOF", fee, "SUCCESS")
        elif anomaly == "currency":
            row = (case.reference, amount, "XAF", fee, "SUCCESS")
        elif anomaly == "failed":
            row = (case.reference, amount, "XOF", 0, "FAILED")
        elif anomaly == "duplicate":
            rows.append(row)
        elif anomaly == "fee":
            row = (case.reference, amount, "XOF", fee + 100, "SUCCESS")
        rows.append(row)
    rows.append((f"ORD-UNKNOWN-{RUN}", 6500, "XOF", 130, "SUCCESS"))  # paid, never registered with us
    when = datetime.now(UTC).replace(microsecond=0).isoformat()
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["order_id", "txnid", "date", "amount", "currency", "fee", "status"])
        for n, (ref, amount, currency, fee, status) in enumerate(rows):
            out.writerow([ref, f"MP{RUN}.{n:04d}", when, amount, currency, fee, status])


def _reconcile(
    sandbox: SandboxServer, database_url: str, broker_url: str, cases: list[Case], out: Path, *, keep: bool
) -> bool:
    """Import Orange's statement, reconcile today at every provider, write the reports."""
    from reconciliation import reports
    from reconciliation.db import transaction
    from reconciliation.statements import import_file
    from worker import reconcile as recon
    from worker import runtime
    from worker.settings import Settings

    rt = runtime.build(Settings.from_env(_worker_env(sandbox, database_url, broker_url)))
    out.mkdir(parents=True, exist_ok=True)
    statement = out / "orange_money_statement.csv"
    try:
        _orange_statement(cases, rt.sessions, statement)
        with transaction(rt.sessions) as session:
            import_file(session, "orange_money", statement, business_tz=rt.settings.timezone)
        today = datetime.now(rt.settings.timezone).date()
        totals: Counter[str] = Counter()
        click.secho(f"\nNightly reconciliation of {today} (business day, {rt.settings.timezone})", bold=True)
        for provider in PROVIDERS:
            run_id = recon.reconcile(rt, provider, today, trigger="manual")
            with rt.sessions() as session:
                counts = reports.summary(session, run_id)["counts"]["by_class"]
                files = reports.export_all(session, run_id, out / provider)
            totals.update({cls: n for cls, n in counts.items() if n})
            shown = ", ".join(f"{n} {cls}" for cls, n in counts.items() if n)
            click.echo(f"  {provider:<13} run {run_id}: {shown}")
        click.echo(f"  every class seen: {', '.join(sorted(totals))}")
        where = f"in {out}/<provider>/" if keep else "written, and removed with the demo's files (--keep keeps them)"
        click.echo(f"  reports (csv, xlsx, json, html + manifest) {where} ({len(files)} files each)")
        return True
    finally:
        rt.close()


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


def _registration(case: Case, index: int) -> dict[str, Any]:
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
        **(
            {"created_at": (datetime.now(UTC) - timedelta(hours=case.created_hours_ago)).isoformat()}
            if case.created_hours_ago
            else {}
        ),
    }


def _send(cases: list[Case], sandbox: SandboxClient, broker_url: str) -> None:
    from celery import Celery

    producer = Celery("demo-producer", broker=broker_url)
    producer.conf.update(task_serializer="json", accept_content=["json"])

    def send(task: str, **kwargs: Any) -> None:
        producer.send_task(task, kwargs=kwargs, queue="webhooks")

    late = []
    for index, case in enumerate(cases):
        id_field = "transaction_id" if case.provider == "cinetpay" else "reference"
        state = sandbox.create(
            case.provider, **{id_field: case.reference}, amount=case.amount, currency="XOF", fate=case.fate,
            **case.options,
        )  # fmt: skip
        case.provider_data = dict(state.get("provider_data") or {})
        if case.register_late:
            late.append((index, case))
        else:
            send("payrecon.register_payment", payment=_registration(case, index))
    deliveries = 0
    for case in cases:
        if not case.deliveries:
            continue
        envelope = sandbox.notification(case.provider, case.reference, forged=case.forged)
        for _ in range(case.deliveries):
            send("payrecon.ingest_webhook", envelope=envelope)
            deliveries += 1
    for index, case in late:
        send("payrecon.register_payment", payment=_registration(case, index))
    producer.close()
    click.echo(f"\nsent {len(cases)} registrations and {deliveries} webhook deliveries; waiting for the worker...")


def _wait(sessions: Any, cases: list[Case], timeout: float) -> bool:
    expected = {c.reference: c.expect for c in cases}
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
        status = statuses.get(c.reference)
        stories.setdefault(c.story, Counter())[status.value if status else "missing"] += 1
    click.secho("\nWhat happened (each story at every provider)", bold=True)
    for story, results in sorted(stories.items()):
        label = ", ".join(f"{n} {status}" for status, n in sorted(results.items()))
        click.echo(f"  {story:<50} -> {label}")
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
