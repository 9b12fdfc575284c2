"""Sending the contract's messages (README, "The contract") to payrecon's Celery broker, from Python.

One producer for everything in the repository that sends: ``payrecon receive`` (each callback
as ``payrecon.ingest_webhook``), ``payrecon enqueue`` (envelopes or registrations) and the
provider sandbox (its notifications, when asked to enqueue them). Each message is the task a
merchant's own producer sends: the task name, keyword argument ``envelope`` or ``payment``, queue
``webhooks``, JSON serializer. Celery is imported, and the broker connected, on first use only.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Final, Literal

from kombu.utils.url import maybe_sanitize_url

if TYPE_CHECKING:
    from celery import Celery

INGEST_TASK: Final = "payrecon.ingest_webhook"
REGISTER_TASK: Final = "payrecon.register_payment"
QUEUE: Final = "webhooks"
Kind = Literal["webhook", "payment"]
#: The contract's two messages: kind -> (task name, its one keyword argument).
TASKS: Final[dict[str, tuple[str, str]]] = {
    "webhook": (INGEST_TASK, "envelope"),
    "payment": (REGISTER_TASK, "payment"),
}
#: Each contract task's one keyword argument, by task name.
KWARGS: Final[dict[str, str]] = dict(TASKS.values())
#: A producer must not hang on a broker that does not answer (Redis: no connect timeout by default).
REDIS_TIMEOUTS: Final = {"socket_connect_timeout": 3.0, "socket_timeout": 10.0}


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``**``, safe to print or log."""
    return str(maybe_sanitize_url(url))


class BrokerPublisher:
    """Publishes the contract's messages on one broker; thread-safe, connections pooled."""

    def __init__(
        self,
        broker_url: str,
        *,
        pool_limit: int = 4,
        acquire_timeout: float = 10.0,
        app_name: str = "payrecon-producer",
        retry_policy: dict[str, float] | None = None,
    ) -> None:
        """Publish to ``broker_url`` (any Celery broker URL); nothing is connected yet.

        ``retry_policy``: how a publish that failed to reach the broker is tried again (Celery's
        ``task_publish_retry_policy``: ``max_retries``, ``interval_start``, ``interval_step``,
        ``interval_max``); by default Celery's (3 retries within about a second).
        """
        self.broker_url = broker_url
        self.retry_policy = retry_policy
        self.pool_limit = pool_limit
        self.acquire_timeout = acquire_timeout
        self.app_name = app_name
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
                app = Celery(self.app_name, broker=self.broker_url, backend="disabled", set_as_current=False)
                app.conf.update(
                    task_serializer="json", accept_content=["json"], broker_connection_retry_on_startup=True
                )
                if self.broker_url.startswith(("redis://", "rediss://")):
                    app.conf.broker_transport_options = dict(REDIS_TIMEOUTS)
                # Connections for this URL explicitly: Celery's own pool would let CELERY_BROKER_URL in the
                # environment override broker=, and a producer must publish where it was told to.
                self._pool = app.connection_for_write(self.broker_url).Pool(limit=self.pool_limit)
                self._app = app
            return self._app, self._pool

    def send(self, kind: Kind, document: Any) -> str:
        """Enqueue ``document`` as the ``kind`` message now and return the task id; broker errors propagate.

        ``document`` is sent as it is (validate it first: the worker dead-letters what is invalid).
        """
        task, kwarg = TASKS[kind]
        app, pool = self._producer_side()
        options: dict[str, Any] = {} if self.retry_policy is None else {"retry_policy": self.retry_policy}
        with pool.acquire(block=True, timeout=self.acquire_timeout) as connection:
            result = app.send_task(
                task,
                kwargs={kwarg: document},
                queue=QUEUE,
                serializer="json",
                connection=connection,
                ignore_result=True,
                **options,
            )
        return str(result.id)

    def publish(self, envelope: dict[str, Any]) -> str:
        """Enqueue ``envelope`` as ``payrecon.ingest_webhook`` now and return the task id."""
        return self.send("webhook", envelope)

    def check(self, timeout: float = 3.0) -> None:
        """Connect to the broker now (a new connection, not a pooled one); raises if it is unreachable."""
        from kombu.connection import Connection

        options = dict(REDIS_TIMEOUTS) if self.broker_url.startswith(("redis://", "rediss://")) else {}
        with Connection(self.broker_url, connect_timeout=timeout, transport_options=options) as connection:  # type: ignore[no-untyped-call]
            connection.ensure_connection(max_retries=1, timeout=timeout)

    def close(self) -> None:
        """Close the broker connections; a later :meth:`send` reconnects."""
        with self._lock:
            app, pool = self._app, self._pool
            self._app = self._pool = None
        if pool is not None:
            pool.force_close_all()
        if app is not None:
            app.close()
