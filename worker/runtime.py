"""Per-process resources: settings, database engine, provider clients.

Built lazily on first use in each process (after the prefork pool forks), never
at import time, and shared by the threads of that process.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from providers.base import ProviderClient
from reconciliation.db import make_engine, session_factory
from reconciliation.payments import Context, RecheckPolicy
from worker.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    clients: dict[str, ProviderClient]
    policy: RecheckPolicy

    def context(self, now: datetime | None = None) -> Context:
        return Context(now=now or datetime.now(UTC), tz=self.settings.timezone, policy=self.policy)

    def client(self, provider: str) -> ProviderClient | None:
        return self.clients.get(provider)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.engine.dispose()


def build_clients(settings: Settings) -> dict[str, ProviderClient]:
    from providers.cinetpay import CinetPayClient

    clients: dict[str, ProviderClient] = {}
    if settings.cinetpay is not None:
        clients["cinetpay"] = CinetPayClient(
            api_url=settings.cinetpay.api_url,
            api_key=settings.cinetpay.api_key,
            site_id=settings.cinetpay.site_id,
            secret_key=settings.cinetpay.secret_key,
            timeout=settings.http_timeout,
        )
    return clients


def build(settings: Settings) -> Runtime:
    # Threads hold a connection only for their short transactions, never across a provider call,
    # so the pool is far smaller than the thread count (PostgreSQL's connections are precious).
    engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=session_factory(engine),
        clients=build_clients(settings),
        policy=RecheckPolicy(schedule=settings.recheck_schedule, give_up_after=settings.give_up_after),
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
