"""Every retry schedule of payrecon, stated once, as data.

A ``Schedule`` is the delays (seconds) before each retry: the n-th retry waits the n-th delay, each delay
jittered by ±``jitter`` (a fraction) so that work put off together does not come back together. An open
schedule repeats its last delay for as long as the work needs (something else says when to stop: the
outage's end, a provider's give-up window); a bounded one is spent after its last delay (the work is then
given up).

Waits that are not retry schedules live with what they wait on: a pending payment's re-checks are part of
its provider's trust profile (``providers/profiles.py``, ``PAYRECON_RECHECK_SCHEDULE``; not jittered), the
call budget says itself how long to wait (``worker/budget.py``), and the few retries inside one provider
call are tenacity's (``providers/http.RetryPolicy``: exponential with full jitter, seconds).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

#: ±20 %: what every jittered schedule here uses.
JITTER = 0.2


@dataclass(frozen=True, slots=True)
class Schedule:
    delays: tuple[float, ...]
    jitter: float = JITTER
    #: False: spent after the last delay (``spent``); True: the last delay repeats.
    repeat_last: bool = True

    def __post_init__(self) -> None:
        if not self.delays or any(d <= 0 for d in self.delays) or not 0 <= self.jitter < 1:
            raise ValueError(f"a schedule needs positive delays and a jitter in [0, 1): {self}")

    def spent(self, retries: int) -> bool:
        """Whether a bounded schedule has no delay left after ``retries`` retries."""
        return not self.repeat_last and retries >= len(self.delays)

    def delay(self, retries: int) -> float:
        """Seconds before the next try, after ``retries`` retries (the last delay once past the end)."""
        base = self.delays[min(retries, len(self.delays) - 1)]
        if not self.jitter:
            return base
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)  # noqa: S311 - jitter, not security


#: A contract message whose input is not stored yet while PostgreSQL is unreachable (``worker.tasks``): the
#: message is the input's only copy, so it is retried for as long as the outage lasts.
DB_OUTAGE = Schedule((1, 2, 5, 10))
#: A delivery whose provider did not answer its verification (``worker.pipeline``): asked again until the
#: provider's give-up window (its trust profile) has passed, then dead-lettered.
PROVIDER_FAILURE = Schedule((5, 15, 30, 60, 120, 300, 600, 900))
#: A delivery that waits for its registration to be authenticated (``worker.pipeline``): until
#: ``PAYRECON_AWAIT_REGISTRATION`` has passed, then quarantined. Not jittered: a registration wakes it anyway.
AWAIT_REGISTRATION = Schedule((30, 60, 120, 300, 600, 900), jitter=0.0)
#: An event to a merchant app (``reconciliation.outbox``; Kill Bill's: 15 min, 30 min, 2 h, 12 h, 1 d), then
#: given up and dead-lettered; ``PAYRECON_EVENTS_RETRY_SCHEDULE`` replaces the delays.
EVENT_DELIVERY = Schedule((900, 1800, 7200, 43200, 86400), repeat_last=False)
#: Seconds a delivery waits when the call budget's store (Redis) does not answer: one short wait, again each time.
BUDGET_OUTAGE_WAIT = 5.0


def event_delivery(delays: tuple[float, ...]) -> Schedule:
    """``EVENT_DELIVERY`` with the configured delays."""
    return replace(EVENT_DELIVERY, delays=delays)
