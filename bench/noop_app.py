"""A Celery app whose ``payrecon.ingest_webhook`` does nothing: the no-op floor of ``bench/throughput.py``.

    celery -A bench.noop_app worker -P threads -c 64 -Q webhooks,verify ...

Everything but the task body is payrecon's: the configuration is the project's ``celeryconfig``
(JSON, ``task_acks_late``, prefetch multiplier 1, the Redis transport options, the queues and routes),
and the kombu patches ``worker.app`` applies before connecting (``worker.broker_recovery``: the Redis
fetch moves each message to ``<queue>:incoming``, records it in ``unacked``, then removes it from
``:incoming``), so a message costs the same broker round trips as in payrecon. The task has payrecon's
name and queue, so the bench feeds it the very messages payrecon consumes (same envelopes, same sizes).

Not loaded: payrecon's tasks and ``worker.signals`` (metrics, heartbeat, logging handlers): they are
payrecon's own per-message work, which the floor leaves out.

Each task counts itself in Redis (one round trip: ``INCR`` and the wall time of the latest completion,
pipelined): the bench times the run from the moment it releases the messages to the latest completion.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import redis
from celery import Celery

from schemas.producer import INGEST_TASK
from worker import broker_recovery

broker_recovery.apply()
broker_recovery.apply_reliable_fetch()

#: Redis keys (in the broker's database) the bench reads.
DONE_KEY = "payrecon-bench:noop:done"
LAST_KEY = "payrecon-bench:noop:last"

app = Celery("payrecon")
app.config_from_object("celeryconfig")

_client: redis.Redis | None = None
_lock = threading.Lock()


def _redis() -> redis.Redis:
    global _client  # noqa: PLW0603 - one client (a thread-safe connection pool) per worker process
    with _lock:
        if _client is None:
            _client = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])
        return _client


# The same options as payrecon's task (worker.tasks.WEBHOOK_PATH_LIMITS), so Celery does the same around it.
@app.task(name=INGEST_TASK, bind=True, soft_time_limit=40, time_limit=45)
def ingest_webhook(self: Any, envelope: Any = None, **unexpected: Any) -> None:
    """Nothing but counting the message."""
    pipe = _redis().pipeline(transaction=False)
    pipe.incr(DONE_KEY)
    pipe.set(LAST_KEY, repr(time.time()))
    pipe.execute()
