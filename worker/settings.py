"""Configuration from the environment (docs/configuration.md), read and checked in one place.

Every problem is reported at start-up with the variable's name; nothing is
silently defaulted except the documented defaults below.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from reconciliation import retries
from reconciliation.db import normalize_database_url
from reconciliation.reports.labels import LANGUAGES, Language
from schemas.messages import PROVIDER_NAMES

CINETPAY_DEFAULT_URL = "https://api-checkout.cinetpay.com"
MTN_MOMO_DEFAULT_URL = "https://proxy.momoapi.mtn.com"  # production (X-Target-Environment mtn<country>)
MTN_MOMO_SANDBOX_URL = "https://sandbox.momodeveloper.mtn.com"  # MTN's sandbox (X-Target-Environment sandbox)
#: The ``MTN_MOMO_TARGET_ENVIRONMENT`` of MTN's sandbox, whose API lives on its own host.
MTN_MOMO_SANDBOX_ENVIRONMENT = "sandbox"
ORANGE_MONEY_DEFAULT_URL = "https://api.orange.com"
_MOMO_ENVIRONMENT = re.compile(r"sandbox|mtn[a-z]+")
_DIGITS = re.compile(r"[0-9]+")
WAVE_DEFAULT_URL = "https://api.wave.com"
#: Every provider of the contract (``schemas.messages.Provider``), in its order.
PROVIDERS: tuple[str, ...] = PROVIDER_NAMES
#: The variables that enable each provider (all of them or none).
CREDENTIALS: dict[str, tuple[str, ...]] = {
    "cinetpay": ("CINETPAY_API_KEY", "CINETPAY_SITE_ID", "CINETPAY_SECRET_KEY"),
    "mtn_momo": ("MTN_MOMO_API_USER", "MTN_MOMO_API_KEY", "MTN_MOMO_SUBSCRIPTION_KEY", "MTN_MOMO_TARGET_ENVIRONMENT"),
    "orange_money": (
        "ORANGE_MONEY_CLIENT_ID", "ORANGE_MONEY_CLIENT_SECRET", "ORANGE_MONEY_MERCHANT_KEY", "ORANGE_MONEY_COUNTRY",
    ),
    "wave": ("WAVE_API_KEY",),
}  # fmt: skip


#: Broker URL schemes payrecon runs on (kombu knows more; these are the ones it is tested with).
BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp", "sqla+sqlite")


def masked(url: str) -> str:
    """A URL with its password replaced by ``***``, for messages."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


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
class MtnMomoSettings:
    api_url: str
    api_user: str
    api_key: str = field(repr=False)
    subscription_key: str = field(repr=False)
    target_environment: str = "sandbox"
    callback_host: str | None = None


@dataclass(frozen=True, slots=True)
class OrangeMoneySettings:
    api_url: str
    client_id: str
    client_secret: str = field(repr=False)
    merchant_key: str = field(repr=False)
    country: str = "ci"
    token_url: str | None = None
    notif_url: str | None = None  # where the merchant's notif_url carries the order id (None: default rules)


@dataclass(frozen=True, slots=True)
class WaveSettings:
    api_url: str
    api_key: str = field(repr=False)
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    webhook_shared_secret: str | None = field(default=None, repr=False)
    tolerance: int = 300


#: Standard Webhooks symmetric secrets: ``whsec_`` + base64 of 24 to 64 random bytes.
WHSEC_PREFIX = "whsec_"
WHSEC_BYTES = (24, 64)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One of an app's event-signing secrets: the HMAC key and the form it was given in."""

    key: bytes = field(repr=False)
    #: True for ``whsec_<base64>`` (the key is the decoded bytes); False for a plain secret, payrecon's
    #: form before Standard Webhooks (the key is its UTF-8 bytes, and the legacy header is sent too).
    standard: bool = True

    @classmethod
    def parse(cls, text: str) -> SigningKey:
        """``whsec_<base64>`` or a plain secret; ValueError (without the secret) for a bad ``whsec_``."""
        if not text.startswith(WHSEC_PREFIX):
            return cls(key=text.encode(), standard=False)
        encoded = text.removeprefix(WHSEC_PREFIX)
        try:  # unpadded base64 is accepted, as the official libraries accept it
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("is not whsec_ followed by base64") from None
        low, high = WHSEC_BYTES
        if not low <= len(key) <= high:
            raise ValueError(f"decodes to {len(key)} bytes; a whsec_ secret is {low} to {high} random bytes")
        return cls(key=key, standard=True)


@dataclass(frozen=True, slots=True)
class AppSettings:
    """A merchant app that receives payrecon's events (``PAYRECON_APPS``)."""

    name: str
    # https://... (signed POST) or celery://QUEUE/TASK (a Celery task on the app's queue). Not in the
    # repr: a query string may carry the app's token.
    url: str = field(repr=False)
    #: Newest first: every one signs each delivery (Standard Webhooks' rotation), the first the legacy header.
    keys: tuple[SigningKey, ...] = field(default=(), repr=False)
    products: tuple[str, ...] = ()  # empty: every product

    @property
    def via_celery(self) -> bool:
        return self.url.startswith("celery://")


@dataclass(frozen=True, slots=True)
class CelerySettings:
    """What Celery itself is configured with (``celeryconfig.py``): read and checked like every other setting,
    by the same reader, and part of ``Settings`` (one source for each variable)."""

    broker_url: str = field(repr=False)  # "" when not set (a producer-only command needs none)
    timezone: ZoneInfo
    worker_concurrency: int
    recheck_interval: float
    expire_interval: float
    events_interval: float
    recon_at: tuple[int, int]

    @classmethod
    def read(cls, reader: _Reader, *, require_broker: bool = False) -> CelerySettings:
        return cls(
            broker_url=reader.broker("CELERY_BROKER_URL", required=require_broker) or "",
            timezone=reader.zone("PAYRECON_TIMEZONE", "Africa/Abidjan"),
            worker_concurrency=reader.integer("PAYRECON_WORKER_CONCURRENCY", 32, minimum=1),
            recheck_interval=reader.number("PAYRECON_RECHECK_INTERVAL", 15.0),
            expire_interval=reader.number("PAYRECON_EXPIRE_INTERVAL", 60.0),
            events_interval=reader.number("PAYRECON_EVENTS_INTERVAL", 5.0),
            recon_at=reader.clock("PAYRECON_RECON_AT", (2, 0)),
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CelerySettings:
        """``ConfigError`` naming every bad variable, as ``Settings.from_env``."""
        problems: list[str] = []
        found = cls.read(_Reader(os.environ if env is None else env, problems))
        if problems:
            raise ConfigError(problems)
        return found


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = field(repr=False)  # may carry a password
    broker_url: str = field(repr=False)
    timezone: ZoneInfo
    cinetpay: CinetPaySettings | None
    mtn_momo: MtnMomoSettings | None = None
    orange_money: OrangeMoneySettings | None = None
    wave: WaveSettings | None = None
    redis_url: str | None = field(default=None, repr=False)  # the call budget's store
    budgets: dict[str, tuple[float, int]] = field(default_factory=dict)  # provider -> (rate, burst)
    worker_concurrency: int = 32
    batch_size: int = 100  # webhook messages taken and settled together; 1: one at a time
    batch_wait: float = 0.05  # seconds a batch waits to fill after its first message
    batch_prefetch: int = 512  # webhook messages a worker holds for batches beyond one per thread (worker.batching)
    db_pool_size: int = 10  # per worker process; as many again may overflow
    http_timeout: tuple[float, float] = (3.05, 10.0)
    recheck_interval: float = 15.0  # how often beat looks for due re-checks
    recheck_schedule: tuple[int, ...] | None = None  # None: each provider's profile
    give_up_after: int | None = None  # None: each provider's profile
    verify_max_retries: int = 8  # internal errors (a bug) on one delivery, then dead letter
    max_envelope_bytes: int = 256 * 1024  # a larger envelope is dead-lettered with its head and SHA-256
    await_registration: int = 3600  # seconds a delivery waits for the registration that authenticates it
    retention_days: int | None = None  # None: keep finished inbox rows, dead letters and responses forever
    expire_interval: float = 60.0
    events_interval: float = 5.0  # how often beat sends the outbox's due events
    recon_at: tuple[int, int] = (2, 0)  # local time of the nightly reconciliation
    recon_reruns: tuple[int, ...] = (1, 3)  # re-runs at T+1 and T+3 for late entries
    recon_tolerance: int = 0  # amount tolerance in minor units (default exact)
    reports_dir: Path | None = None  # where the reconcile task writes each run's report files
    recon_sessions: int = 2  # PostgreSQL sessions side by side for a large statement import or a run
    language: Language = "en"  # of the words people read: reports, exception cases (reconciliation.reports.labels)
    fees_bps: dict[str, int | None] = field(default_factory=dict)  # expected fee per provider
    apps: tuple[AppSettings, ...] = ()
    event_retries: tuple[float, ...] = retries.EVENT_DELIVERY.delays  # delays of reconciliation.retries.EVENT_DELIVERY
    reminder_days: tuple[int, ...] = (7, 3)  # subscription.expiring this many days before the end

    @property
    def providers(self) -> tuple[str, ...]:
        return tuple(name for name in PROVIDERS if getattr(self, name) is not None)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, require_broker: bool = True) -> Settings:
        env = os.environ if env is None else env
        problems: list[str] = []
        reader = _Reader(env, problems)

        database_url = reader.database("DATABASE_URL")
        celery = CelerySettings.read(reader, require_broker=require_broker)
        provider_settings = {name: read(reader) for name, read in READERS.items()}
        if provider_settings["orange_money"] is None:
            reader.notif_url("ORANGE_MONEY_NOTIF_URL")  # a wrong shape is wrong before Orange is switched on, too
        budgets = {
            provider: budget
            for provider in PROVIDERS
            if (budget := reader.budget(f"PAYRECON_BUDGET_{provider.upper()}")) is not None
        }
        apps = reader.apps()
        redis_url = reader.text("PAYRECON_REDIS_URL")
        if redis_url is not None and not redis_url.startswith(("redis://", "rediss://")):
            problems.append(f"PAYRECON_REDIS_URL must be a redis:// URL, got {redis_url!r}")
        settings = cls(
            **provider_settings,
            database_url=database_url or "",
            broker_url=celery.broker_url,
            timezone=celery.timezone,
            redis_url=redis_url,
            budgets=budgets,
            worker_concurrency=celery.worker_concurrency,
            batch_size=reader.integer("PAYRECON_BATCH_SIZE", 100, minimum=1),
            batch_wait=reader.number("PAYRECON_BATCH_WAIT", 0.05),
            batch_prefetch=reader.integer("PAYRECON_BATCH_PREFETCH", 512, minimum=1),
            db_pool_size=reader.integer("PAYRECON_DB_POOL_SIZE", 10, minimum=1),
            http_timeout=reader.timeout("PAYRECON_HTTP_TIMEOUT", (3.05, 10.0)),
            recheck_interval=celery.recheck_interval,
            recheck_schedule=reader.schedule("PAYRECON_RECHECK_SCHEDULE"),
            give_up_after=reader.optional_integer("PAYRECON_GIVE_UP_AFTER", minimum=1),
            verify_max_retries=reader.integer("PAYRECON_VERIFY_MAX_RETRIES", 8, minimum=1),
            max_envelope_bytes=reader.integer("PAYRECON_MAX_ENVELOPE_BYTES", 256 * 1024, minimum=1024),
            await_registration=reader.integer("PAYRECON_AWAIT_REGISTRATION", 3600, minimum=1),
            retention_days=reader.optional_integer("PAYRECON_RETENTION_DAYS", minimum=1),
            expire_interval=celery.expire_interval,
            events_interval=celery.events_interval,
            apps=apps,
            event_retries=reader.schedule("PAYRECON_EVENTS_RETRY_SCHEDULE") or retries.EVENT_DELIVERY.delays,
            reminder_days=reader.schedule("PAYRECON_REMINDER_DAYS", "days") or (7, 3),
            recon_at=celery.recon_at,
            recon_reruns=reader.schedule("PAYRECON_RECON_RERUNS", "days") or (1, 3),
            recon_tolerance=reader.integer("PAYRECON_RECON_TOLERANCE", 0, minimum=0),
            reports_dir=Path(reports) if (reports := reader.text("PAYRECON_REPORTS_DIR")) else None,
            recon_sessions=reader.integer("PAYRECON_RECON_SESSIONS", 2, minimum=1),
            language=reader.language("PAYRECON_LANGUAGE"),
            fees_bps={
                provider: reader.integer(f"PAYRECON_FEES_{provider.upper()}", 0, minimum=0)
                for provider in PROVIDERS
                if env.get(f"PAYRECON_FEES_{provider.upper()}")
            },
        )
        if settings.recon_sessions + 1 > 2 * settings.db_pool_size:  # a pool lends as many again as its size
            problems.append(
                f"PAYRECON_RECON_SESSIONS={settings.recon_sessions} needs PAYRECON_DB_POOL_SIZE >= "
                f"{(settings.recon_sessions + 2) // 2} (a large import takes one connection more than its sessions)"
            )
        if problems:
            raise ConfigError(problems)
        return settings


def broker_url_from_env(env: Mapping[str, str] | None = None) -> str:
    """``CELERY_BROKER_URL`` alone, checked as :meth:`Settings.from_env` checks it: for the commands that
    only talk to the broker (``payrecon enqueue``, ``payrecon receive``), which need no database."""
    problems: list[str] = []
    url = _Reader(os.environ if env is None else env, problems).broker("CELERY_BROKER_URL", required=True)
    if problems or url is None:
        raise ConfigError(problems)
    return url


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

    def database(self, name: str) -> str | None:
        """A PostgreSQL URL in any of the forms hosts hand out (``postgres://``, ``postgresql://``,
        ``postgresql+psycopg2://``), always on psycopg2, the project's driver; or SQLite (the demo)."""
        value = self.text(name, required=True)
        if value is None:
            return None
        try:
            return normalize_database_url(value)
        except ValueError as exc:
            self.problems.append(f"{name} {exc}")
            return None

    def broker(self, name: str, *, required: bool) -> str | None:
        value = self.text(name, required=required)
        if value is None:
            return None
        scheme = value.partition("://")[0] if "://" in value else ""
        if scheme not in BROKER_SCHEMES:
            shown = masked(value)
            self.problems.append(
                f"{name} must be a broker URL such as redis://host:6379/0 or amqp://user:password@host:5672//, "
                f"got {shown!r}"
            )
            return None
        return value

    def http_url(self, name: str, default: str) -> str:
        value = self.text(name, default) or default
        if not value.startswith(("http://", "https://")):
            self.problems.append(f"{name} must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    def notif_url(self, name: str) -> str | None:
        """An Orange notif_url shape (``/orange/notif/{order_id}``, ``/notif?order={order_id}``)."""
        value = self._raw(name)
        if value is None:
            return None
        from providers.orange_money import NotifUrl

        try:
            NotifUrl.parse(value)
        except ValueError as exc:
            self.problems.append(f"{name} {exc}, got {value!r}")
            return None
        return value

    def zone(self, name: str, default: str) -> ZoneInfo:
        value = self.text(name, default) or default
        try:
            return ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            self.problems.append(f"{name} is not an IANA time zone (e.g. Africa/Abidjan), got {value!r}")
            return ZoneInfo(default)

    def language(self, name: str) -> Language:
        value = (self.text(name, "en") or "en").strip().lower()
        for known in LANGUAGES:
            if value == known:
                return known
        self.problems.append(f"{name} must be one of {', '.join(LANGUAGES)}, got {value!r}")
        return "en"

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
        if not (0 < connect < math.inf and 0 < read < math.inf):  # 0 would be a timeout before any answer
            self.problems.append(f"{name} must be two numbers of seconds above 0, e.g. '3.05,10', got {value!r}")
            return default
        return connect, read

    def apps(self) -> tuple[AppSettings, ...]:
        """``PAYRECON_APPS=depannage,coko`` and per app ``PAYRECON_APP_<NAME>_URL``, ``_SECRET``, ``_PRODUCTS``."""
        names = [n.strip() for n in (self.text("PAYRECON_APPS") or "").split(",") if n.strip()]
        apps = []
        for name in names:
            prefix = f"PAYRECON_APP_{name.upper().replace('-', '_')}"
            url = self.text(f"{prefix}_URL")
            secrets = [part.strip() for part in (self.text(f"{prefix}_SECRET") or "").split(",") if part.strip()]
            if url is None:
                self.problems.append(f"{prefix}_URL is not set (app {name!r} is in PAYRECON_APPS)")
                continue
            if not url.startswith(("http://", "https://", "celery://")):
                shown = url.split("?", 1)[0] + ("?***" if "?" in url else "")  # a query may hold a token
                self.problems.append(f"{prefix}_URL must be https://... or celery://QUEUE/TASK, got {shown!r}")
                continue
            if not url.startswith("celery://") and not secrets:
                self.problems.append(f"{prefix}_SECRET is not set: HTTP deliveries are signed with it")
                continue
            keys = []
            for number, secret in enumerate(secrets, start=1):
                try:
                    keys.append(SigningKey.parse(secret))
                except ValueError as exc:
                    self.problems.append(f"{prefix}_SECRET: secret {number} of {len(secrets)} {exc}")
            products = tuple(p.strip() for p in (self.text(f"{prefix}_PRODUCTS") or "").split(",") if p.strip())
            apps.append(AppSettings(name=name, url=url, keys=tuple(keys), products=products))
        return tuple(apps)

    def clock(self, name: str, default: tuple[int, int]) -> tuple[int, int]:
        value = self._raw(name)
        if value is None:
            return default
        try:
            hour, minute = (int(part) for part in value.split(":"))
        except ValueError:
            hour, minute = -1, -1
        if not (0 <= hour < 24 and 0 <= minute < 60):
            self.problems.append(f"{name} must be a local time HH:MM, e.g. 02:00, got {value!r}")
            return default
        return hour, minute

    def optional_integer(self, name: str, *, minimum: int) -> int | None:
        return self.integer(name, 0, minimum=minimum) if self._raw(name) is not None else None

    def budget(self, name: str) -> tuple[float, int] | None:
        value = self._raw(name)
        if value is None:
            return None
        try:
            rate_text, burst_text = value.split(",")
            rate, burst = float(rate_text), int(burst_text)
        except ValueError:
            rate, burst = 0.0, 0
        if rate <= 0 or burst < 1:
            self.problems.append(f"{name} must be 'CALLS_PER_SECOND,BURST', e.g. '5,20', got {value!r}")
            return None
        return rate, burst

    def schedule(self, name: str, unit: str = "seconds") -> tuple[int, ...] | None:
        value = self._raw(name)
        if value is None:
            return None
        parts = [part.strip() for part in value.split(",")]
        # Digits only: int() would also take '1_000', '+30' and '٣٠'.
        delays = tuple(int(part) for part in parts) if all(_DIGITS.fullmatch(part) for part in parts) else ()
        if not delays or any(d <= 0 for d in delays):
            self.problems.append(f"{name} must be comma-separated positive {unit}, e.g. '30,120,300', got {value!r}")
            return None
        return delays

    def momo_environment(self, name: str, value: str) -> str:
        """MTN's ``X-Target-Environment``: ``sandbox`` or ``mtn<country>`` (``mtnivorycoast``), lower case as MTN
        spells it: the header is compared as written, and only ``sandbox`` selects MTN's sandbox host."""
        if not _MOMO_ENVIRONMENT.fullmatch(value):
            self.problems.append(
                f"{name} must be {MTN_MOMO_SANDBOX_ENVIRONMENT!r} or MTN's name of the country's system in lower case "
                f"(e.g. 'mtnivorycoast', 'mtncameroon'), got {value!r}"
            )
        return value

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


# --------------------------------------------------------------------------- each provider's settings


def _read_cinetpay(reader: _Reader) -> CinetPaySettings | None:
    found = reader.group("CINETPAY", CREDENTIALS["cinetpay"])
    if found is None:
        return None
    return CinetPaySettings(
        api_url=reader.http_url("CINETPAY_API_URL", CINETPAY_DEFAULT_URL),
        api_key=found["CINETPAY_API_KEY"],
        site_id=found["CINETPAY_SITE_ID"],
        secret_key=found["CINETPAY_SECRET_KEY"],
    )


def _read_mtn_momo(reader: _Reader) -> MtnMomoSettings | None:
    found = reader.group("MTN_MOMO", CREDENTIALS["mtn_momo"])
    if found is None:
        return None
    environment = reader.momo_environment("MTN_MOMO_TARGET_ENVIRONMENT", found["MTN_MOMO_TARGET_ENVIRONMENT"])
    sandboxed = environment == MTN_MOMO_SANDBOX_ENVIRONMENT
    return MtnMomoSettings(
        # The host follows the target environment unless MTN_MOMO_API_URL says otherwise.
        api_url=reader.http_url("MTN_MOMO_API_URL", MTN_MOMO_SANDBOX_URL if sandboxed else MTN_MOMO_DEFAULT_URL),
        api_user=found["MTN_MOMO_API_USER"],
        api_key=found["MTN_MOMO_API_KEY"],
        subscription_key=found["MTN_MOMO_SUBSCRIPTION_KEY"],
        target_environment=environment,
        callback_host=reader.text("MTN_MOMO_CALLBACK_HOST"),
    )


def _read_orange_money(reader: _Reader) -> OrangeMoneySettings | None:
    found = reader.group("ORANGE_MONEY", CREDENTIALS["orange_money"])
    if found is None:
        return None
    token_url = reader.text("ORANGE_MONEY_TOKEN_URL")
    return OrangeMoneySettings(
        api_url=reader.http_url("ORANGE_MONEY_API_URL", ORANGE_MONEY_DEFAULT_URL),
        client_id=found["ORANGE_MONEY_CLIENT_ID"],
        client_secret=found["ORANGE_MONEY_CLIENT_SECRET"],
        merchant_key=found["ORANGE_MONEY_MERCHANT_KEY"],
        country=found["ORANGE_MONEY_COUNTRY"].lower(),
        token_url=reader.http_url("ORANGE_MONEY_TOKEN_URL", token_url) if token_url else None,
        notif_url=reader.notif_url("ORANGE_MONEY_NOTIF_URL"),
    )


def _read_wave(reader: _Reader) -> WaveSettings | None:
    found = reader.group("WAVE", CREDENTIALS["wave"])
    if found is None:
        return None
    secrets = tuple(part.strip() for part in (reader.text("WAVE_WEBHOOK_SECRETS") or "").split(",") if part.strip())
    shared = reader.text("WAVE_WEBHOOK_SHARED_SECRET")
    if not secrets and not shared:
        reader.problems.append(
            "WAVE is half configured: set WAVE_WEBHOOK_SECRETS (comma-separated, newest first) "
            "or WAVE_WEBHOOK_SHARED_SECRET, or webhooks cannot be authenticated"
        )
    return WaveSettings(
        api_url=reader.http_url("WAVE_API_URL", WAVE_DEFAULT_URL),
        api_key=found["WAVE_API_KEY"],
        webhook_secrets=secrets,
        webhook_shared_secret=shared,
        tolerance=reader.integer("WAVE_WEBHOOK_TOLERANCE", 300, minimum=1),
    )


#: Each provider's settings, read from the environment (None: not configured). A new provider adds its reader
#: here, its client factory to ``worker.runtime.CLIENTS`` and its profile to ``providers.profiles.PROFILES``;
#: tests/test_settings.py checks the three cover ``schemas.messages.Provider``.
READERS: dict[str, Callable[[_Reader], Any]] = {
    "cinetpay": _read_cinetpay,
    "mtn_momo": _read_mtn_momo,
    "orange_money": _read_orange_money,
    "wave": _read_wave,
}
