"""``payrecon health``: is this installation able to work? Database, migrations, broker, beat."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, text

from reconciliation import migrate
from reconciliation.db import make_engine, session_factory
from reconciliation.models import Heartbeat
from worker.settings import Settings

#: Exit code of each failed check (the first failure in this order decides).
EXIT_CODES = {"database": 3, "migrations": 4, "broker": 5, "beat": 6}


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
    checks = [_database(settings)]
    if checks[0].ok:
        checks.append(_migrations(settings))
    checks.append(_broker(settings))
    if checks[0].ok:
        checks.append(_beat(settings, beat_max_age, now))
    return checks


def _database(settings: Settings) -> Check:
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return Check("database", True, "reachable")
    except Exception as exc:
        return Check("database", False, f"unreachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    finally:
        engine.dispose()


def _migrations(settings: Settings) -> Check:
    current, head = migrate.current_heads(settings.database_url)
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
        return Check("broker", False, f"unreachable: {type(exc).__name__}")


def _beat(settings: Settings, max_age: float, now: datetime) -> Check:
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        with session_factory(engine)() as session:
            seen = session.scalar(select(Heartbeat.at).where(Heartbeat.name == "beat"))
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
