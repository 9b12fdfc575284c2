"""Provider call budget: token buckets shared by every worker process and machine.

A bucket holds at most ``burst`` tokens and refills at ``rate`` tokens per second. Taking
a token either succeeds now or says how long to wait: an exhausted budget *delays* work
(the caller schedules it again), it never drops it.

``reserve`` takes a token even from an empty bucket: the balance goes below zero and the
caller is told when its token will exist. Each waiting caller so holds its own slot, in
arrival order, and runs once at that slot, instead of every waiter asking again at the next
refill and most of them losing (300 deferred callbacks made 12,000 task runs in 73 s that way).
Reservations reach at most MAX_BACKLOG_SECONDS ahead, and a slot not used (the work finished
another way) is given back with ``release``.

The store being unreachable raises :class:`BudgetUnavailable`: the caller waits, as for an
exhausted budget (an outage is a wait, never a dead letter).

On Redis the bucket is one hash updated by a Lua script (atomic, using the Redis server's
clock so that machines with skewed clocks agree). The embedded demo, whose broker is not
Redis, uses an in-process bucket instead: a budget per worker process, not per fleet.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

import redis

KEY_PREFIX = "payrecon:budget:"

# KEYS[1] bucket; ARGV rate (tokens/s), burst, mode, backlog, count. Modes:
# "take": a token now, or the wait until one is free (nothing taken);
# "reserve": a token now or in the future, unless the bucket is already ``backlog`` tokens below
#   zero (then, as "take", the wait until one is free and nothing reserved);
# "release": give back a token taken or reserved and not used (never above ``burst``).
# ``count`` times in a row (one caller after the other, in one step). Returns {wait in seconds as a
# string, 1 if the token is the caller's (now or after the wait)} for each, one after the other.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local mode = ARGV[3]
local backlog = tonumber(ARGV[4])
local count = tonumber(ARGV[5] or '1')
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then tokens = burst; ts = now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local out = {}
for i = 1, count do
  local wait = 0
  local own = 1
  if mode == 'release' then
    tokens = math.min(burst, tokens + 1)
  elseif tokens >= 1 then
    tokens = tokens - 1
  elseif mode == 'reserve' and tokens - 1 >= -backlog then
    tokens = tokens - 1
    wait = -tokens / rate
  else
    wait = (1 - tokens) / rate
    own = 0
  end
  out[2 * i - 1] = tostring(wait)
  out[2 * i] = own
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil((burst - math.min(tokens, 0)) / rate) + 60)
return out
"""

#: How far ahead the budget hands out reservations, in seconds of its rate: beyond that a caller
#: waits without a slot and asks again (a flood of forged callbacks cannot push real ones back
#: further than this).
MAX_BACKLOG_SECONDS = 600.0


def backlog(rate: float) -> float:
    return max(1.0, rate * MAX_BACKLOG_SECONDS)


class BudgetUnavailable(Exception):
    """The budget's store did not answer: wait and ask again."""


class Budget(Protocol):
    def take(self, bucket: str, rate: float, burst: int) -> float:
        """Take one token from ``bucket``: 0.0 if taken, else the seconds until one is free."""
        ...

    def reserve(self, bucket: str, rate: float, burst: int) -> tuple[float, bool]:
        """Take one token from ``bucket`` now or in the future: (seconds to wait, whether the token is
        the caller's then). Not the caller's when the bucket's backlog is full: ask again after the wait."""
        ...

    def release(self, bucket: str, rate: float, burst: int) -> None:
        """Give back a token taken or reserved and not used."""
        ...

    def reserve_many(self, bucket: str, rate: float, burst: int, count: int) -> list[tuple[float, bool]]:
        """``reserve`` for ``count`` callers one after the other, in one step."""
        ...

    def release_many(self, bucket: str, rate: float, burst: int, count: int) -> None:
        """``release`` of ``count`` tokens, in one step."""
        ...


class RedisBudget:
    """The fleet-wide budget (production, tests)."""

    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._take = self._redis.register_script(_TAKE)

    def take(self, bucket: str, rate: float, burst: int) -> float:
        return self._call(bucket, rate, burst, "take")[0]

    def reserve(self, bucket: str, rate: float, burst: int) -> tuple[float, bool]:
        return self._call(bucket, rate, burst, "reserve")

    def release(self, bucket: str, rate: float, burst: int) -> None:
        self._call(bucket, rate, burst, "release")

    def reserve_many(self, bucket: str, rate: float, burst: int, count: int) -> list[tuple[float, bool]]:
        return self._call_many(bucket, rate, burst, "reserve", count)

    def release_many(self, bucket: str, rate: float, burst: int, count: int) -> None:
        self._call_many(bucket, rate, burst, "release", count)

    def _call(self, bucket: str, rate: float, burst: int, mode: str) -> tuple[float, bool]:
        return self._call_many(bucket, rate, burst, mode, 1)[0]

    def _call_many(self, bucket: str, rate: float, burst: int, mode: str, count: int) -> list[tuple[float, bool]]:
        try:
            out = self._take(keys=[KEY_PREFIX + bucket], args=[rate, burst, mode, backlog(rate), count])
        except redis.exceptions.NoScriptError:
            raise
        except redis.RedisError as exc:  # unreachable, read-only after a failover, out of memory, ...
            raise BudgetUnavailable(f"call budget store unavailable: {type(exc).__name__}: {exc}"[:300]) from exc
        return [(float(out[i]), bool(out[i + 1])) for i in range(0, len(out), 2)]

    def reset(self, bucket: str) -> None:
        self._redis.delete(KEY_PREFIX + bucket)

    def close(self) -> None:
        self._redis.close()


class LocalBudget:
    """A per-process budget for the embedded demo (no Redis)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, bucket: str, rate: float, burst: int) -> float:
        return self._take(bucket, rate, burst, "take")[0]

    def reserve(self, bucket: str, rate: float, burst: int) -> tuple[float, bool]:
        return self._take(bucket, rate, burst, "reserve")

    def release(self, bucket: str, rate: float, burst: int) -> None:
        self._take(bucket, rate, burst, "release")

    def reserve_many(self, bucket: str, rate: float, burst: int, count: int) -> list[tuple[float, bool]]:
        with self._lock:  # one step: no other caller in between
            return [self._take(bucket, rate, burst, "reserve") for _ in range(count)]

    def release_many(self, bucket: str, rate: float, burst: int, count: int) -> None:
        with self._lock:
            for _ in range(count):
                self._take(bucket, rate, burst, "release")

    def _take(self, bucket: str, rate: float, burst: int, mode: str) -> tuple[float, bool]:
        """The Lua script's rules (above), in process."""
        with self._lock:
            now = self._clock()
            tokens, ts = self._buckets.get(bucket, (float(burst), now))
            tokens = min(float(burst), tokens + max(0.0, now - ts) * rate)
            wait, own = 0.0, True
            if mode == "release":
                tokens = min(float(burst), tokens + 1)
            elif tokens >= 1:
                tokens -= 1
            elif mode == "reserve" and tokens - 1 >= -backlog(rate):
                tokens -= 1
                wait = -tokens / rate
            else:
                wait, own = (1 - tokens) / rate, False
            self._buckets[bucket] = (tokens, now)
            return wait, own

    def close(self) -> None:
        """Nothing to release."""


def for_broker(broker_url: str, redis_url: str | None = None) -> RedisBudget | LocalBudget:
    """The Redis budget when a Redis is known (``PAYRECON_REDIS_URL`` or a Redis broker)."""
    url = redis_url or (broker_url if broker_url.startswith(("redis://", "rediss://")) else None)
    return RedisBudget(url) if url else LocalBudget()


def rounded_wait(seconds: float) -> float:
    """A wait worth scheduling: at least 50 ms, to the next 10 ms."""
    return max(0.05, math.ceil(seconds * 100) / 100)
