"""Webhook messages consumed in batches: the Celery strategy of ``payrecon.ingest_webhook``.

The contract does not change (README, "The contract"): one envelope per message, the same task name, queue
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
* the broker's prefetch bounds what a worker holds: it grows by one for each message held for a
  batch (as Celery does for a message with an ETA), up to ``PAYRECON_BATCH_PREFETCH`` messages (default
  512) beyond one per thread, and shrinks again as their batches end. The messages a worker holds are
  its work in flight: each waits on its provider, so the window must cover the provider's latency at
  full speed (at 200 ms, 300 messages kept two cores 75-83 % busy, 500-800 about 90 %; 1,024 settled
  fewer events than 512, each costing more CPU: BENCHMARKS.md); each may hold a connection to its
  provider while asked (the pool keeps 512 per host; ``ulimit -n`` must leave room), and it is what a
  killed worker leaves waiting for the visibility timeout;
* a message held when the connection to the broker is lost is the broker's again: it is dropped, not
  done (the broker hands it out anew).

Why not ``celery-batches``: it builds a full Celery request per message (most of the per-message
cost this avoids), and its 0.11 release declares ``celery<5.7`` while payrecon runs on 5.7.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task
from celery.worker.consumer import Consumer
from celery.worker.strategy import default as default_strategy
from kombu.message import Message

from worker import broker_recovery

log = logging.getLogger(__name__)


class Batcher:
    """The messages of one task a worker holds, waiting to be handed to the pool together."""

    def __init__(self, consumer: Consumer, handle_alone: Any, size: int, wait: float, prefetch: int) -> None:
        self.consumer = consumer
        self.pool = consumer.pool
        self.timer = consumer.timer
        self.connection_errors = consumer.connection_errors
        self.handle_alone = handle_alone
        self.size = size
        self.wait = wait
        self.prefetch = prefetch  # how far the prefetch may be raised for messages held in batches
        # The consumer's loop adds messages; without an event loop (the embedded demo's broker)
        # the timer runs in a thread of its own and flushes from there.
        self.lock = threading.Lock()
        self.buffer: list[_Held] = []
        self.timer_entry: Any = None
        self.raised = 0  # how far the prefetch is raised for messages held in batches (at most ``prefetch``)

    def __call__(self, message: Message, body: Any, ack: Any, reject: Any, callbacks: Any, **kwargs: Any) -> Any:
        envelope = self._batchable(message, body)
        if envelope is None:
            return self.handle_alone(message, body, ack, reject, callbacks, **kwargs)
        with self.lock:
            # A message held for a batch must not stop the broker from sending the rest of the batch:
            # the prefetch window grows by one for it (as Celery does for a message with an ETA), up to
            # ``prefetch`` messages, and shrinks again once its batch is done.
            raised_on = None
            if self.raised < self.prefetch:
                self.raised += 1
                raised_on = self.consumer.qos
                raised_on.increment_eventually()
            self.buffer.append(_Held(message, envelope, ack, reject, raised_on))
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
        # Messages of a connection that is gone (the consumer reconnected meanwhile) are the broker's
        # again: it hands them out anew, so they are dropped here, neither done nor acknowledged.
        channel = getattr(getattr(self.consumer, "task_consumer", None), "channel", None)
        stale = [item for item in items if channel is not None and item.message.channel is not channel]
        if stale:
            log.info("%d batched message(s) of a closed connection dropped (the broker sends them again)", len(stale))
            self._lower(stale)
            items = [item for item in items if item.message.channel is channel]
        if not items:
            return
        from worker.tasks import run_batch

        def done(dispositions: Any) -> None:
            # True: done or sent again, acknowledge. False (the broker was away when it had to be
            # sent again): back to the queue. Anything else: the job itself failed (see run_batch).
            try:
                if not isinstance(dispositions, list) or len(dispositions) != len(items):
                    time.sleep(JOB_FAILED_WAIT)  # not straight back: whatever failed may need a moment
                    dispositions = [False] * len(items)
                for item, acknowledge in zip(items, dispositions, strict=True):
                    if not acknowledge:
                        self._send_back(item)
                self._acknowledge([item for item, acknowledge in zip(items, dispositions, strict=True) if acknowledge])
            finally:  # whatever happened above, what was raised for these messages comes down
                self._lower(items)

        def lost(*_: Any) -> None:  # prefork: the child running the batch died; the messages go back
            done(None)

        try:
            self.pool.apply_async(
                run_batch, args=([item.envelope for item in items],), callback=done, error_callback=lost
            )
        except Exception:  # the pool is stopping: the messages go back
            log.exception("a batch of %d could not be handed to the pool; its messages go back", len(items))
            try:
                for item in items:
                    self._send_back(item)
            finally:
                self._lower(items)

    def _send_back(self, item: _Held) -> None:
        """A held message back to its queue. One that cannot be (a state kombu refuses) must not keep the others
        from theirs: it stays unacknowledged, and the broker hands it out again after the visibility timeout."""
        try:
            item.reject(log, self.connection_errors, requeue=True)
        except Exception:
            log.exception("a batched message could not be sent back; the broker hands it out again later")

    def _on_loop(self, step: Callable[[], None]) -> None:
        """Run ``step`` on the consumer's event loop, where Celery acknowledges and changes the QoS; without a
        loop (the embedded demo's broker), at once in this thread."""
        call_soon = getattr(self.consumer, "call_soon_ack", None)
        if call_soon is None:
            step()
        else:
            call_soon(step)

    def _acknowledge(self, items: list[_Held]) -> None:
        """Acknowledge a batch's messages whose work is done, on the consumer's event loop (where Celery
        acknowledges): on Redis in one round trip (``broker_recovery.ack_together``), then each message's
        own acknowledgement (Celery's callback: the message marked acknowledged, the prefetch restored after a
        reconnection), which finds nothing left to send."""
        if not items:
            return

        def together() -> None:
            try:
                broker_recovery.ack_together([item.message for item in items])
            except Exception:  # a bug here must not keep the messages from their own acknowledgements
                log.exception("acknowledging %d messages together failed: each is acknowledged alone", len(items))
            for item in items:
                item.ack(log, self.connection_errors)

        self._on_loop(together)

    def _lower(self, items: list[_Held]) -> None:
        """The prefetch comes down by what was raised for ``items``, on the consumer's current QoS only: after a
        reconnection Celery starts a new one at the base prefetch (and a new Batcher), and what was raised on the
        old one went with it."""
        raised = [item for item in items if item.raised_on is not None]
        if not raised:
            return

        def lower() -> None:
            # Under the lock the increments take: Celery runs its consumer with the QoS's own lock replaced by a
            # dummy (with or without an event loop), so a decrement racing an increment could be lost.
            with self.lock:
                self.raised -= len(raised)
                qos = self.consumer.qos
                current = sum(1 for item in raised if item.raised_on is qos)
                if current:
                    qos.decrement_eventually(current)

        self._on_loop(lower)  # where the messages raised it


@dataclass(frozen=True, slots=True, eq=False)
class _Held:
    message: Message
    envelope: Any
    ack: Any
    reject: Any
    raised_on: Any  # the consumer's QoS whose prefetch was raised for it (None: not raised)


#: Seconds before the messages of a batch whose job failed go back to the queue.
JOB_FAILED_WAIT = 2.0


def strategy(task: Task, app: Celery, consumer: Consumer, **kwargs: Any) -> Any:
    """Celery's ``Task.Strategy`` hook: batches when PAYRECON_BATCH_SIZE > 1, Celery's own otherwise."""
    from worker import runtime

    alone = default_strategy(task, app, consumer, **kwargs)
    settings = runtime.get().settings
    if settings.batch_size <= 1:
        return alone
    log.info("%s: batches of up to %d messages, %.3f s wait", task.name, settings.batch_size, settings.batch_wait)
    return Batcher(consumer, alone, settings.batch_size, settings.batch_wait, settings.batch_prefetch)
