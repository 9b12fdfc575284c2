"""``payrecon health``: is this installation able to work? Database, migrations, broker, beat."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import text

from reconciliation import heartbeats, migrate
from reconciliation.db import make_engine, session_factory
from worker.settings import Settings, masked

#: Exit code of each failed check (the first failure in the order of ``run`` decides).
EXIT_CODES = {"database": 3, "migrations": 4, "broker": 5, "beat": 6, "providers": 7}


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else EXIT_CODES[self.name]


def run(settings: Settings, *, beat_max_age: float = 120.0, now: datetime | None = None) -> list[Check]:
    now = now or datetime.now(UTC)
    database = _database(settings)
    checks = [_providers(settings), database]
    if database.ok:
        checks.append(_migrations(settings))
    checks.append(_broker(settings))
    if database.ok:
        checks.append(_beat(settings, beat_max_age, now))
    return checks


def cannot_start(settings: Settings, *, needs_providers: bool) -> list[Check]:
    """Why a worker (``needs_providers``) or beat would start only to fail every task ([]: it can work)."""
    checks = [_providers(settings)] if needs_providers else []
    checks.append(_database(settings))
    if checks[-1].ok:
        checks.append(_migrations(settings))
    return [c for c in checks if not c.ok]


def _providers(settings: Settings) -> Check:
    if settings.providers:
        return Check("providers", True, ", ".join(settings.providers))
    return Check(
        "providers",
        False,
        "none configured: set one provider's credentials (e.g. CINETPAY_API_KEY, CINETPAY_SITE_ID, "
        "CINETPAY_SECRET_KEY; see docs/configuration.md)",
    )


def _database(settings: Settings) -> Check:
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return Check("database", True, "reachable")
    except Exception as exc:
        return _unreachable(exc)
    finally:
        engine.dispose()


def _unreachable(exc: Exception) -> Check:
    first = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return Check("database", False, f"unreachable (DATABASE_URL): {type(exc).__name__}: {first}")


def _migrations(settings: Settings) -> Check:
    try:
        current, head = migrate.current_heads(settings.database_url)
    except Exception as exc:  # gone since the reachability check (a restart): unreachable, not a crash
        return _unreachable(exc)
    if current == head:
        return Check("migrations", True, f"at head {head}")
    return Check("migrations", False, f"at {current or 'nothing'}, code expects {head}: run `payrecon migrate`")


def _broker(settings: Settings) -> Check:
    from kombu.connection import Connection

    if not settings.broker_url:
        return Check("broker", False, "CELERY_BROKER_URL is not set")
    try:
        with Connection(settings.broker_url, connect_timeout=3) as conn:  # type: ignore[no-untyped-call]
            conn.ensure_connection(max_retries=1, timeout=3)
        return Check("broker", True, f"reachable ({settings.broker_url.split('://')[0]})")
    except Exception as exc:
        return Check(
            "broker", False, f"{masked(settings.broker_url)} unreachable (CELERY_BROKER_URL): {type(exc).__name__}"
        )


def _beat(settings: Settings, max_age: float, now: datetime) -> Check:
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        with session_factory(engine)() as session:
            seen = heartbeats.last(session, "beat")
    except Exception as exc:
        return Check("beat", False, f"heartbeat unreadable: {type(exc).__name__}")
    finally:
        engine.dispose()
    if seen is None:
        return Check("beat", False, "beat has never dispatched a job: is `payrecon beat` running?")
    age = (now - seen).total_seconds()
    if age > max_age:
        return Check("beat", False, f"last heartbeat {age:.0f} s ago (more than {max_age:.0f} s): is beat running?")
    return Check("beat", True, f"last heartbeat {age:.0f} s ago at {seen.isoformat()}")
