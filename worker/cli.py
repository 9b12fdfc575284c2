"""The ``payrecon`` command line (the README's "Command line" table). Exit codes: 0 ok, 1 failure, 2 bad usage."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from schemas.messages import Provider
from worker.settings import ConfigError, Settings

if TYPE_CHECKING:
    from reconciliation.progress import Progress
    from reconciliation.reports.labels import Language


def _fail(message: str, code: int = 1) -> NoReturn:
    """Print the error on stderr and exit ``code``: 1 for a failure while doing the work (the database,
    the broker, a provider, a run that failed, data in the database an export refuses); 2 for bad
    input, a file or stdin refused whole before anything is done (``enqueue``'s messages, a statement
    or subscriptions file, a chart mapping), as click exits 2 on a bad option or argument."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _settings(*, require_broker: bool = False) -> Settings:
    try:
        return Settings.from_env(require_broker=require_broker)
    except ConfigError as exc:
        _fail(str(exc))


def _sessions(settings: Settings) -> Any:
    from reconciliation.db import make_engine, session_factory

    # A large statement import takes one connection more than its sessions side by side.
    return session_factory(make_engine(settings.database_url, pool_size=max(2, settings.recon_sessions + 1)))


def _celery(argv: list[str]) -> NoReturn:
    """Run ``celery -A worker.app <argv>`` in this process and exit with its exit code.

    Not ``app.worker_main()`` / ``app.start()``: they run celery's click command with
    ``standalone_mode=False``, which *returns* the code the worker ends with
    (``ctx.exit(worker.exitcode)``), and ``Celery.start`` drops that return value. A worker that
    stopped on an "Unrecoverable error" (its exit code 1) then made ``payrecon worker`` exit 0, and
    a supervisor that restarts only on failure left it dead (issue #10).
    """
    from celery.bin.celery import celery as celery_command

    code = celery_command.main(args=["-A", "worker.app", *argv], standalone_mode=False)
    sys.exit(code if isinstance(code, int) else 0)


def _ready(settings: Settings, *, needs_providers: bool, wait: bool) -> None:
    """Refuse to start a process that could only fail every task (or, with ``wait``, wait until it can)."""
    import time

    from worker.health import cannot_start

    said = ""
    while failed := cannot_start(settings, needs_providers=needs_providers):
        problem = "; ".join(f"{c.name}: {c.detail}" for c in failed)
        if not wait or any(c.name == "providers" for c in failed):  # settings do not change by waiting
            _fail(f"cannot start: {problem}")
        if problem != said:
            click.echo(f"waiting: {problem}", err=True)
            said = problem
        time.sleep(2)


#: Every ``--provider``: a choice of the contract's providers (``schemas.messages.Provider``).
PROVIDER_CHOICE = click.Choice([provider.value for provider in Provider])

_json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON on stdout instead of text, for programs (nothing else on stdout, no progress on stderr).",
)


def _dump(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _on_terminal(as_json: bool = False) -> bool:
    """Whether to draw progress: a person is watching (stdout and stderr are terminals) and no
    program reads the output (no ``--json``)."""
    return not as_json and sys.stdout.isatty() and sys.stderr.isatty()


class _Bars:
    """A ``reconciliation.progress.Progress`` that draws each stage as a click progress bar on stderr."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.stage: str | None = None
        self.bar: Any = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = click.progressbar(length=max(total, 1), label=f"{self.prefix}{stage}", file=sys.stderr)
            self.bar.__enter__()
        self.bar.length = max(total, 1)
        if done > self.bar.pos:
            self.bar.update(done - self.bar.pos)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar, self.stage = None, None


def _silent(stage: str, done: int, total: int) -> None:
    """No progress (not on a terminal, or --json)."""


@contextmanager
def _progress(show: bool, prefix: str = "") -> Iterator[Progress]:
    """A progress callback for the library's long operations: bars on stderr when ``show``, else silent."""
    if not show:
        yield _silent
        return
    bars = _Bars(prefix)
    try:
        yield bars
    finally:
        bars.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="payrecon")
def main() -> None:
    """payrecon: verify provider webhooks, settle payments, keep the ledger and subscriptions."""


# --------------------------------------------------------------------------- processes


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--concurrency", "-c", type=int, help="Threads (default PAYRECON_WORKER_CONCURRENCY or 32).")
@click.option("--queues", "-Q", default="webhooks,verify,maintenance", show_default=True,
              help="Comma-separated queues to consume.")  # fmt: skip
@click.option("--pool", "-P", envvar="PAYRECON_WORKER_POOL", default="threads", show_default=True,
              type=click.Choice(["threads", "prefork", "solo"]),
              help="threads: many provider calls in flight per process; prefork: one process per slot.")  # fmt: skip
@click.option("--beat", "-B", "embed_beat", is_flag=True, help="Run beat inside the worker (one node only).")
@click.option(
    "--loglevel", "-l", default="info", show_default=True, help="Celery's log level (debug, info, warning, error)."
)
@click.option("--metrics-port", type=int, envvar="PAYRECON_METRICS_PORT", default=9808, show_default=True,
              help="Serve Prometheus metrics on this port (0: off).")  # fmt: skip
@click.option("--wait", is_flag=True, help="Wait for the database to be reachable and migrated instead of exiting 1.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(  # noqa: PLR0917 - click passes the options by name
    concurrency: int | None,
    queues: str,
    pool: str,
    embed_beat: bool,
    loglevel: str,
    metrics_port: int,
    wait: bool,
    celery_args: tuple[str, ...],
) -> None:
    """Run a Celery worker (extra arguments go to celery worker). It refuses to start (exit 1) when
    the database is unreachable or not migrated, or no provider is configured."""
    settings = _settings(require_broker=True)
    _ready(settings, needs_providers=True, wait=wait)
    from worker import metrics_dir, serving

    # Before anything imports prometheus_client: every pool process writes to this clean directory.
    directory = metrics_dir.prepare()
    serving.PORTS["worker"] = metrics_port

    argv = ["worker", "-Q", queues, "-P", pool, "-l", loglevel, "-c", str(concurrency or settings.worker_concurrency)]
    if embed_beat:
        argv.append("-B")
    try:
        _celery([*argv, *celery_args])
    finally:
        metrics_dir.remove(directory)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--loglevel", "-l", default="info", show_default=True, help="Celery's log level (debug, info, warning, error)."
)
@click.option("--metrics-port", type=int, envvar="PAYRECON_BEAT_METRICS_PORT", default=9809, show_default=True,
              help="Serve beat's Prometheus metrics on this port (0: off).")  # fmt: skip
@click.option("--wait", is_flag=True, help="Wait for the database to be reachable and migrated instead of exiting 1.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(loglevel: str, metrics_port: int, wait: bool, celery_args: tuple[str, ...]) -> None:
    """Run Celery beat, the one scheduler (run exactly one). It schedules: the janitor, due payment
    re-checks (every PAYRECON_RECHECK_INTERVAL seconds, 15); subscription expiry (every
    PAYRECON_EXPIRE_INTERVAL seconds, 60); renewal reminders (every 10 minutes); event delivery to
    the merchant apps (every PAYRECON_EVENTS_INTERVAL seconds, 5); the nightly reconciliation of
    every provider's previous business day and its re-runs (at PAYRECON_RECON_AT, 02:00, business
    time zone); retention (daily at 03:30, when PAYRECON_RETENTION_DAYS is set). Refuses to start
    (exit 1) when the database is unreachable or not migrated."""
    settings = _settings(require_broker=True)
    _ready(settings, needs_providers=False, wait=wait)
    from worker import serving

    serving.PORTS["beat"] = metrics_port
    _celery(["beat", "-l", loglevel, *celery_args])


@main.command()
@click.option(
    "--grant-to",
    "role",
    envvar="PAYRECON_DB_APP_ROLE",
    metavar="ROLE",
    help="Then give this PostgreSQL role (the one the worker connects as) only what the application needs: "
    "data access, no DDL, the ledger append-only (default: $PAYRECON_DB_APP_ROLE).",
)
def migrate(role: str | None) -> None:
    """Bring the database schema to the latest revision (run it as the tables' owner)."""
    settings = _settings()
    from reconciliation import migrate as migrations

    migrations.upgrade(settings.database_url)
    click.echo("database is at the latest revision")
    if role:
        try:
            migrations.grant_app_role(settings.database_url, role)
        except migrations.GrantError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"role {role!r} may read and write payrecon's data; the ledger is append-only to it; no DDL")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--broker-url",
    envvar="CELERY_BROKER_URL",
    help="Enqueue notifications on payrecon's broker (default: $CELERY_BROKER_URL; unset: POST only).",
)
@click.option("--latency", default=0.0, show_default=True, type=float, help="Seconds added to every API answer.")
def sandbox(host: str, port: int, broker_url: str | None, latency: float) -> None:
    """Run the local provider sandbox until interrupted: CinetPay, MTN MoMo, Orange Money and Wave,
    each in its real wire format (payments, status checks, signed notifications), with faults and
    latency on demand under /_sandbox/."""
    from providers.sandbox.server import serve

    serve(host, port, broker_url=broker_url or None, latency=latency)


@main.command()
@click.option("--payments", "count", default=36, show_default=True, help="How many payments to simulate.")
@click.option("--tmp", is_flag=True, help="Work in a temporary directory, removed at the end (nothing to reconcile).")
@click.option("--keep", is_flag=True, hidden=True, help="Accepted for compatibility: ./var/demo is kept by default.")
@click.option("--sandbox-url", help="Use this running sandbox instead of starting one (e.g. http://sandbox:8765).")
@click.option("--external-worker", is_flag=True, help="Let the running stack's worker and beat do the work.")
def demo(count: int, tmp: bool, keep: bool, sandbox_url: str | None, external_worker: bool) -> None:
    """Run the whole pipeline offline: sandbox, embedded broker, a real worker, a summary; then
    import each provider's statement of the day and print the command that reconciles it.

    Its state is kept in ./var/demo (a previous demo's files there are replaced). With
    DATABASE_URL / CELERY_BROKER_URL set it uses those; with --sandbox-url and
    --external-worker it sends its traffic through a running stack (docker compose).
    """
    from worker.demo import run_demo

    sys.exit(run_demo(count=count, tmp=tmp, sandbox_url=sandbox_url, external_worker=external_worker))


@main.command()
@click.argument("kind", type=click.Choice(["webhook", "payment"]))
@click.argument("source", type=click.File("r"), default="-")
@click.option("--raw", is_flag=True, help="Send without validating locally (the worker still validates).")
def enqueue(kind: str, source: Any, raw: bool) -> None:
    """Send webhook envelopes or payment registrations (a JSON object, array, or JSON lines) to the worker.

    Every message is checked first and nothing is sent unless all are good (exit 2, each problem as
    "line N: field: message"). Needs only CELERY_BROKER_URL."""
    from schemas.producer import TASKS, BrokerPublisher
    from worker import enqueue as reading
    from worker.settings import broker_url_from_env

    try:
        broker_url = broker_url_from_env()
    except ConfigError as exc:
        _fail(str(exc))
    try:
        messages = reading.read(source.read())
    except reading.BadInput as exc:
        for problem in exc.problems[:20]:
            click.echo(problem, err=True)
        _fail("nothing sent" + (f" ({len(exc.problems) - 20} more problems)" if len(exc.problems) > 20 else ""), 2)
    invalid = {} if raw else reading.problems(kind, messages)
    if invalid:
        lines = [f"{where}: {problem}" for where, found in invalid.items() for problem in found]
        for line in lines[:20]:
            click.echo(line, err=True)
        more = f", {len(lines) - 20} more problems not shown" if len(lines) > 20 else ""
        _fail(f"nothing sent: {len(invalid)} of {len(messages)} {kind} message(s) invalid{more}", 2)
    task = TASKS[kind][0]
    publisher = BrokerPublisher(broker_url)
    sent = 0
    try:
        for message in messages:
            publisher.send("webhook" if kind == "webhook" else "payment", message.document)
            sent += 1
    except Exception as exc:
        done = f"the first {sent} (through {messages[sent - 1].where}) were sent, " if sent else "none was sent, "
        _fail(
            f"{publisher.safe_url} failed on message {sent + 1} of {len(messages)} ({messages[sent].where}): "
            f"{type(exc).__name__}: {exc}; {done}{messages[sent].where} and the rest were not"
        )
    finally:
        publisher.close()
    click.echo(f"sent {sent} {kind} message(s) to {task} via {broker_url.split('://')[0]}://")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--receiver-name", envvar="PAYRECON_RECEIVER_NAME", default="payrecon-receive", show_default=True,
              help="The envelopes' receiver field (say which app or machine took the callback).")  # fmt: skip
@click.option("--max-body-bytes", envvar="PAYRECON_RECEIVER_MAX_BODY_BYTES", default=64 * 1024, show_default=True,
              type=click.IntRange(1, 1_000_000), help="Larger callbacks are refused with 413.")  # fmt: skip
@click.option("--forwarded-allow-ips", envvar="FORWARDED_ALLOW_IPS", default="127.0.0.1", show_default=True,
              help="Reverse proxies trusted for X-Forwarded-For (the envelopes' source_ip); '*': any.")  # fmt: skip
def receive(host: str, port: int, receiver_name: str, max_body_bytes: int, forwarded_allow_ips: str) -> None:
    """Run the webhook receiver: each provider's callback on /webhooks/<provider>[/...] is enqueued
    as a payrecon.webhook/1 envelope and answered 200 once on the broker (503 if the broker cannot
    take it, so the provider sends it again); GET /healthz checks the broker. Needs only
    CELERY_BROKER_URL."""
    import os

    from worker.receiver import serve
    from worker.settings import broker_url_from_env

    try:
        broker_url = broker_url_from_env()
    except ConfigError as exc:
        _fail(str(exc))
    if not receiver_name.strip() or len(receiver_name) > 200:
        _fail("--receiver-name (PAYRECON_RECEIVER_NAME) must be 1 to 200 characters", 2)
    serve(
        broker_url,
        host=host,
        port=port,
        receiver=receiver_name,
        max_body_bytes=max_body_bytes,
        forwarded_allow_ips=forwarded_allow_ips,
        log_format=os.environ.get("PAYRECON_LOG_FORMAT", "json"),
    )


@main.command()
@click.option("--beat-max-age", default=120.0, show_default=True, help="Seconds since beat's last heartbeat.")
@_json_option
def health(beat_max_age: float, as_json: bool) -> None:
    """Check the database, migrations, broker, beat and providers. Exit 3 database, 4 migrations, 5 broker,
    6 beat, 7 no provider configured."""
    settings = _settings()
    from worker import health as health_mod

    checks = health_mod.run(settings, beat_max_age=beat_max_age)
    failed = [c for c in checks if not c.ok]
    code = failed[0].exit_code if failed else 0
    if as_json:
        _dump(
            {
                "ok": not failed,
                "exit_code": code,
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
            }
        )
    else:
        for c in checks:
            click.echo(f"{'ok  ' if c.ok else 'FAIL'} {c.name:<11} {c.detail}")
    sys.exit(code)


# --------------------------------------------------------------------------- reconciliation


@main.command()
@click.option("--provider", "-p", type=PROVIDER_CHOICE,
              help="One provider (default: each with a statement file of the day or an API client).")  # fmt: skip
@click.option("--date", "-d", "day", type=click.DateTime(["%Y-%m-%d"]), required=True, help="Business day.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write each run's report files into OUT/<provider>/ and print their paths.")  # fmt: skip
@_json_option
def reconcile(provider: str | None, day: datetime, out_dir: Path | None, as_json: bool) -> None:
    """Reconcile a business day now: one provider, or every provider that can be (one run each).

    A provider's side of the day is the statement file imported for that day (no API client
    needed), else Wave's listing or the status API (the provider's credentials needed). Prints
    each run's summary (--json: one object with --provider, else a list), or with --out writes
    each run's reports. Exit 1 when a run failed or a provider could not be reconciled.
    """
    settings = _settings()
    from providers.base import ProviderError
    from worker import nightly, runtime

    names = [provider] if provider else list(PROVIDER_CHOICE.choices)
    rt = runtime.build(settings)
    documents: list[dict[str, Any]] = []
    classes: set[str] = set()
    problems = 0
    try:
        for name in names:
            try:
                with _progress(_on_terminal(as_json), f"{name}: ") as progress:
                    run_id = nightly.run_day(rt, name, day.date(), trigger="manual", progress=progress)
            except nightly.NothingToReconcile as exc:
                if provider:
                    _fail(str(exc))
                click.echo(f"skipped {name}: no statement file of {day.date()} and no API client configured", err=True)
                continue
            except (ValueError, ProviderError) as exc:
                if provider:
                    _fail(str(exc))
                click.echo(f"error: {name}: {exc}", err=True)
                problems += 1
                continue
            document = _report_run(rt.sessions, run_id, out_dir / name if out_dir else None, as_json, settings.language)
            documents.append(document)
            classes.update(cls for cls, n in document["counts"]["by_class"].items() if n)
            if document["run"]["status"] != "succeeded":
                click.echo(f"error: {name}: run {run_id} {document['run']['status']}: {document['run']['error']}",
                           err=True)  # fmt: skip
                problems += 1
    finally:
        rt.close()
    if not documents and not problems:
        _fail(f"nothing to reconcile for {day.date()}: no provider has a statement file of that day or an API client")
    if as_json:
        _dump(documents[0] if provider else documents)
    elif out_dir is not None and len(names) > 1:
        click.echo(f"classes seen: {', '.join(sorted(classes)) or 'none'}")
    sys.exit(1 if problems else 0)


def _report_run(
    sessions: Any, run_id: int, out_dir: Path | None, as_json: bool, language: Language = "en"
) -> dict[str, Any]:
    """Write the run's report files into ``out_dir`` (if given) and print them, or print its summary
    (unless ``as_json``); returns the run's summary with its changes and the files written."""
    from reconciliation.reports import run as reports

    with sessions() as session:
        summary = reports.summary(session, run_id)
        document = {**summary, "changes": reports.changes(session, run_id)} if as_json else summary
        if out_dir is not None:
            with _progress(_on_terminal(as_json), f"{summary['run']['provider']}: ") as progress:
                files = reports.export_all(session, run_id, out_dir, progress=progress, language=language)
                document["files"] = [str(p) for p in files]
        if not as_json and out_dir is None:
            click.echo(reports.render_terminal(session, run_id))
    if not as_json and out_dir is not None:
        run, counts = summary["run"], summary["counts"]["by_class"]
        shown = ", ".join(f"{n} {cls}" for cls, n in counts.items() if n) or "no items"
        click.echo(f"{run['provider']:<13} run {run_id}: {shown}")
        for path in document["files"]:
            click.echo(f"  {path}")
    return document


def _show_run(sessions: Any, run_id: int, as_json: bool) -> None:
    from reconciliation.reports import run as reports

    with sessions() as session:
        if as_json:
            _dump({**reports.summary(session, run_id), "changes": reports.changes(session, run_id)})
        else:
            click.echo(reports.render_terminal(session, run_id))


@main.group()
def statements() -> None:
    """Statement files from provider portals."""


@statements.command("import")
@click.option("--provider", "-p", type=PROVIDER_CHOICE, required=True, help="The provider whose portal exported FILE.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def statements_import(provider: str, file: Path) -> None:
    """Import a statement CSV (whole or not at all); see docs/statements/ for each provider's columns.
    Transactions another file gave already (the day exported again) are replaced by this file's lines.
    Exit 2 when the file is refused (each bad row named with its line, or already imported)."""
    settings = _settings()
    from reconciliation.db import transaction
    from reconciliation.statements.files import StatementError, import_file

    try:
        with transaction(_sessions(settings)) as session, _progress(_on_terminal(), f"{file.name}: ") as progress:
            result = import_file(
                session, provider, file, business_tz=settings.timezone, sessions=settings.recon_sessions,
                progress=progress,
            )  # fmt: skip
    except StatementError as exc:
        _fail(str(exc), 2)
    days = ", ".join(d.isoformat() for d in result.days)
    click.echo(f"imported {result.rows} row(s) from {file.name} (import #{result.import_id}); business days: {days}")
    if result.replaced:
        restated = ", ".join(d.isoformat() for d in result.restated)
        click.echo(
            f"replaced {result.replaced} line(s) an earlier file gave of the same transactions, on {restated} "
            "(reconcile those days again to restate them)"
        )


@main.group()
def report() -> None:
    """Reconciliation reports for finance staff."""


@report.command("show")
@click.argument("run_id", type=int)
@_json_option
def report_show(run_id: int, as_json: bool) -> None:
    """A run's summary, what changed since the previous run of the day, and its exceptions."""
    settings = _settings()
    from reconciliation.models import ReconRun

    sessions = _sessions(settings)
    with sessions() as session:
        if session.get(ReconRun, run_id) is None:
            _fail(f"no reconciliation run #{run_id}")
    _show_run(sessions, run_id, as_json)


@report.command("export")
@click.argument("run_id", type=int)
@click.option("--format", "fmt", type=click.Choice(["csv", "xlsx", "json", "html", "all"]), default="all",
              show_default=True, help="One format, or all of them and the manifest.")  # fmt: skip
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory to write the files into (created if missing).")  # fmt: skip
def report_export(run_id: int, fmt: str, out_dir: Path) -> None:
    """Write a run's report files (CSV of items and of payouts, XLSX, JSON, HTML, and a manifest with
    SHA-256 by default; --format csv writes both CSV files)."""
    settings = _settings()
    from reconciliation.models import ReconRun
    from reconciliation.reports import run as reports

    out_dir.mkdir(parents=True, exist_ok=True)
    with _sessions(settings)() as session, _progress(_on_terminal(), f"run {run_id}: ") as progress:
        if session.get(ReconRun, run_id) is None:
            _fail(f"no reconciliation run #{run_id}")
        files = (
            reports.export_all(session, run_id, out_dir, progress=progress, language=settings.language)
            if fmt == "all"
            else reports.export_files(session, run_id, fmt, out_dir, progress=progress, language=settings.language)
        )
    for path in files:
        click.echo(str(path))


@report.command("day")
@click.option("--date", "-d", "day", type=click.DateTime(["%Y-%m-%d"]), required=True, help="Business day.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write day_<date>.html and .xlsx into (created if missing).")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["html", "xlsx", "all"]), default="all", show_default=True,
              help="One format, or both.")  # fmt: skip
@_json_option
def report_day(day: datetime, out_dir: Path | None, fmt: str, as_json: bool) -> None:
    """The day at a glance across every provider: payments, success rate, matched share, exceptions with the
    amount at stake, payouts and fees per provider; the open exception cases of every age; charts. In
    PAYRECON_LANGUAGE (en or fr). --json prints its data; --out writes the HTML page and the XLSX workbook."""
    settings = _settings()
    from reconciliation.reports import glance, glance_render

    if out_dir is None and not as_json:
        _fail("say where to write the files (--out DIR), or print the data (--json)", 2)
    with _sessions(settings)() as session:
        data = glance.day_glance(session, day.date(), settings.timezone)
    if as_json:
        _dump(data)
    if out_dir is not None:
        for path in glance_render.write_files(data, out_dir, fmt, settings.language):
            click.echo(str(path), err=as_json)


# --------------------------------------------------------------------------- events


@main.group()
def events() -> None:
    """Events sent to the merchant apps (payment and subscription changes)."""


@events.command("list")
@click.option("--status", type=click.Choice(["pending", "delivered", "failed"]),
              help="Only events with a delivery in this state.")  # fmt: skip
@click.option("--limit", default=100, show_default=True, help="At most this many, newest first.")
@_json_option
def events_list(status: str | None, limit: int, as_json: bool) -> None:
    """Recent events and their delivery to each app."""
    settings = _settings()
    from worker import events as events_mod
    from worker import runtime

    rt = runtime.build(settings)
    try:
        rows = events_mod.listing(rt, status=status, limit=limit)
    finally:
        rt.close()
    if as_json:
        _dump(rows)
        return
    for r in rows:
        error = f"  {r['last_error']}" if r["last_error"] else ""
        click.echo(f"{r['id']}  {r['type']:<22} {r['app'] or '-':<12} {r['status']:<10} x{r['attempts']}{error}")


@events.command("redeliver")
@click.argument("event_ids", nargs=-1)
@click.option("--failed", is_flag=True, help="Every delivery that was given up.")
def events_redeliver(event_ids: tuple[str, ...], failed: bool) -> None:
    """Send events again now (by id, or --failed)."""
    if not event_ids and not failed:
        _fail("name event ids, or --failed", 2)
    settings = _settings()
    from worker import events as events_mod
    from worker import runtime

    rt = runtime.build(settings)
    try:
        count = events_mod.redeliver(rt, event_ids=list(event_ids), failed=failed, now=datetime.now(UTC))
    finally:
        rt.close()
    click.echo(f"{count} delivery(ies) scheduled now")


# --------------------------------------------------------------------------- reads


@main.group()
def payments() -> None:
    """Look at payments."""


@payments.command("show")
@click.argument("reference")
@click.option("--provider", type=PROVIDER_CHOICE, help="Provider, when the reference exists at several.")
@_json_option
def payments_show(reference: str, provider: str | None, as_json: bool) -> None:
    """A payment with its verification history, deliveries, fee, journals and grant."""
    settings = _settings()
    from reconciliation import views

    with _sessions(settings)() as session:
        found = views.find_payments(session, reference, provider)
        if not found:
            _fail(f"no payment with reference {reference!r}")
        details = [views.payment_detail(session, p) for p in found]
    if as_json:
        _dump(details[0] if len(details) == 1 else details)
        return
    for detail in details:
        _print_payment(detail, settings)


def _local(value: str | None, settings: Settings) -> str:
    if value is None:
        return "-"
    return datetime.fromisoformat(value).astimezone(settings.timezone).strftime("%Y-%m-%d %H:%M:%S %Z")


def _print_payment(d: dict[str, Any], settings: Settings) -> None:
    from schemas.currency import format_amount

    amount = format_amount(d["amount"], d["currency"]) if d["amount"] is not None else "(not registered)"
    click.echo(f"{d['provider']} {d['reference']}: {d['status'].upper()}{'  [orphan]' if d['orphan'] else ''}")
    click.echo(f"  amount     {amount}   account {d['account'] or '-'}   plan {d['plan'] or '-'} x{d['periods']}")
    if d["confirmed_amount"] is not None:
        confirmed = format_amount(d["confirmed_amount"], d["confirmed_currency"])
        click.echo(f"  confirmed  {confirmed}  paid {_local(d['paid_at'], settings)}")
    elif d["amount_confirmed_by_provider"] is False:
        click.echo(
            "  confirmed  - (amount not confirmed by the provider: its status answer carries none; settled at the "
            "registered amount, the statement confirms it at reconciliation)"
        )
    for f in d["flags"]:
        click.echo(f"  FLAG {f['kind']}: {f['detail']}")
    click.echo("  verifications:")
    for v in d["verifications"]:
        answer = v["answered"]["outcome"] or f"error: {v['error']}"
        click.echo(f"    {_local(v['at'], settings)}  {v['trigger']:<12} {answer:<10} {v['decision']}")
    if d["fee"]:
        fee, run = d["fee"], f"run {d['fee']['run']}" if d["fee"]["run"] is not None else "its run unknown"
        click.echo(f"  fee        {format_amount(fee['amount'], fee['currency'])} posted in journal {fee['journal']} "
                   f"({run})")  # fmt: skip
    for j in d["journals"]:
        lines = ", ".join(f"{e['side']} {e['account']} {e['amount']} {e['currency']}" for e in j["entries"])
        click.echo(f"  journal {j['id']} {j['kind']}: {lines}")
    for r in d["reconciliation"]:
        healed = " (healed)" if r["healed"] else ""
        click.echo(f"  reconciliation run {r['run']} of {r['business_date']}: {r['class']}{healed} {r['detail']}")
    if d["grant"]:
        g = d["grant"]
        click.echo(f"  grant {g['days']} days: {_local(g['starts_at'], settings)} -> {_local(g['ends_at'], settings)}")


@main.group()
def subscriptions() -> None:
    """Look at subscriptions."""


@subscriptions.command("show")
@click.argument("account")
@click.option("--product", help="depannage, coko, ... (default: all of the account's products).")
@_json_option
def subscriptions_show(account: str, product: str | None, as_json: bool) -> None:
    """An account's subscriptions with every grant and its payment."""
    settings = _settings()
    from reconciliation import views

    with _sessions(settings)() as session:
        subs = views.subscriptions_of(session, account, product, datetime.now(UTC))
    if not subs:
        _fail(f"no subscription for account {account!r}")
    if as_json:
        _dump(subs[0] if len(subs) == 1 else subs)
        return
    for s in subs:
        state = "ACTIVE" if s["active"] else "inactive"
        click.echo(f"{s['product']} {s['account']}: {state} until {_local(s['ends_at'], settings)} ({s['plan']})")
        for g in s["grants"]:
            click.echo(
                f"  +{g['days']} days  {g['provider']} {g['payment_reference']}  until {_local(g['ends_at'], settings)}"
            )


def _grant_options(command: Any) -> Any:
    for option in reversed([
        click.option("--plan", required=True, help="Plan code (its product is the subscription's)."),
        click.option("--periods", type=click.IntRange(1, 120), default=1, show_default=True,
                     help="How many of the plan's periods."),
        click.option("--reason", required=True, help="Why: kept with the grant (audit)."),
        click.option("--by", "by", required=True, help="Who decided: kept with the grant (audit)."),
    ]):  # fmt: skip
        command = option(command)
    return command


@subscriptions.command("grant")
@click.argument("account")
@_grant_options
def subscriptions_grant(account: str, plan: str, periods: int, reason: str, by: str) -> None:
    """Grant periods without a payment (a manual approval, a free trial), audited."""
    _change_access(account, plan, periods, reason, by, revoke=False)


@subscriptions.command("revoke")
@click.argument("account")
@_grant_options
def subscriptions_revoke(account: str, plan: str, periods: int, reason: str, by: str) -> None:
    """Take periods back (never below now), audited."""
    _change_access(account, plan, periods, reason, by, revoke=True)


def _change_access(account: str, plan: str, periods: int, reason: str, by: str, *, revoke: bool) -> None:
    settings = _settings()
    from reconciliation import subscriptions as subs
    from reconciliation.db import transaction

    now = datetime.now(UTC)
    try:
        with transaction(_sessions(settings)) as session:
            catalogue = subs.get_plan(session, plan)
            if revoke:
                grant = subs.shorten(
                    session, catalogue.product, account, periods * catalogue.period_days, kind="revoke",
                    reason=reason, by=by, now=now, tz=settings.timezone,
                )  # fmt: skip
                if grant is None:
                    _fail(f"{account!r} has no {catalogue.product} subscription")
            else:
                grant = subs.grant_manual(
                    session, account, plan, periods, reason=reason, by=by, now=now, tz=settings.timezone
                )
            ends = grant.starts_at if revoke else grant.ends_at
    except subs.UnknownPlan as exc:
        _fail(str(exc))
    click.echo(
        f"{account}: {'-' if revoke else '+'}{abs(grant.days)} days, access until {_local(ends.isoformat(), settings)}"
    )


@subscriptions.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--by", "by", required=True, help="Who imports (kept with each grant).")
def subscriptions_import(file: Path, by: str) -> None:
    """Load a live platform's subscriptions (account, plan, ends_at[, payment_reference]); all or
    nothing. Exit 2 when the file is refused (each bad row named with its line)."""
    settings = _settings()
    from reconciliation.db import transaction
    from reconciliation.subscription_import import SubscriptionImportError, import_subscriptions

    try:
        with transaction(_sessions(settings)) as session:
            count = import_subscriptions(session, file, tz=settings.timezone, now=datetime.now(UTC), by=by)
    except SubscriptionImportError as exc:
        _fail(str(exc), 2)
    click.echo(f"imported {count} subscription(s) from {file.name}")


@payments.command("refund")
@click.argument("reference")
@click.option("--provider", type=PROVIDER_CHOICE, help="Provider, when the reference exists at several.")
@click.option("--reason", required=True, help="Why: kept with the refund (audit).")
@click.option("--by", "by", required=True, help="Who recorded it: kept with the refund (audit).")
def payments_refund(reference: str, provider: str | None, reason: str, by: str) -> None:
    """Record a refund the provider made: journals reversed, access shortened, the app told."""
    settings = _settings()
    from reconciliation import payments as payments_mod
    from reconciliation import views
    from reconciliation.db import transaction
    from worker import runtime

    rt = runtime.build(settings)
    try:
        with transaction(rt.sessions) as session:
            found = views.find_payments(session, reference, provider)
            if len(found) != 1:
                _fail(f"{len(found)} payments with reference {reference!r}: name --provider")
            locked = payments_mod.find(session, found[0].provider, reference, lock=True)
            assert locked is not None  # noqa: S101
            decision = payments_mod.refund(session, locked, rt.context(locked.provider), reason=reason, by=by)
    except ValueError as exc:
        _fail(str(exc))
    finally:
        rt.close()
    click.echo(f"{reference}: {decision}")


@main.group()
def ledger() -> None:
    """The double-entry ledger."""


@ledger.command("balances")
@click.option("--as-of", "as_of", type=click.DateTime(["%Y-%m-%d"]),
              help="Balances at the end of this business day (PAYRECON_TIMEZONE): the journals posted up to "
                   "its midnight. Default: every journal so far.")  # fmt: skip
@_json_option
def ledger_balances(as_of: datetime | None, as_json: bool) -> None:
    """Balance of every account (debits - credits, so a credit balance is negative), per currency, in
    minor units and formatted; each currency's balances sum to zero. Exit 1 if they do not (run
    payrecon ledger check)."""
    settings = _settings()
    from reconciliation import accounting, views
    from schemas.currency import MINOR_UNIT_EXPONENT, format_amount

    before = accounting.day_end(as_of.date(), settings.timezone) if as_of else None
    with _sessions(settings)() as session:
        rows = views.balances(session, before=before)
    sums: dict[str, int] = {}
    for row in rows:
        sums[row["currency"]] = sums.get(row["currency"], 0) + row["balance"]
    off = {currency: total for currency, total in sums.items() if total}
    if as_json:
        _dump(rows)
    else:
        if as_of is not None and before is not None:
            local = before.astimezone(settings.timezone)
            click.echo(
                f"balances at the end of {as_of.date()} ({settings.timezone.key}): journals posted before "
                f"{local:%Y-%m-%d %H:%M} local, {before:%Y-%m-%d %H:%M} UTC"
            )
        for row in rows:
            currency = row["currency"]
            shown = format_amount(row["balance"], currency) if currency in MINOR_UNIT_EXPONENT else str(row["balance"])
            click.echo(f"{row['account']:<32} {currency}  {row['balance']:>16}  {shown:>22}")
    if off:
        _fail(f"balances do not sum to zero: {off} (debit - credit); run payrecon ledger check")


@ledger.command("export")
@click.option("--from", "first", type=click.DateTime(["%Y-%m-%d"]), required=True,
              help="First business day (PAYRECON_TIMEZONE) whose journals are exported.")  # fmt: skip
@click.option("--to", "last", type=click.DateTime(["%Y-%m-%d"]), required=True,
              help="Last business day, included.")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["csv", "xlsx"]), required=True, help="The file's format.")
@click.option("--out", "out", type=click.Path(dir_okay=False, writable=True, path_type=Path), required=True,
              help="The file to write (replaced whole at the end; nothing is written on failure).")  # fmt: skip
@click.option("--chart", type=click.Path(dir_okay=False, path_type=Path), envvar="PAYRECON_LEDGER_CHART",
              show_envvar=True, help="The account-to-chart mapping (CSV; docs/ledger-chart.example.csv).")  # fmt: skip
@click.option("--unmapped", type=click.Choice(["fail", "keep"]), default="fail", show_default=True,
              help="An account the chart does not map: refuse the export (listing them all), or keep its "
                   "payrecon code as the account code (for a review, not an import).")  # fmt: skip
def ledger_export(  # noqa: PLR0917 - click passes the options by name
    first: datetime, last: datetime, fmt: str, out: Path, chart: Path | None, unmapped: str
) -> None:
    """Write the general journal of the journals posted from --from to --to (business days): one row
    per entry with its date, journal, account in the merchant's chart, debit and credit (major units,
    exact, and minor units), currency and reference, each journal balanced. Exit 2 when the mapping
    file is invalid; exit 1 when an account is unmapped or a journal does not balance. Nothing is
    written then."""
    if last.date() < first.date():
        _fail(f"--to {last.date()} is before --from {first.date()}", 2)
    settings = _settings()
    from reconciliation import accounting

    try:
        mapping = accounting.load_chart(chart) if chart is not None else accounting.EMPTY_CHART
    except accounting.ChartError as exc:
        _fail(f"{exc}\n(set by --chart or PAYRECON_LEDGER_CHART)", 2)
    period = accounting.Period(first.date(), last.date(), settings.timezone)
    try:
        with _sessions(settings)() as session, _progress(_on_terminal(), f"{out.name}: ") as progress:
            totals, kept = accounting.export(
                session, out, fmt, period, mapping, keep_unmapped=unmapped == "keep", progress=progress
            )
    except accounting.UnmappedAccounts as exc:
        hint = "add them to the chart mapping" if chart else "set PAYRECON_LEDGER_CHART (or --chart) to a mapping file"
        _fail(f"{exc}; {hint}, or pass --unmapped keep")
    except accounting.ExportError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write {out}: {exc}")
    if kept:
        click.echo(f"warning: kept {len(kept)} unmapped account(s) under their payrecon code: "
                   + ", ".join(f"{code} ({currency})" for code, currency in kept), err=True)  # fmt: skip
    click.echo(
        f"wrote {totals.entries} entries of {totals.journals} journal(s) posted {first.date()} to {last.date()} "
        f"({settings.timezone.key}) to {out}"
    )
    for currency in sorted(totals.debit):
        click.echo(
            f"  {currency}: debit {accounting.major(totals.debit[currency], currency)} = "
            f"credit {accounting.major(totals.credit[currency], currency)}"
        )


@ledger.command("check")
@_json_option
def ledger_check(as_json: bool) -> None:
    """Exit 1 if any journal does not balance, a ledger row refers to nothing, or a fee journal's postings do not
    add up to it."""
    settings = _settings()
    from reconciliation import ledger as ledger_mod

    with _sessions(settings)() as session:
        bad = ledger_mod.unbalanced_journals(session)
        dangling = ledger_mod.dangling_references(session)
        uncarried = ledger_mod.fees_not_carried(session)
    if as_json:
        _dump(
            {
                "balanced": not bad,
                "unbalanced": [{"journal": j, "currency": c, "difference": d} for j, c, d in bad],
                "dangling": [{"what": what, "row": row, "names": named} for what, row, named in dangling],
                "fees_not_carried": [
                    {"journal": j, "currency": c, "debits": debits, "postings": posted}
                    for j, c, debits, posted in uncarried
                ],
            }
        )
    else:
        for journal, currency, diff in bad:
            click.echo(f"journal {journal} does not balance in {currency or '-'}: debit - credit = {diff}")
        for what, row, named in dangling:
            click.echo(f"{what} {named} does not exist ({what.split(chr(39))[0]} {row})")
        for journal, currency, debits, posted in uncarried:
            click.echo(
                f"fee journal {journal} debits {debits} {currency or '-'}, its fee postings give {posted}"
                f" (table fee_postings)"
            )
        if not bad and not dangling and not uncarried:
            click.echo("every journal balances and every ledger reference holds")
    sys.exit(1 if bad or dangling or uncarried else 0)


# --------------------------------------------------------------------------- exception cases

#: Age buckets of ``exceptions list --age`` (days since the business day; reconciliation.nightly.cases.AGE_BUCKETS).
AGE_CHOICE = click.Choice(["0-1", "2-7", "8-30", "31+"])
CASE_STATUS_CHOICE = click.Choice(["open", "investigating", "resolved", "written_off", "all"])
_by_option = click.option("--by", "by", required=True, help="Who does it: kept in the case's history (audit).")


@main.group()
def exceptions() -> None:
    """Exception cases: what reconciliation found, as work that ages until a run or a person resolves it
    (docs/exceptions.md)."""


def _today(settings: Settings) -> Any:
    return datetime.now(settings.timezone).date()


@exceptions.command("list")
@click.option(
    "--status",
    "statuses",
    type=CASE_STATUS_CHOICE,
    multiple=True,
    help="Only cases in this status (repeatable; default: open and investigating; all: every one).",
)
@click.option("--provider", "-p", type=PROVIDER_CHOICE, help="Only this provider's cases.")
@click.option("--age", type=AGE_CHOICE, help="Only cases this many days old (since their business day).")
@click.option("--assignee", help="Only the cases assigned to this person.")
@click.option("--limit", type=click.IntRange(1), help="At most this many.")
@_json_option
def exceptions_list(  # noqa: PLR0917 - click passes the options by name
    statuses: tuple[str, ...], provider: str | None, age: str | None, assignee: str | None, limit: int | None,
    as_json: bool,
) -> None:  # fmt: skip
    """The cases, oldest business day first, then the largest amount: id, age, priority, class, amount,
    status, assignee, provider, day and reference."""
    settings = _settings()
    from reconciliation.models import CaseStatus
    from reconciliation.nightly import cases
    from reconciliation.reports import labels
    from reconciliation.reports.common import display_amount, printable

    chosen = (
        tuple(CaseStatus)
        if "all" in statuses
        else tuple(CaseStatus(s) for s in statuses)
        if statuses
        else cases.OPEN_STATUSES
    )
    where = cases.Filter(statuses=chosen, provider=provider, age=age, assignee=assignee, limit=limit)
    with _sessions(settings)() as session:
        rows = cases.listing(session, _today(settings), where)
    if as_json:
        _dump(rows)
        return
    lang = settings.language
    if not rows:
        click.echo("no exception case" if lang == "en" else "aucun dossier d'écart")
        return
    for r in rows:
        overdue = " OVERDUE" if r["overdue"] and lang == "en" else " EN RETARD" if r["overdue"] else ""
        click.echo(
            f"#{r['id']:<6} {r['age_days']:>3} d  {labels.label(labels.PRIORITIES, r['priority'], lang):<8} "
            f"{labels.label(labels.CLASSES, r['class'], lang):<48} {display_amount(r['amount'], r['currency']):>14}  "
            f"{labels.label(labels.CASE_STATUSES, r['status'], lang)}{overdue}  {printable(r['assignee'] or '-')}  "
            f"{labels.label(labels.PROVIDERS, r['provider'], lang)} {r['business_date']} {printable(r['reference'])}"
        )
    one, many = ("case", "cases") if lang == "en" else ("dossier", "dossiers")
    click.echo(labels.plural(len(rows), one, many, lang))


@exceptions.command("show")
@click.argument("case_id", type=int)
@_json_option
def exceptions_show(case_id: int, as_json: bool) -> None:
    """One case: both sides, the amount at stake, what finance does, and its history (who, when, what)."""
    settings = _settings()
    from reconciliation.nightly import cases
    from reconciliation.reports import labels
    from reconciliation.reports.common import display_amount, printable

    try:
        with _sessions(settings)() as session:
            case = cases.show(session, case_id, _today(settings))
    except cases.CaseError as exc:
        _fail(str(exc), 2)
    if as_json:
        _dump(case)
        return
    lang = settings.language
    ours, theirs = case["ours"], case["theirs"]
    lines = [
        f"case #{case['id']}: {labels.label(labels.CLASSES, case['class'], lang)} ({printable(case['class'])})",
        f"  provider      {labels.label(labels.PROVIDERS, case['provider'], lang)}, business day "
        f"{case['business_date']}, reference {printable(case['reference'])}",
        f"  status        {labels.label(labels.CASE_STATUSES, case['status'], lang)}"
        + (f" ({labels.label(labels.RESOLUTIONS, case['resolution'], lang)})" if case["resolution"] else "")
        + (f", assigned to {printable(case['assignee'])}" if case["assignee"] else ""),
        f"  priority      {labels.label(labels.PRIORITIES, case['priority'], lang)}, resolve by {case['sla_due']}"
        + (" (overdue)" if case["overdue"] else ""),
        f"  age           {case['age_days']} days ({case['age_bucket']}), found by {case['runs_seen']} run(s) "
        f"since run {case['opened_run_id']}",
        f"  at stake      {display_amount(case['amount'], case['currency'])}",
        f"  ours          {ours['status'] or '-'}, {display_amount(ours['amount'], ours['currency'])}",
        f"  provider's    {theirs['status'] or '-'}, {display_amount(theirs['amount'], theirs['currency'])}",
        f"  what to do    {labels.label(labels.ACTIONS, case['class'], lang)}",
    ]
    if case["detail"]:
        lines.append(f"  detail        {printable(case['detail'])}")
    if case["journal_id"]:
        lines.append(f"  journal       {case['journal_id']}")
    lines.append("  history:")
    lines += [
        f"    {e['at'][:19].replace('T', ' ')}  {printable(e['actor']):<16} {e['action']:<12} {printable(e['detail'])}"
        for e in case["history"]
    ]
    click.echo("\n".join(lines))


def _change_case(change: Any, case_id: int, **kwargs: Any) -> None:
    settings = _settings()
    from sqlalchemy.exc import IntegrityError

    from reconciliation.db import transaction
    from reconciliation.nightly import cases

    try:
        with transaction(_sessions(settings)) as session:
            case = change(session, case_id, **kwargs)
            said = f"case #{case.id}: {case.status.value}" + (f" ({case.resolution.value})" if case.resolution else "")
            if case.journal_id:
                said += f", journal {case.journal_id}"
    except cases.CaseError as exc:
        _fail(str(exc), 2)
    except IntegrityError as exc:  # the ledger's key: one write-off journal per payment
        _fail(f"the ledger refuses it: {str(getattr(exc, 'orig', exc)).strip().splitlines()[0]}", 2)
    click.echo(said)


@exceptions.command("assign")
@click.argument("case_id", type=int)
@click.option("--to", "assignee", required=True, help="Who looks into it.")
@_by_option
def exceptions_assign(case_id: int, assignee: str, by: str) -> None:
    """Give a case to somebody: it is then investigating."""
    from reconciliation.nightly import cases

    _change_case(cases.assign, case_id, assignee=assignee, by=by)


@exceptions.command("note")
@click.argument("case_id", type=int)
@click.argument("text")
@_by_option
def exceptions_note(case_id: int, text: str, by: str) -> None:
    """Add a note to a case's history."""
    from reconciliation.nightly import cases

    _change_case(cases.note, case_id, text=text, by=by)


@exceptions.command("resolve")
@click.argument("case_id", type=int)
@click.option(
    "--how",
    type=click.Choice(["matched_later", "refunded", "written_off", "dismissed"]),
    required=True,
    help="matched_later: the money is found; refunded: the customer was refunded; written_off: post the "
    "loss (or gain) to writeoffs:<provider> against the provider's clearing; dismissed: not a problem.",
)
@click.option("--note", required=True, help="Why: kept with the case (audit).")
@click.option(
    "--amount",
    type=click.IntRange(1),
    help="written_off: minor units to write off (default: the amount at stake in our ledger).",
)
@_by_option
def exceptions_resolve(case_id: int, how: str, note: str, amount: int | None, by: str) -> None:
    """Close a case, saying how and why. A write-off posts its journal to the ledger, once."""
    from reconciliation.models import Resolution
    from reconciliation.nightly import cases

    _change_case(cases.resolve, case_id, how=Resolution(how), note=note, by=by, amount=amount)


@exceptions.command("reopen")
@click.argument("case_id", type=int)
@click.option("--note", required=True, help="Why: kept with the case (audit).")
@_by_option
def exceptions_reopen(case_id: int, note: str, by: str) -> None:
    """Open a resolved case again (a written-off one stays closed: post a correcting journal instead)."""
    from reconciliation.nightly import cases

    _change_case(cases.reopen, case_id, note=note, by=by)


@main.command()
@click.option(
    "--older-than",
    "days",
    type=click.IntRange(min=1),
    required=True,
    help="Age in days: finished inbox rows, dead letters and providers' raw answers older than this go.",
)
@click.option(
    "--archive",
    type=click.Path(dir_okay=False, writable=True),
    help="Append every deleted row to this file first, one JSON object per line.",
)
@_json_option
def purge(days: int, archive: str | None, as_json: bool) -> None:
    """Delete what finished long ago (never unfinished work). Beat runs it daily when
    PAYRECON_RETENTION_DAYS is set."""
    settings = _settings()
    from reconciliation.retention import purge as run

    before = datetime.now(UTC) - timedelta(days=days)
    if archive is None:
        purged = run(_sessions(settings), before)
    else:
        with open(archive, "a", encoding="utf-8") as out:
            purged = run(_sessions(settings), before, archive=out)
    if as_json:
        _dump({"before": before.isoformat(), **purged.as_dict()})
        return
    click.echo(
        f"purged before {before:%Y-%m-%d %H:%M} UTC: {purged.inbox} inbox rows, {purged.dead_letters} dead letters, "
        f"{purged.responses} raw provider answers cleared" + (f" (archived to {archive})" if archive else "")
    )


@main.group("dead-letters")
def dead_letters() -> None:
    """Input the worker could not process."""


@dead_letters.command("list")
@click.option("--all", "include_replayed", is_flag=True, help="Include replayed ones.")
@_json_option
def dead_letters_list(include_replayed: bool, as_json: bool) -> None:
    """Dead letters not replayed yet (--all: every one), oldest first: id, reason, provider,
    reference and what went wrong."""
    settings = _settings()
    from reconciliation import deadletters

    with _sessions(settings)() as session:
        rows = [
            {
                "id": d.id,
                "task": d.task,
                "reason": d.reason,
                "detail": d.detail,
                "provider": d.provider,
                "reference": d.reference,
                "created_at": d.created_at.isoformat(),
                "replayed_at": d.replayed_at.isoformat() if d.replayed_at else None,
            }
            for d in deadletters.pending(session, include_replayed=include_replayed, limit=10_000)
        ]
    if as_json:
        _dump(rows)
        return
    for r in rows:
        click.echo(f"#{r['id']} {r['reason']:<24} {r['provider'] or '-':<12} {r['reference'] or '-':<24} {r['detail']}")


@dead_letters.command("replay")
@click.argument("ids", nargs=-1, type=int, required=True)
def dead_letters_replay(ids: tuple[int, ...]) -> None:
    """Send dead letters back to their task (after fixing the cause).

    Every letter named is checked before any is sent; each is marked replayed once its message is on
    the broker (a letter sent but not marked, if the command dies in between, is sent again by the next
    replay: the tasks are idempotent). No database transaction is held open while sending."""
    settings = _settings(require_broker=True)
    from reconciliation import deadletters
    from reconciliation.db import transaction
    from reconciliation.models import DeadLetter
    from schemas.producer import KWARGS, QUEUE
    from worker.app import app

    sessions = _sessions(settings)
    messages: list[tuple[int, str, Any]] = []
    with transaction(sessions) as session:
        for letter_id in dict.fromkeys(ids):
            letter = session.get(DeadLetter, letter_id)
            if letter is None:
                _fail(f"no dead letter #{letter_id}: nothing was replayed")
            if letter.reason == "oversized_envelope":
                _fail(
                    f"dead letter #{letter_id} was too large to keep whole (only its head and SHA-256 are stored): "
                    "have the sender deliver it again, under PAYRECON_MAX_ENVELOPE_BYTES or with the limit raised; "
                    "nothing was replayed"
                )
            try:
                payload = json.loads(letter.payload)
            except json.JSONDecodeError:
                _fail(f"dead letter #{letter_id} holds no JSON payload; fix it by hand; nothing was replayed")
            messages.append((letter_id, letter.task, payload))
    for done, (letter_id, task, payload) in enumerate(messages):
        try:
            app.send_task(task, kwargs={KWARGS[task]: payload}, queue=QUEUE)
        except Exception as exc:  # the broker: what was sent is marked, the rest is not
            _fail(
                f"could not send dead letter #{letter_id} ({type(exc).__name__}: {exc}); {done} of {len(messages)} "
                "replayed before it, the others are still pending"
            )
        with transaction(sessions) as session:
            deadletters.mark_replayed(session, letter_id, datetime.now(UTC))
        click.echo(f"replayed #{letter_id} to {task}")


if __name__ == "__main__":
    main()
