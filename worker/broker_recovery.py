"""Keep the worker alive when its Redis broker restarts (issue #10, cause 4).

With celery and kombu 5.7.0 a Redis restart ended a running worker with "Unrecoverable error:
AttributeError('NoneType' object has no attribute 'hostname')". What happens on a lost broker
connection (celery/worker/consumer/consumer.py, ``Consumer.on_connection_error_after_connected``):

1. ``connection.collect()`` closes the default channel. The Redis ``Channel.close`` first reads
   the pending BRPOP reply from the dead socket, which raises a ``ConnectionError`` *before* the
   channel is marked closed; kombu swallows it (``Connection.maybe_close_channel``) and then
   detaches the transport: ``transport.client = None`` (kombu/connection.py, ``_do_close_transport``).
2. ``connection.close()`` (added by celery PR #10242, GH-9705, to release the old socket) closes
   that half-closed channel again. Its QoS now restores the prefetched, unacknowledged messages
   (kombu/transport/virtual/base.py, ``QoS.restore_unacked_once``), which needs a new connection
   pool built from ``transport.client`` (kombu/transport/redis.py, ``Channel._connparams``):
   ``None.hostname``. An AttributeError is no connection error, so it escapes celery's
   ``ignore_errors`` and the worker stops.

The same detached transport ends the worker a second way: a task that was running during the
restart finishes after celery reconnected and acknowledges its message on the old channel
(``QoS.ack`` -> ``_remove_from_indices`` -> ``Channel._connparams``: ``None.client``), found by
``bench/storm.py``.

The fix: a Redis QoS whose channel has lost its transport neither restores nor acknowledges
through it; the rest of the close (which needs no broker) completes and celery reconnects as
after any connection loss.
Nothing is lost: kombu keeps every delivered message in the ``unacked`` hash in Redis until it is
acknowledged (Redis with AOF keeps it across a restart), and any worker puts the ones older than
the visibility timeout (``celeryconfig.VISIBILITY_TIMEOUT``) back on their queue
(``QoS.restore_visible``), as for a worker that died. Restoring them now is impossible anyway:
the broker is down at that moment.

Remove this module once a kombu or celery release no longer closes a channel whose transport
was detached (``tests/test_broker_restart.py`` tells: it passes without the patch).
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as redis_transport

log = logging.getLogger(__name__)

_MARK = "_payrecon_detached_channel_safe"


def _detached(qos: Any) -> bool:
    transport = getattr(qos.channel, "connection", None)
    return transport is None or getattr(transport, "client", None) is None


def apply() -> None:
    """Patch kombu's Redis QoS (idempotent). Called by ``worker.app`` on import, so before any QoS
    exists: each QoS binds ``restore_unacked_once`` as its garbage-collection finalizer."""
    qos_class: Any = redis_transport.QoS
    if getattr(qos_class.restore_unacked_once, _MARK, False):
        return
    original_restore = qos_class.restore_unacked_once
    original_ack = qos_class.ack
    original_reject = qos_class.reject

    def restore_unacked_once(self: Any, stderr: Any = None) -> Any:
        if not _detached(self):
            return original_restore(self, stderr)
        # The transport is detached (closed or collected): there is no broker to restore to.
        self._on_collect.cancel()
        self._flush()
        if self._delivered:
            log.warning(
                "broker connection lost: %d unacknowledged message(s) stay in Redis and are "
                "redelivered after the visibility timeout",
                len(self._delivered),
            )
        self._delivered.clear()
        self._delivered.restored = True  # as kombu marks it: later calls are no-ops
        return None

    def ack(self: Any, delivery_tag: Any) -> None:
        if not _detached(self):
            original_ack(self, delivery_tag)
            return
        _forget(self, delivery_tag, "acknowledged")

    def reject(self: Any, delivery_tag: Any, requeue: bool = False) -> None:
        if not _detached(self):
            original_reject(self, delivery_tag, requeue=requeue)
            return
        _forget(self, delivery_tag, "rejected")

    for name, method in (("restore_unacked_once", restore_unacked_once), ("ack", ack), ("reject", reject)):
        setattr(method, _MARK, True)
        setattr(qos_class, name, method)


def _forget(qos: Any, delivery_tag: Any, what: str) -> None:
    """A message finished on a channel whose connection is gone: it stays in Redis's ``unacked``
    hash and comes back after the visibility timeout, and its work, done, is not done twice (the
    inbox and the payment rows say it is finished)."""
    qos._delivered.pop(delivery_tag, None)
    log.warning(
        "message %s %s after the broker connection was lost: Redis redelivers it after the visibility timeout",
        delivery_tag,
        what,
    )
