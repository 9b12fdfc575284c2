"""The retry schedules (``reconciliation.retries``): delays, jitter, open and bounded schedules."""

from __future__ import annotations

import pytest

from reconciliation import retries
from reconciliation.retries import Schedule


def test_retry_delay_grows_and_is_jittered() -> None:
    first = [retries.PROVIDER_FAILURE.delay(0) for _ in range(50)]
    assert all(4.0 <= d <= 6.0 for d in first) and len(set(first)) > 1
    assert 720 <= retries.PROVIDER_FAILURE.delay(99) <= 1080


def test_an_open_schedule_repeats_its_last_delay_and_is_never_spent() -> None:
    schedule = Schedule((1, 2, 5, 10), jitter=0.0)
    assert [schedule.delay(n) for n in range(6)] == [1, 2, 5, 10, 10, 10]
    assert not schedule.spent(1000)


def test_a_bounded_schedule_is_spent_after_its_last_delay() -> None:
    schedule = Schedule((60, 120), repeat_last=False)
    assert [schedule.spent(n) for n in range(4)] == [False, False, True, True]
    assert 96 <= schedule.delay(1) <= 144


def test_jitter_stays_within_its_fraction() -> None:
    schedule = Schedule((100,), jitter=0.5)
    delays = [schedule.delay(0) for _ in range(200)]
    assert all(50 <= d <= 150 for d in delays) and max(delays) - min(delays) > 10


def test_a_schedule_without_jitter_is_exact() -> None:
    assert {retries.AWAIT_REGISTRATION.delay(0) for _ in range(20)} == {30}


@pytest.mark.parametrize("bad", [{"delays": ()}, {"delays": (5, 0)}, {"delays": (5,), "jitter": 1.0}])
def test_a_schedule_refuses_what_would_not_wait(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="positive delays"):
        Schedule(**bad)  # type: ignore[arg-type]


def test_the_event_schedule_takes_the_configured_delays_and_stays_bounded_and_jittered() -> None:
    schedule = retries.event_delivery((60,))
    assert schedule.delays == (60,) and schedule.spent(1) and schedule.jitter == retries.EVENT_DELIVERY.jitter
    assert retries.EVENT_DELIVERY.spent(len(retries.EVENT_DELIVERY.delays))
