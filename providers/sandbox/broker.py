"""Delivering sandbox notifications straight onto payrecon's Celery broker.

Instead of POSTing a notification to a receiver, the sandbox can publish the
``payrecon.webhook/1`` envelope it built as the task the receiver would have
enqueued: ``payrecon.ingest_webhook(envelope=...)`` on queue ``webhooks``, JSON only.
Celery is imported, and the broker connected, on first use only.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Final

from kombu.utils.url import maybe_sanitize_url

if TYPE_CHECKING:
    from celery import Celery

INGEST_TASK: Final = "payrecon.ingest_webhook"
QUEUE: Final = "webhooks"


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``**``, safe to print or log."""
    return str(maybe_sanitize_url(url))


class BrokerPublisher:
    """Publishes envelopes as ``payrecon.ingest_webhook`` tasks; thread-safe."""

    def __init__(self, broker_url: str, *, pool_limit: int = 4, acquire_timeout: float = 10.0) -> None:
        """Publish to ``broker_url`` (any Celery broker URL); nothing is connected yet."""
        self.broker_url = broker_url
        self.pool_limit = pool_limit
        self.acquire_timeout = acquire_timeout
        self._lock = threading.Lock()
        self._app: Celery | None = None
        self._pool: Any = None  # kombu.connection.ConnectionPool (untyped)

    @property
    def safe_url(self) -> str:
        """The broker URL without its password."""
        return mask_url(self.broker_url)

    def _producer_side(self) -> tuple[Celery, Any]:
        with self._lock:
            if self._app is None or self._pool is None:
                from celery import Celery

                # set_as_current=False: an embedding process (payrecon's tests) keeps its own current app;
                # backend="disabled": CELERY_RESULT_BACKEND in the environment must not wire a backend in.
                app = Celery("payrecon-sandbox", broker=self.broker_url, backend="disabled", set_as_current=False)
                app.conf.update(
                    task_serializer="json", accept_content=["json"], broker_connection_retry_on_startup=True
                )
                # Connections for this URL explicitly: Celery's own pool would let CELERY_BROKER_URL in the
                # environment override broker=, and the sandbox must publish where it was told to.
                self._pool = app.connection_for_write(self.broker_url).Pool(limit=self.pool_limit)
                self._app = app
            return self._app, self._pool

    def publish(self, envelope: dict[str, Any]) -> str:
        """Enqueue ``envelope`` now and return the task id; broker errors propagate."""
        app, pool = self._producer_side()
        with pool.acquire(block=True, timeout=self.acquire_timeout) as connection:
            result = app.send_task(
                INGEST_TASK,
                kwargs={"envelope": envelope},
                queue=QUEUE,
                serializer="json",
                connection=connection,
                ignore_result=True,
            )
        return str(result.id)

    def close(self) -> None:
        """Close the broker connections; a later :meth:`publish` reconnects."""
        with self._lock:
            app, pool = self._app, self._pool
            self._app = self._pool = None
        if pool is not None:
            pool.force_close_all()
        if app is not None:
            app.close()
