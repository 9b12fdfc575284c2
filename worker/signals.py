"""Celery signal handlers: metrics endpoints, beat's heartbeat, JSON logs, and the task failures decided
outside the task (the other per-task counts are the task base class's: ``worker.tasks.PayreconTask``).

Imported by ``worker.app``; everything here runs in worker or beat processes only.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any

from celery import signals
from celery.exceptions import Reject, WorkerLostError

from worker import metrics, observability, serving

log = logging.getLogger(__name__)

_in_beat = False

#: Allocations of container objects (less those freed) between two collections of the youngest generation
#: (CPython 3.11-3.13's default: 700; 3.14's incremental collector counts differently, default 2,000).
GC_YOUNG = 10_000


@signals.worker_ready.connect
@signals.worker_process_init.connect  # a prefork pool's child: forked before worker_ready, which runs in the parent
def _freeze_startup_objects(sender: Any = None, **_: Any) -> None:
    """Move what the worker holds once started (modules, classes, settings, pools: long-lived) out of the
    garbage collector's reach, so that its full collections, which a busy worker's allocations trigger
    every few seconds, traverse only what the work allocates since. Measured with ``bench/throughput.py``
    (batch 100, alternately, BENCHMARKS.md): workers 1.02-1.43 against 1.24-1.51 ms of CPU an event in three
    pairs of four.

    Then the youngest generation is collected every ``GC_YOUNG`` allocations, not CPython's 700: a batch
    allocates tens of thousands of objects (rows, ORM states, messages) that live until its end, and every
    young collection walked and promoted those alive. ``bench/batch_cpu.py`` with the start-up frozen, four
    alternated pairs: 0.58-0.65 against 0.61-0.69 ms of worker CPU an event (BENCHMARKS.md). The older
    generations keep their counts (collected after 10 younger collections each), so they come about 14 times
    less often too: garbage in cycles that outlives a young collection waits longer, up to about a million
    allocations (a few seconds of a busy worker) for a full collection; the worker's resident memory over
    6,000 events was within 1 MiB with either threshold (BENCHMARKS.md)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])


@signals.worker_ready.connect
def _serve_worker_metrics(sender: Any = None, **_: Any) -> None:
    port = serving.port("worker")
    if not port:
        return
    from worker import runtime

    rt = runtime.get()
    redis_url = rt.settings.redis_url or (
        rt.settings.broker_url if rt.settings.broker_url.startswith(("redis://", "rediss://")) else None
    )
    collector = observability.StateCollector(rt.sessions, redis_url, tz=rt.settings.timezone)
    try:
        observability.serve(port, observability.serving_registry(collector))
    except OSError as exc:  # a second worker node on the same host: say so, keep working
        log.error("metrics port %d unavailable (%s): set PAYRECON_METRICS_PORT per worker node", port, exc)


@signals.task_failure.connect
def _failed_outside_the_task(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    """Failures Celery decides in the worker's main process, where the task's own hooks do not run: a prefork
    child lost under a task whose message is not requeued, a message rejected for good. Every other
    outcome is counted by the task base class (``worker.tasks.PayreconTask``)."""
    if sender is not None and isinstance(exception, (WorkerLostError, Reject)):
        metrics.TASKS.labels(sender.name, "failed").inc()


@signals.worker_process_shutdown.connect
def _child_gone(pid: int | None = None, **_: Any) -> None:
    observability.mark_process_dead(pid or os.getpid())


# --------------------------------------------------------------------------- beat


@signals.beat_init.connect
def _serve_beat_metrics(sender: Any = None, **_: Any) -> None:
    global _in_beat  # noqa: PLW0603 - this process is beat
    _in_beat = True
    port = serving.port("beat")
    if port:
        try:
            observability.serve(port, observability.serving_registry())
        except OSError as exc:
            log.error("beat metrics port %d unavailable (%s)", port, exc)


@signals.before_task_publish.connect
def _beat_dispatch(sender: str | None = None, **_: Any) -> None:
    """Beat's jobs: count each dispatch and record beat's heartbeat for ``payrecon health``."""
    if not _in_beat or sender is None:
        return
    metrics.BEAT_DISPATCHES.labels(sender).inc()
    metrics.LAST_BEAT_DISPATCH.labels(sender).set_to_current_time()
    try:
        beat_heartbeat()
    except Exception:
        log.warning("beat heartbeat not recorded", exc_info=True)


def beat_heartbeat(now: datetime | None = None) -> None:
    from reconciliation import heartbeats
    from reconciliation.db import transaction
    from worker import runtime

    with transaction(runtime.get().sessions) as session:
        heartbeats.record(session, "beat", now or datetime.now(UTC))


# --------------------------------------------------------------------------- logs


@signals.setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Take over Celery's logging: JSON lines (or text), secrets and phone numbers masked."""
    from worker import logs
    from worker.settings import ConfigError, Settings

    try:
        secrets = logs.secrets_of(Settings.from_env(require_broker=False))
    except ConfigError:
        secrets = []  # the worker stops on the same error a moment later, with its message
    logs.configure(loglevel or logging.INFO, secrets=secrets, fmt=os.environ.get("PAYRECON_LOG_FORMAT", "json"))


@signals.task_prerun.connect
def _bind_task(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    from worker import logs

    logs.task_id.set(task_id)
    logs.task_name.set(getattr(task, "name", None))


@signals.task_postrun.connect
def _unbind_task(**_: Any) -> None:
    from worker import logs

    logs.task_id.set(None)
    logs.task_name.set(None)
