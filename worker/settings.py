"""Configuration from the environment (design §1.2), read and checked in one place.

Every problem is reported at start-up with the variable's name; nothing is
silently defaulted except the documented defaults below.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

CINETPAY_DEFAULT_URL = "https://api-checkout.cinetpay.com"

#: Re-check delays for non-final payments, in seconds after the previous check.
DEFAULT_RECHECK_SCHEDULE = (30, 120, 300, 900, 3600, 21600, 86400)


class ConfigError(Exception):
    """One or more settings are missing or malformed; the message names each variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class CinetPaySettings:
    api_url: str
    api_key: str = field(repr=False)
    site_id: str
    secret_key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = field(repr=False)  # may carry a password
    broker_url: str = field(repr=False)
    timezone: ZoneInfo
    cinetpay: CinetPaySettings | None
    worker_concurrency: int = 32
    db_pool_size: int = 10  # per worker process; as many again may overflow
    http_timeout: tuple[float, float] = (3.05, 10.0)
    recheck_interval: float = 15.0  # how often beat looks for due re-checks
    recheck_schedule: tuple[int, ...] = DEFAULT_RECHECK_SCHEDULE
    give_up_after: int = 48 * 3600  # pending this long after registration: expired
    verify_max_retries: int = 8  # transient provider errors on a webhook, then dead letter
    expire_interval: float = 60.0

    @property
    def providers(self) -> tuple[str, ...]:
        return tuple(name for name in ("cinetpay",) if getattr(self, name) is not None)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, require_broker: bool = True) -> Settings:
        env = os.environ if env is None else env
        problems: list[str] = []
        reader = _Reader(env, problems)

        database_url = reader.url("DATABASE_URL")
        broker_url = reader.text("CELERY_BROKER_URL", required=require_broker)
        timezone = reader.zone("PAYRECON_TIMEZONE", "Africa/Abidjan")
        cinetpay = reader.group(
            "CINETPAY",
            ("CINETPAY_API_KEY", "CINETPAY_SITE_ID", "CINETPAY_SECRET_KEY"),
        )
        cinetpay_settings = None
        if cinetpay is not None:
            cinetpay_settings = CinetPaySettings(
                api_url=reader.http_url("CINETPAY_API_URL", CINETPAY_DEFAULT_URL),
                api_key=cinetpay["CINETPAY_API_KEY"],
                site_id=cinetpay["CINETPAY_SITE_ID"],
                secret_key=cinetpay["CINETPAY_SECRET_KEY"],
            )
        settings = cls(
            database_url=database_url or "",
            broker_url=broker_url or "",
            timezone=timezone,
            cinetpay=cinetpay_settings,
            worker_concurrency=reader.integer("PAYRECON_WORKER_CONCURRENCY", 32, minimum=1),
            db_pool_size=reader.integer("PAYRECON_DB_POOL_SIZE", 10, minimum=1),
            http_timeout=reader.timeout("PAYRECON_HTTP_TIMEOUT", (3.05, 10.0)),
            recheck_interval=reader.number("PAYRECON_RECHECK_INTERVAL", 15.0),
            recheck_schedule=reader.schedule("PAYRECON_RECHECK_SCHEDULE", DEFAULT_RECHECK_SCHEDULE),
            give_up_after=reader.integer("PAYRECON_GIVE_UP_AFTER", 48 * 3600, minimum=1),
            verify_max_retries=reader.integer("PAYRECON_VERIFY_MAX_RETRIES", 8, minimum=0),
            expire_interval=reader.number("PAYRECON_EXPIRE_INTERVAL", 60.0),
        )
        if problems:
            raise ConfigError(problems)
        return settings


class _Reader:
    def __init__(self, env: Mapping[str, str], problems: list[str]) -> None:
        self.env = env
        self.problems = problems

    def _raw(self, name: str) -> str | None:
        value = self.env.get(name)
        return value.strip() if value is not None and value.strip() else None

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self._raw(name)
        if value is None and required and default is None:
            self.problems.append(f"{name} is not set")
        return value if value is not None else default

    def url(self, name: str) -> str | None:
        value = self.text(name, required=True)
        if value is None:
            return None
        try:
            make_url(value)
        except ArgumentError:
            self.problems.append(f"{name} is not a valid SQLAlchemy URL (e.g. postgresql+psycopg2://user@host/db)")
            return None
        return value

    def http_url(self, name: str, default: str) -> str:
        value = self.text(name, default) or default
        if not value.startswith(("http://", "https://")):
            self.problems.append(f"{name} must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    def zone(self, name: str, default: str) -> ZoneInfo:
        value = self.text(name, default) or default
        try:
            return ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            self.problems.append(f"{name} is not an IANA time zone (e.g. Africa/Abidjan), got {value!r}")
            return ZoneInfo(default)

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        value = self._raw(name)
        if value is None:
            return default
        try:
            parsed = int(value)
        except ValueError:
            self.problems.append(f"{name} must be an integer, got {value!r}")
            return default
        if parsed < minimum:
            self.problems.append(f"{name} must be >= {minimum}, got {parsed}")
        return parsed

    def number(self, name: str, default: float) -> float:
        value = self._raw(name)
        if value is None:
            return default
        try:
            parsed = float(value)
        except ValueError:
            self.problems.append(f"{name} must be a number of seconds, got {value!r}")
            return default
        if parsed <= 0:
            self.problems.append(f"{name} must be > 0, got {value!r}")
        return parsed

    def timeout(self, name: str, default: tuple[float, float]) -> tuple[float, float]:
        value = self._raw(name)
        if value is None:
            return default
        try:
            connect, read = (float(part) for part in value.split(","))
        except ValueError:
            self.problems.append(f"{name} must be 'CONNECT,READ' in seconds, e.g. '3.05,10', got {value!r}")
            return default
        return connect, read

    def schedule(self, name: str, default: tuple[int, ...]) -> tuple[int, ...]:
        value = self._raw(name)
        if value is None:
            return default
        try:
            delays = tuple(int(part) for part in value.split(","))
        except ValueError:
            delays = ()
        if not delays or any(d <= 0 for d in delays):
            self.problems.append(f"{name} must be comma-separated positive seconds, e.g. '30,120,300', got {value!r}")
            return default
        return delays

    def group(self, label: str, names: tuple[str, ...]) -> dict[str, str] | None:
        """All of ``names`` set (provider enabled) or none (disabled); half is an error."""
        values = {name: self._raw(name) for name in names}
        present = {k: v for k, v in values.items() if v is not None}
        if not present:
            return None
        missing = [k for k, v in values.items() if v is None]
        if missing:
            self.problems.append(f"{label} is half configured: {', '.join(missing)} not set")
            return None
        return present
