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
from collections.abc import Sequence
from typing import Any

from kombu.transport import redis as redis_transport
from kombu.transport import virtual

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
        removed = self.__dict__.get(_REMOVED)
        if removed and delivery_tag in removed:  # acknowledged with its batch already (``ack_together``)
            removed.discard(delivery_tag)
            return
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


#: The attribute of a Redis QoS holding the delivery tags ``ack_together`` acknowledged (see there).
_REMOVED = "_payrecon_acked_together"


def ack_together(messages: Sequence[Any]) -> None:
    """Acknowledge many messages of a Redis channel in one round trip: their records removed from
    ``unacked`` and ``unacked_index`` in one pipeline (kombu's ``QoS.ack`` sends one per message), then
    dropped from the channel's bookkeeping as ``QoS.ack`` drops them. Runs on the consumer's event loop,
    where kombu acknowledges. Each message's own ``ack`` (Celery's callback, still called afterwards: it
    marks the message acknowledged and restores the prefetch after a reconnection) then finds its record
    gone and sends nothing. A message of another transport, of a channel whose connection is gone, or
    already acknowledged is left to its own ``ack``; so are those of a pipeline that failed (each then
    tries alone, and what stays in ``unacked`` comes back after the visibility timeout, as before)."""
    if not getattr(redis_transport.QoS.ack, _MARK, False):
        return  # without ``apply``'s QoS.ack, each message's own ack would remove its record again
    channels: dict[int, tuple[Any, list[Any]]] = {}
    for message in messages:
        channel = message.channel
        qos = getattr(channel, "qos", None) if channel is not None else None
        if not isinstance(qos, redis_transport.QoS) or _detached(qos) or message.acknowledged:
            continue
        consumer_tag = message.delivery_info.get("consumer_tag")
        if channel.no_ack_consumers is not None and consumer_tag in channel.no_ack_consumers:
            continue  # nothing to acknowledge (kombu's Message.ack does nothing)
        channels.setdefault(id(qos), (qos, []))[1].append(message.delivery_tag)
    for qos, tags in channels.values():
        try:
            with qos.pipe_or_acquire() as pipe:
                for tag in tags:
                    qos._remove_from_indices(tag, pipe)
                pipe.execute()
        except qos.channel.connection_errors as exc:
            log.warning("%d acknowledgement(s) could not be sent together (%r): each is sent alone", len(tags), exc)
            continue
        removed = qos.__dict__.setdefault(_REMOVED, set())
        for tag in tags:
            _VIRTUAL_QOS.ack(qos, tag)  # off the channel's books (what QoS.ack does after its pipeline)
            removed.add(tag)


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


# --------------------------------------------------------------------------- a fetch that loses nothing

#: Where a message waits between leaving its queue and being recorded as unacknowledged.
INCOMING = ":incoming"
#: How long the worker waits on one queue key once a whole round of keys was empty (seconds).
KEY_WAIT = 0.1
_RELIABLE = "_payrecon_reliable_fetch"
_kombu: Any = redis_transport  # its helpers (loads, bytes_to_str, Empty, monotonic), untyped


_ORIGINAL: dict[str, Any] = {}
_VIRTUAL_QOS: Any = virtual.QoS  # kombu's in-memory bookkeeping of a delivered message (untyped)
#: KEYS incoming list, queue; ARGV the item: back on the queue's consuming end if still incoming.
_PUT_BACK = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


#: KEYS queue, unacked hash, unacked index; ARGV at most how many, now. Takes messages off the queue's
#: consuming end and records each as kombu's ``QoS.append`` would (``unacked[tag] = [raw, exchange,
#: routing_key]``, scored by the time taken), in one step: no moment where a message is in neither.
#: Something that is not a kombu message (not JSON, no delivery tag) is put back and ends the take.
_TAKE = """
local taken = {}
for _ = 1, tonumber(ARGV[1]) do
  local item = redis.call('RPOP', KEYS[1])
  if not item then break end
  local ok, message = pcall(cjson.decode, item)
  local properties = ok and type(message) == 'table' and message['properties']
  local tag = type(properties) == 'table' and properties['delivery_tag']
  local info = type(properties) == 'table' and properties['delivery_info']
  if type(tag) ~= 'string' or type(info) ~= 'table' then
    redis.call('RPUSH', KEYS[1], item)
    break
  end
  redis.call('ZADD', KEYS[3], ARGV[2], tag)
  redis.call('HSET', KEYS[2], tag,
    '[' .. item .. ',' .. cjson.encode(info['exchange'] or '') .. ',' .. cjson.encode(info['routing_key'] or '') .. ']')
  taken[#taken + 1] = item
end
return taken
"""
#: The most messages one take moves (the prefetch window bounds it first).
TAKE_MAX = 200


def apply_reliable_fetch() -> None:
    """Make kombu's Redis fetch lose nothing when a worker dies (idempotent).

    kombu takes a message with ``BRPOP`` and only then records it in its ``unacked`` hash (from
    which the visibility timeout brings it back): a worker SIGKILLed in between loses the message
    for good (kombu#305, celery#7950; the storm lost 1-3 registrations per 3,000 payments that way,
    with 32 threads competing with the event loop for the GIL). Here the worker *moves* it instead,
    ``BLMOVE queue queue:incoming``, so that it is always somewhere in Redis: recorded in
    ``unacked`` first, then removed from ``:incoming``. The periodic restore sweep puts back on its
    queue whatever it finds in an ``:incoming`` list twice in a row (a worker died holding it). The
    price is a rare second delivery, which payrecon's tasks take (they are idempotent).

    A move watches one list at a time, so the worker visits the queue keys (queues x priority
    steps) in turn without waiting (``LMOVE``), and only after a whole round found nothing waits
    ``KEY_WAIT`` on one (``BLMOVE``; the one that last had messages): under load every queue gets its
    turn, and a new message waits at most about ``KEY_WAIT`` (none on the list waited on). An idle
    worker spent 0.6 % of a core on it (kombu's BRPOP: 0.1 %; measured with 32 threads, 3 queues and
    kombu's 4 priority steps) before its wait moved to the list that last had messages, which adds one
    visit to each round of twelve (not measured since). Needs Redis 6.2 or newer; without a
    ``global_keyprefix`` (payrecon sets none).

    Under load a visit takes many messages at once: a script (``_TAKE``) moves up to as many as the
    prefetch window has room for off the queue and records each in ``unacked`` as kombu would, in one
    step and one round trip, where a message each cost three (the move, kombu's record, the removal
    from ``:incoming``). Only the wait on an empty queue (``BLMOVE``) still goes one message at a time;
    it waits on the list that last had messages, where the next one most likely comes.
    """
    channel_class: Any = redis_transport.Channel
    qos_class: Any = redis_transport.QoS
    if getattr(channel_class._brpop_start, _RELIABLE, False):
        return
    _ORIGINAL.update(
        start=channel_class._brpop_start,
        read=channel_class._brpop_read,
        restore=qos_class.restore_visible,
        append=qos_class.append,
        consume=channel_class.basic_consume,
    )
    for cls, name, method in (
        (channel_class, "_brpop_start", _brpop_start),
        (channel_class, "_brpop_read", _brpop_read),
        (qos_class, "restore_visible", _restore_visible),
        (qos_class, "append", _append),
        (channel_class, "basic_consume", _basic_consume),
    ):
        setattr(method, _RELIABLE, True)
        setattr(cls, name, method)


def _brpop_start(self: Any, timeout: Any = None) -> None:
    if self.global_keyprefix:
        _ORIGINAL["start"](self, timeout)
        return
    keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in self.active_queues]
    if not keys:
        return
    position = getattr(self, "_payrecon_key", 0) % len(keys)
    empty = getattr(self, "_payrecon_empty", 0)
    key = keys[position]
    self._payrecon_key = position + 1  # round robin: every queue gets its turn under load
    self._payrecon_moving = key
    self._in_poll = self.client.connection
    self._brpop_sent_at = _kombu.monotonic()
    if empty < len(keys) and key not in getattr(self, "_payrecon_acked", ()):
        # Not a whole round of empty lists yet: take without waiting. A queue consumed without
        # acknowledgements (Celery's replies) is not recorded as unacknowledged: one message at a time.
        self.client.connection.send_command("LMOVE", key, key + INCOMING, "RIGHT", "LEFT")
    elif empty < len(keys):  # the same for the queues of acknowledged messages, many at a time
        room = self.qos.can_consume_max_estimate()
        count = min(room if room else TAKE_MAX, TAKE_MAX)
        self._payrecon_taking = True
        self.client.connection.send_command(
            "EVAL", _TAKE, 3, key, self.unacked_key, self.unacked_index_key, count, repr(_kombu.time())
        )
    else:  # everything was empty: wait a little, then look at all of them again
        self._payrecon_empty = 0
        # The wait is on the list that last had messages (webhooks, in practice): a message there is taken
        # the moment it arrives. Waiting on the round's next list instead (always the same one: a priority
        # list, mostly empty) held a message of a worker with little to do for up to KEY_WAIT (half the
        # load of bench/throughput.py: enqueue->settled p50 330-350 -> 290-315 ms).
        hot = getattr(self, "_payrecon_hot", None)
        if hot in keys and hot != key:
            key = self._payrecon_moving = hot
            # Waiting elsewhere is no visit to the round's list: the next round visits every list, that
            # one too, so a message on another list still waits at most about KEY_WAIT.
            self._payrecon_empty = -1
        self.client.connection.send_command("BLMOVE", key, key + INCOMING, "RIGHT", "LEFT", KEY_WAIT)


def _brpop_read(self: Any, **options: Any) -> bool:
    key = getattr(self, "_payrecon_moving", None)
    if key is None:
        return bool(_ORIGINAL["read"](self, **options))
    self._payrecon_moving = None
    taking, self._payrecon_taking = getattr(self, "_payrecon_taking", False), False
    try:
        try:
            item = self.client.parse_response(self.client.connection, "EVAL" if taking else "LMOVE", **options)
        except self.connection_errors:
            self.client.connection.disconnect()
            raise
        if taking:
            return _deliver_taken(self, key, item)
        if not item:
            self._payrecon_empty = getattr(self, "_payrecon_empty", 0) + 1
            raise _kombu.Empty()
        self._payrecon_empty = 0
        self._payrecon_hot = key
        queue = _kombu.bytes_to_str(key).rsplit(self.sep, 1)[0]
        self.connection._deliver(_kombu.loads(_kombu.bytes_to_str(item)), queue)
        # Recorded in unacked by now (QoS.append): it may leave the incoming list.
        with self.conn_or_acquire() as client:
            client.lrem(key + INCOMING, 1, item)
        return True
    finally:
        self._in_poll = None
        self._flush_brpop_reauth()


def _basic_consume(self: Any, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
    """kombu's ``basic_consume``, noting the keys of a queue whose messages are acknowledged: only those
    are taken by ``_TAKE`` (which records every message it takes as unacknowledged)."""
    acked: set[str] = self.__dict__.setdefault("_payrecon_acked", set())
    keys = {self._q_for_pri(queue, pri) for pri in self.priority_steps}
    if no_ack:
        acked.difference_update(keys)
    else:
        acked.update(keys)
    return _ORIGINAL["consume"](self, queue, no_ack, *args, **kwargs)


def _deliver_taken(channel: Any, key: str, items: list[bytes]) -> bool:
    """Hand what ``_TAKE`` moved to the consumer, one message after the other; each is already in
    ``unacked`` (``_append`` does not record it twice). If handing one fails, the rest are in
    ``unacked`` too: they come back after the visibility timeout, as after a worker's death."""
    if not items:
        channel._payrecon_empty = getattr(channel, "_payrecon_empty", 0) + 1
        raise _kombu.Empty()
    channel._payrecon_empty = 0
    channel._payrecon_hot = key
    queue = _kombu.bytes_to_str(key).rsplit(channel.sep, 1)[0]
    channel._payrecon_recorded = True
    try:
        for item in items:
            channel.connection._deliver(_kombu.loads(_kombu.bytes_to_str(item)), queue)
    finally:
        channel._payrecon_recorded = False
    return True


def _append(self: Any, message: Any, delivery_tag: Any) -> None:
    """kombu's ``QoS.append``, less the write to ``unacked`` for a message ``_TAKE`` recorded."""
    if getattr(self.channel, "_payrecon_recorded", False):
        _VIRTUAL_QOS.append(self, message, delivery_tag)
        return
    _ORIGINAL["append"](self, message, delivery_tag)


def _restore_visible(self: Any, start: int = 0, num: int = 10, interval: int = 10) -> Any:
    result = _ORIGINAL["restore"](self, start, num, interval)
    _restore_incoming(self.channel)
    return result


def _restore_incoming(channel: Any) -> None:
    """Put back on its queue what a dead worker left in an incoming list: items seen there at the
    previous sweep too (a live worker moves an item out within milliseconds)."""
    seen: dict[str, set[bytes]] = getattr(channel, "_payrecon_incoming_seen", {})
    now: dict[str, set[bytes]] = {}
    try:
        with channel.conn_or_acquire() as client:
            for queue in channel.active_queues:
                for pri in channel.priority_steps:
                    key = channel._q_for_pri(queue, pri)
                    items = set(client.lrange(key + INCOMING, 0, -1))
                    for item in items & seen.get(key, set()):
                        # Atomic, and only by the sweep that removed it: two workers sweeping at once
                        # must not both put it back.
                        if client.eval(_PUT_BACK, 2, key + INCOMING, key, item):
                            log.warning("a message a dead worker had taken from %s is back on its queue", queue)
                    now[key] = items - seen.get(key, set())
    except channel.connection_errors:
        return
    channel._payrecon_incoming_seen = now
