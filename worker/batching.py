"""Webhook messages consumed in batches: the Celery strategy of ``payrecon.ingest_webhook``.

The contract does not change (design §1.1): one envelope per message, the same task name, queue
and kwargs; a producer cannot tell. What changes is how a worker consumes them. Celery's default
strategy gives every message a request object and a pool job of its own (about 1 ms of CPU per
message before any work); this one keeps the messages as they arrive, and hands them to the pool
as one job (``worker.tasks.run_batch``) once ``PAYRECON_BATCH_SIZE`` are in or
``PAYRECON_BATCH_WAIT`` seconds after the first, whichever comes first. That job stores them in
one transaction, asks the providers in parallel and settles the answers in one transaction
(``worker.pipeline.ingest_batch``).

What the per-message path guarantees holds for a batch:

* a message is acknowledged only after its work is done (stored, settled or put off in
  PostgreSQL) or it was sent again; a worker killed meanwhile leaves its messages unacknowledged,
  and the broker hands them out again (Redis: after the visibility timeout);
* a message the batch cannot use as it is (another protocol, extra arguments, an ETA or a retry
  count: a message ``run_batch`` sent again because PostgreSQL was away) takes Celery's own path,
  unchanged: the same task, the same guards;
* the broker's prefetch bounds what a worker holds: ``celeryconfig`` sets it to three batches.

Why not ``celery-batches``: it builds a full Celery request per message (most of the per-message
cost this avoids), and its 0.11 release declares ``celery<5.7`` while payrecon runs on 5.7.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, Task
from celery.worker.consumer import Consumer
from celery.worker.strategy import default as default_strategy
from kombu.message import Message

log = logging.getLogger(__name__)


class Batcher:
    """The messages of one task a worker holds, waiting to be handed to the pool together."""

    def __init__(self, consumer: Consumer, handle_alone: Any, size: int, wait: float) -> None:
        self.pool = consumer.pool
        self.timer = consumer.timer
        self.connection_errors = consumer.connection_errors
        self.handle_alone = handle_alone
        self.size = size
        self.wait = wait
        # The consumer's loop adds messages; without an event loop (the embedded demo's broker)
        # the timer runs in a thread of its own and flushes from there.
        self.lock = threading.Lock()
        self.buffer: list[tuple[Any, Any, Any]] = []  # (envelope, ack, reject)
        self.timer_entry: Any = None

    def __call__(self, message: Message, body: Any, ack: Any, reject: Any, callbacks: Any, **kwargs: Any) -> Any:
        envelope = self._batchable(message, body)
        if envelope is None:
            return self.handle_alone(message, body, ack, reject, callbacks, **kwargs)
        with self.lock:
            self.buffer.append((envelope, ack, reject))
            full = len(self.buffer) >= self.size
            if not full and self.timer_entry is None:
                self.timer_entry = self.timer.call_after(self.wait, self.flush)
        if full:
            self.flush()
        return None

    @staticmethod
    def _batchable(message: Message, body: Any) -> Any:
        """The envelope of a plain protocol-2 ``ingest_webhook(envelope=...)`` message; None if the
        message takes Celery's own path."""
        if body is not None or "args" in (message.payload if isinstance(message.payload, dict) else {}):
            return None  # protocol 1 or hybrid: Celery converts those
        headers = message.headers or {}
        if headers.get("eta") or headers.get("retries") or headers.get("expires"):
            return None
        try:
            args, kwargs, _ = message.decode()  # type: ignore[no-untyped-call]
        except Exception:
            return None
        if args or not isinstance(kwargs, dict) or set(kwargs) != {"envelope"}:
            return None
        return kwargs["envelope"]

    def flush(self) -> None:
        with self.lock:
            if self.timer_entry is not None:
                self.timer_entry.cancel()
                self.timer_entry = None
            items, self.buffer = self.buffer, []
        if not items:
            return
        from worker.tasks import run_batch

        def done(dispositions: list[bool] | None) -> None:
            # True: done or sent again, acknowledge. False (the broker was away when it had to be
            # sent again): back to the queue. None: the job itself failed (see run_batch).
            for (_, ack, reject), acknowledge in zip(items, dispositions or [False] * len(items), strict=True):
                if acknowledge:
                    ack(log, self.connection_errors)
                else:
                    reject(log, self.connection_errors, requeue=True)

        def lost(*_: Any) -> None:  # prefork: the child running the batch died; the messages go back
            done(None)

        self.pool.apply_async(
            run_batch, args=([envelope for envelope, _, _ in items],), callback=done, error_callback=lost
        )


def strategy(task: Task, app: Celery, consumer: Consumer, **kwargs: Any) -> Any:
    """Celery's ``Task.Strategy`` hook: batches when PAYRECON_BATCH_SIZE > 1, Celery's own otherwise."""
    from worker import runtime

    alone = default_strategy(task, app, consumer, **kwargs)
    settings = runtime.get().settings
    if settings.batch_size <= 1:
        return alone
    log.info("%s: batches of up to %d messages, %.3f s wait", task.name, settings.batch_size, settings.batch_wait)
    return Batcher(consumer, alone, settings.batch_size, settings.batch_wait)
