"""Per-process resources: settings, database engine, provider clients, trust profiles, budget.

Built lazily on first use in each process (after the prefork pool forks), never at import
time, and shared by the threads of that process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from providers.base import ProviderClient
from providers.profiles import PROFILES, TrustProfile
from reconciliation.db import make_engine, session_factory
from reconciliation.payments import Context, RecheckPolicy
from worker.budget import Budget, for_broker
from worker.settings import Settings

#: Provider calls in flight at most per worker process (each holds one pooled HTTP connection:
#: providers.http's pool keeps as many).
CALLS_IN_FLIGHT = 512


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    clients: dict[str, ProviderClient]
    profiles: dict[str, TrustProfile]
    budget: Budget
    _calls: ThreadPoolExecutor | None = field(default=None, repr=False)

    def call_pool(self) -> ThreadPoolExecutor:
        """Threads for what a batch's provider calls must not do in the batch's own thread, where they wait together
        (``providers.hub``: a greenlet each): open a connection, or take requests' own path. As many as the messages a
        worker holds for batches (at most ``CALLS_IN_FLIGHT``), started only as needed: with keep-alive
        connections, seldom."""
        if self._calls is None:
            with _lock:
                if self._calls is None:
                    size = min(CALLS_IN_FLIGHT, max(self.settings.batch_size, self.settings.batch_prefetch))
                    self._calls = ThreadPoolExecutor(max_workers=size, thread_name_prefix="payrecon-call")
        return self._calls

    def context(self, provider: str | None = None, now: datetime | None = None) -> Context:
        """Clock, business time zone and re-check policy (of ``provider``, else the default)."""
        profile = self.profiles.get(provider or "cinetpay", PROFILES["cinetpay"])
        policy = RecheckPolicy(schedule=profile.recheck_schedule, give_up_after=profile.give_up_after)
        return Context(now=now or datetime.now(UTC), tz=self.settings.timezone, policy=policy)

    def client(self, provider: str) -> ProviderClient | None:
        return self.clients.get(provider)

    def profile(self, provider: str) -> TrustProfile:
        return self.profiles[provider]

    def close(self) -> None:
        if self._calls is not None:
            self._calls.shutdown(wait=True)
        for client in self.clients.values():
            client.close()
        close = getattr(self.budget, "close", None)
        if close is not None:
            close()
        self.engine.dispose()


def _cinetpay(c: Any, timeout: tuple[float, float]) -> ProviderClient:
    from providers.cinetpay import CinetPayClient

    return CinetPayClient(
        api_url=c.api_url, api_key=c.api_key, site_id=c.site_id, secret_key=c.secret_key, timeout=timeout
    )


def _mtn_momo(m: Any, timeout: tuple[float, float]) -> ProviderClient:
    from providers.mtn_momo import MtnMomoClient

    return MtnMomoClient(
        api_url=m.api_url, api_user=m.api_user, api_key=m.api_key, subscription_key=m.subscription_key,
        target_environment=m.target_environment, callback_host=m.callback_host, timeout=timeout,
    )  # fmt: skip


def _orange_money(o: Any, timeout: tuple[float, float]) -> ProviderClient:
    from providers.orange_money import OrangeMoneyClient

    return OrangeMoneyClient(
        api_url=o.api_url, client_id=o.client_id, client_secret=o.client_secret, merchant_key=o.merchant_key,
        country=o.country, token_url=o.token_url, notif_url=o.notif_url, timeout=timeout,
    )  # fmt: skip


def _wave(w: Any, timeout: tuple[float, float]) -> ProviderClient:
    from providers.wave import WaveClient

    return WaveClient(
        api_url=w.api_url, api_key=w.api_key, webhook_secrets=w.webhook_secrets,
        webhook_shared_secret=w.webhook_shared_secret, tolerance=w.tolerance, timeout=timeout,
    )  # fmt: skip


#: Each provider's client, from its settings (``worker.settings.READERS``) and the operator's timeouts.
CLIENTS: dict[str, Callable[[Any, tuple[float, float]], ProviderClient]] = {
    "cinetpay": _cinetpay,
    "mtn_momo": _mtn_momo,
    "orange_money": _orange_money,
    "wave": _wave,
}


def build_clients(settings: Settings) -> dict[str, ProviderClient]:
    """One client per configured provider, with the operator's timeouts."""
    return {
        name: CLIENTS[name](configured, settings.http_timeout)
        for name in settings.providers
        if (configured := getattr(settings, name)) is not None
    }


def build_profiles(settings: Settings) -> dict[str, TrustProfile]:
    """Every provider's trust profile with the operator's overrides applied."""
    return {
        name: base.with_overrides(
            recheck_schedule=settings.recheck_schedule,
            give_up_after=settings.give_up_after,
            budget=settings.budgets.get(name),
        )
        for name, base in PROFILES.items()
    }


def build(settings: Settings) -> Runtime:
    # Threads hold a connection only for their short transactions, never across a provider call,
    # so the pool is far smaller than the thread count (PostgreSQL's connections are precious).
    engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=session_factory(engine),
        clients=build_clients(settings),
        profiles=build_profiles(settings),
        budget=for_broker(settings.broker_url, settings.redis_url),
    )


_lock = threading.Lock()
_runtime: Runtime | None = None


def get() -> Runtime:
    global _runtime  # noqa: PLW0603 - one runtime per process, by design
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = build(Settings.from_env())
    return _runtime


def _forget_after_fork() -> None:
    # A forked child must not reuse the parent's sockets or pooled connections.
    global _runtime  # noqa: PLW0603
    _runtime = None


os.register_at_fork(after_in_child=_forget_after_fork)
