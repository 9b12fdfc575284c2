"""Metrics plumbing: the facts → counters bridge, provider-call timing, live state at scrape time,
and the /metrics endpoints of the worker and beat (Celery signals)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, tzinfo
from typing import Any, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from providers.base import ProviderError, ProviderRateLimited, ProviderTransientError
from reconciliation import facts, views
from reconciliation.nightly import cases
from worker import metrics
from worker.settings import PROVIDERS

log = logging.getLogger(__name__)
T = TypeVar("T")

QUEUES = ("webhooks", "verify", "maintenance")


# --------------------------------------------------------------------------- facts → counters


def _on_fact(kind: str, data: dict[str, Any]) -> None:
    if kind == "payment_final":
        metrics.PAYMENTS_FINAL.labels(data["provider"], data["status"]).inc()
        metrics.TIME_TO_FINAL.labels(data["provider"], data["status"]).observe(data["seconds"])
    elif kind == "disagreement":
        metrics.DISAGREEMENTS.labels(data["provider"], data["claimed"], data["confirmed"]).inc()
    elif kind == "batch_settled":
        log.info("batch settled: %d set-wise, %d one by one", data["set_wise"], data["one_by_one"])
        metrics.BATCH_SETTLEMENTS.labels("set_wise").inc(data["set_wise"])
        metrics.BATCH_SETTLEMENTS.labels("one_by_one").inc(data["one_by_one"])
    elif kind == "grant":
        metrics.GRANTS.labels(data["product"]).inc()
    elif kind == "expiry":
        metrics.EXPIRIES.labels(data["product"]).inc()
    elif kind == "dead_letter":
        metrics.DEAD_LETTERED.labels(data["reason"]).inc()
    elif kind == "recon_run":
        metrics.RECON_RUNS.labels(data["provider"], data["status"]).inc()
        metrics.RECON_DURATION.labels(data["provider"]).observe(data["seconds"])
        for cls, count in data["counts"].items():
            if count:
                metrics.RECON_ITEMS.labels(data["provider"], cls).inc(count)


facts.subscribe(_on_fact)


def outcome_of(exc: BaseException | None) -> str:
    """The ``outcome`` label of a provider call."""
    if exc is None:
        return "ok"
    if isinstance(exc, ProviderRateLimited):
        return "rate_limited"
    if isinstance(exc, ProviderTransientError):
        return "transient"
    if isinstance(exc, ProviderError):
        return type(exc).__name__.removeprefix("Provider").lower() or "error"
    return "error"


def timed_call(provider: str, operation: str, call: Callable[[], T]) -> T:
    """Run a provider call, counting its outcome and timing it."""
    started = time.perf_counter()
    error: BaseException | None = None
    try:
        return call()
    except BaseException as exc:
        error = exc
        raise
    finally:
        metrics.PROVIDER_LATENCY.labels(provider, operation).observe(time.perf_counter() - started)
        metrics.PROVIDER_CALLS.labels(provider, operation, outcome_of(error)).inc()


# --------------------------------------------------------------------------- live state


class StateCollector(Collector):
    """Gauges read at scrape time in the serving process: pending payments and the age of the
    oldest, dead letters waiting, queue depth. Cached briefly so scrapes stay cheap."""

    def __init__(self, sessions: Any, redis_url: str | None, *, ttl: float = 5.0, tz: tzinfo = UTC) -> None:
        self._sessions = sessions
        self._tz = tz  # the business time zone: the age of exception cases counts its days
        self._redis_url = redis_url
        self._ttl = ttl
        self._lock = threading.Lock()
        self._cached: tuple[float, list[GaugeMetricFamily]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] > self._ttl:
                self._cached = (time.monotonic(), self._read())
            yield from self._cached[1]

    def _read(self) -> list[GaugeMetricFamily]:
        families: list[GaugeMetricFamily] = []
        try:
            families += self._database()
        except Exception:
            log.warning("metrics: database state unavailable", exc_info=True)
        if self._redis_url:
            try:
                families.append(self._queues())
            except Exception:
                log.warning("metrics: queue depth unavailable", exc_info=True)
        return families

    def _database(self) -> list[GaugeMetricFamily]:
        now = datetime.now(UTC)
        pending = GaugeMetricFamily(
            f"{metrics.NAMESPACE}_pending_payments", "Payments not final yet.", labels=["provider"]
        )
        oldest = GaugeMetricFamily(
            f"{metrics.NAMESPACE}_oldest_pending_payment_age_seconds",
            "Age of the oldest payment that is not final (0 if none).",
            labels=["provider"],
        )
        letters = GaugeMetricFamily(
            f"{metrics.NAMESPACE}_dead_letters", "Dead letters not replayed yet.", labels=["reason"]
        )
        waiting = GaugeMetricFamily(
            f"{metrics.NAMESPACE}_waiting_deliveries",
            "Deliveries whose work is unfinished (held by a worker, put off, or due).",
            labels=["provider"],
        )
        overdue = GaugeMetricFamily(
            f"{metrics.NAMESPACE}_delivery_overdue_seconds",
            "How long the most overdue delivery has been due without a worker taking it (0 if none).",
            labels=["provider"],
        )
        cases_open = GaugeMetricFamily(
            f"{metrics.NAMESPACE}_exception_cases_open",
            "Reconciliation exception cases open or under investigation, by age in days since their business day.",
            labels=["provider", "age_bucket", "priority"],
        )
        cases_overdue = GaugeMetricFamily(
            f"{metrics.NAMESPACE}_exception_cases_overdue",
            "Reconciliation exception cases still open past their SLA date.",
            labels=["provider"],
        )
        last_success = GaugeMetricFamily(
            f"{metrics.NAMESPACE}_reconciliation_last_success_timestamp_seconds",
            "When the last successful reconciliation run of each provider finished (Unix time).",
            labels=["provider"],
        )
        with self._sessions() as session:
            health = views.health_counts(session)
        rows, counts, work, runs, open_cases = (
            health.unfinished_payments,
            health.dead_letters,
            health.waiting_deliveries,
            health.last_successful_runs,
            health.open_cases,
        )
        seen = {provider for provider, _, _ in rows}
        for provider, count, first in rows:
            pending.add_metric([provider], count)
            oldest.add_metric([provider], max(0.0, (now - first).total_seconds()) if first else 0.0)
        for provider in sorted(set(PROVIDERS) - seen):
            pending.add_metric([provider], 0)
            oldest.add_metric([provider], 0)
        for reason, count in counts:
            letters.add_metric([reason], count)
        busy = {provider: (count, due) for provider, count, due in work}
        for provider in PROVIDERS:
            count, due = busy.get(provider, (0, None))
            waiting.add_metric([provider], count)
            overdue.add_metric([provider], max(0.0, (now - due).total_seconds()) if due else 0.0)
        for provider, finished in runs:
            if finished is not None:
                last_success.add_metric([provider], finished.timestamp())
        today = now.astimezone(self._tz).date()
        by_age: dict[tuple[str, str, str], int] = {}
        late: dict[str, int] = dict.fromkeys(PROVIDERS, 0)
        for provider, day, priority, sla_due, count in open_cases:
            key = (provider, cases.age_bucket(cases.age_days(day, today)), priority)
            by_age[key] = by_age.get(key, 0) + count
            late[provider] = late.get(provider, 0) + (count if today > sla_due else 0)
        for provider in PROVIDERS:  # every series present, at 0 when empty, so rates and alerts see it
            for bucket, _, _ in cases.AGE_BUCKETS:
                for priority in cases.PRIORITY_ORDER:
                    cases_open.add_metric([provider, bucket, priority], by_age.get((provider, bucket, priority), 0))
        for provider, count in sorted(late.items()):
            cases_overdue.add_metric([provider], count)
        return [pending, oldest, letters, waiting, overdue, last_success, cases_open, cases_overdue]

    def _queues(self) -> GaugeMetricFamily:
        import redis

        depth = GaugeMetricFamily(f"{metrics.NAMESPACE}_queue_depth", "Messages waiting in a queue.", labels=["queue"])
        client = redis.Redis.from_url(self._redis_url or "", socket_timeout=2)
        try:
            for queue in QUEUES:
                depth.add_metric([queue], client.llen(queue))
        finally:
            client.close()
        return depth


# --------------------------------------------------------------------------- serving


def serving_registry(extra: Collector | None = None) -> CollectorRegistry:
    """The registry to serve: all processes' files in multiprocess mode, else this process's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    if extra is not None:
        registry.register(extra)
    return registry


def serve(port: int, registry: CollectorRegistry, *, addr: str = "0.0.0.0") -> None:  # noqa: S104 - scraped
    start_http_server(port, addr=addr, registry=registry)
    log.info("metrics served on %s:%d/metrics", addr, port)


def mark_process_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
