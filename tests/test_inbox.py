"""The inbox (``reconciliation.inbox``): deliveries stored once with their repeats counted, and the lease that
makes a received row a unit of work only one worker holds. Real PostgreSQL, the module called directly; what
a killed worker leaves behind is ``tests/test_durable_work.py``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from reconciliation import inbox
from reconciliation.db import transaction
from reconciliation.models import InboxDelivery, InboxStatus
from schemas.messages import WebhookEnvelope
from tests.helpers import new_reference
from tests.test_durable_work import end_lease
from worker.runtime import Runtime

T0 = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


def envelope(body: str = "x=1") -> WebhookEnvelope:
    return WebhookEnvelope.model_validate({
        "schema": "payrecon.webhook/1", "provider": "cinetpay", "received_at": T0.isoformat(), "method": "POST",
        "path": "/notify", "headers": {"Content-Type": "text/plain"}, "body": body,
    })  # fmt: skip


def store(
    rt: Runtime, key: str, *, reference: str | None = None, status: InboxStatus = InboxStatus.RECEIVED,
    awaiting: bool = False, now: datetime = T0, body: str = "x=1",
) -> inbox.Stored:  # fmt: skip
    with transaction(rt.sessions) as session:
        return inbox.store(
            session, envelope(body), f'{{"body": "{body}"}}', dedupe_key=key, reference=reference, status=status,
            now=now, awaiting=awaiting,
        )  # fmt: skip


def row(rt: Runtime, inbox_id: int) -> InboxDelivery:
    with rt.sessions() as session:
        found = session.get(InboxDelivery, inbox_id)
        assert found is not None
        return found


def take(rt: Runtime, inbox_id: int, now: datetime, version: datetime | None = None) -> inbox.Work | None:
    with transaction(rt.sessions) as session:
        return inbox.take(session, inbox_id, now, version=version)


def test_a_repeat_is_counted_and_the_first_delivery_kept_byte_for_byte(rt: Runtime) -> None:
    first = store(rt, "k1", body="first")
    again = store(rt, "k1", body="second", now=T0 + timedelta(minutes=1))
    assert (first.is_new, again.is_new, again.id) == (True, False, first.id)
    kept = row(rt, first.id)
    assert (kept.body, kept.repeat_count, kept.first_seen_at, kept.last_seen_at) == (
        "first",
        1,
        T0,
        T0 + timedelta(minutes=1),
    )


def test_a_received_delivery_is_held_by_the_worker_that_stored_it_and_nothing_else_is_due(rt: Runtime) -> None:
    received = store(rt, "k1")
    quarantined = store(rt, "k2", status=InboxStatus.FORGED)
    assert row(rt, received.id).next_attempt_at == T0 + inbox.LEASE
    assert row(rt, quarantined.id).next_attempt_at is None
    assert take(rt, received.id, T0 + timedelta(seconds=30)) is None  # its storer holds it
    assert take(rt, quarantined.id, T0 + timedelta(days=1)) is None  # not work


def test_a_due_row_is_taken_once_for_a_lease_and_a_wake_up_may_come_a_little_early(rt: Runtime) -> None:
    stored = store(rt, "k1")
    due = T0 + inbox.LEASE
    early = take(rt, stored.id, due - timedelta(seconds=2))  # countdowns are rounded, clocks differ a little
    assert early is not None and early.lease_until == due - timedelta(seconds=2) + inbox.LEASE
    assert take(rt, stored.id, due) is None  # held by the first taker until its lease ends
    assert take(rt, stored.id, early.lease_until - timedelta(seconds=3)) is None  # 3 s early is too early


def test_a_message_naming_the_rows_schedule_takes_it_before_it_is_due_and_a_stale_one_does_not(rt: Runtime) -> None:
    stored = store(rt, "k1")
    version = T0 + inbox.LEASE
    assert take(rt, stored.id, T0 + timedelta(seconds=1), version=version - timedelta(seconds=5)) is None  # stale
    work = take(rt, stored.id, T0 + timedelta(seconds=1), version=version)
    assert work is not None and work.lease_until == T0 + timedelta(seconds=1) + inbox.LEASE


def test_putting_off_counts_failures_errors_and_deferrals_apart_only_while_held(rt: Runtime) -> None:
    stored = store(rt, "k1")
    work = take(rt, stored.id, T0 + inbox.LEASE)
    assert work is not None
    later = T0 + timedelta(hours=1)
    with transaction(rt.sessions) as session:
        assert inbox.schedule(session, work, later, "provider 503", failed=True, budget_slot="api") == later
    work = take(rt, stored.id, later)
    assert work is not None and (work.attempts, work.errors, work.deferrals, work.budget_slot) == (1, 0, 0, "api")
    with transaction(rt.sessions) as session:
        inbox.schedule(session, work, later + timedelta(hours=1), "a bug", errored=True)
    work = take(rt, stored.id, later + timedelta(hours=1))
    assert work is not None
    with transaction(rt.sessions) as session:
        inbox.schedule(session, work, later + timedelta(hours=2), "budget", deferred=True)
    kept = row(rt, stored.id)
    assert (kept.attempts, kept.errors, kept.deferrals, kept.detail) == (1, 1, 1, "budget")
    with transaction(rt.sessions) as session:  # that lease was given up when it was put off: no longer held
        assert inbox.schedule(session, work, later + timedelta(hours=9), "too late", failed=True) is None
    assert row(rt, stored.id).next_attempt_at == later + timedelta(hours=2)


def test_the_janitor_leases_due_rows_oldest_first_and_skips_those_not_due(rt: Runtime) -> None:
    ids = [store(rt, f"k{n}", now=T0 + timedelta(seconds=n)).id for n in range(3)]
    now = T0 + inbox.LEASE + timedelta(seconds=1)  # the first two are due
    with transaction(rt.sessions) as session:
        claimed = inbox.claim_due(session, now, limit=10)
    assert claimed == [(ids[0], now + inbox.LEASE), (ids[1], now + inbox.LEASE)]
    with transaction(rt.sessions) as session:
        assert inbox.claim_due(session, now + timedelta(seconds=5), limit=10) == [
            (ids[2], now + timedelta(seconds=5) + inbox.LEASE)
        ]


def test_a_registration_wakes_only_its_deliveries_waiting_to_be_authenticated(rt: Runtime) -> None:
    ref = new_reference("ORD")
    waiting = store(rt, "k1", reference=ref, awaiting=True)
    authenticated = store(rt, "k2", reference=ref)
    other = store(rt, "k3", reference=new_reference("ORD"), awaiting=True)
    now = T0 + timedelta(seconds=10)
    with transaction(rt.sessions) as session:
        assert inbox.wake(session, "cinetpay", ref, now) == [(waiting.id, now)]
    assert [row(rt, i).next_attempt_at for i in (waiting.id, authenticated.id, other.id)] == [
        now,
        T0 + inbox.LEASE,
        T0 + inbox.LEASE,
    ]


def test_an_answer_finishes_the_deliveries_that_came_before_it_was_asked(rt: Runtime) -> None:
    ref = new_reference()
    done = store(rt, "k1", reference=ref)
    earlier = store(rt, "k2", reference=ref)
    waiting = store(rt, "k3", reference=ref, awaiting=True)  # not authenticated: the answer cannot vouch for it
    after = store(rt, "k4", reference=ref, now=T0 + timedelta(minutes=5))  # arrived after the question
    with transaction(rt.sessions) as session:
        session.get(InboxDelivery, earlier.id).budget_slot = "api"  # type: ignore[union-attr]
    with transaction(rt.sessions) as session:
        finished = inbox.coalesce(
            session, "cinetpay", ref, asked_at=T0 + timedelta(minutes=1), done=done.id, detail="answered"
        )
    assert finished == [(earlier.id, "api")]
    assert [row(rt, i).status for i in (done.id, earlier.id, waiting.id, after.id)] == [
        InboxStatus.RECEIVED, InboxStatus.PROCESSED, InboxStatus.RECEIVED, InboxStatus.RECEIVED,
    ]  # fmt: skip


def test_a_given_up_delivery_is_reopened_once_with_its_counts_reset(rt: Runtime) -> None:
    stored = store(rt, "k1")
    with transaction(rt.sessions) as session:
        session.get(InboxDelivery, stored.id).attempts = 7  # type: ignore[union-attr]
        inbox.mark(session, stored.id, InboxStatus.FAILED, "gave up")
    now = T0 + timedelta(days=2)
    with transaction(rt.sessions) as session:
        assert inbox.reopen(session, stored.id, now)
        assert not inbox.reopen(session, stored.id, now)  # a concurrent repeat does not reopen it again
    kept = row(rt, stored.id)
    assert (kept.status, kept.attempts, kept.opened_at, kept.next_attempt_at) == (
        InboxStatus.RECEIVED,
        0,
        now,
        now + inbox.LEASE,
    )


def test_a_worker_that_outlived_its_lease_cannot_overwrite_the_one_that_took_over(rt: Runtime) -> None:
    a_day_ago = datetime.now(UTC) - timedelta(days=1)
    inbox_id = store(rt, "k1", now=a_day_ago).id  # by a worker that died holding it (its lease is over)
    with rt.sessions.begin() as session:
        (slow,) = [inbox.take(session, inbox_id, datetime.now(UTC) + inbox.LEASE * 2)]
    assert slow is not None
    end_lease(rt, inbox_id)
    with rt.sessions.begin() as session:
        taken_over = inbox.take(session, inbox_id, datetime.now(UTC))
        assert taken_over is not None
        assert not inbox.finish(session, slow, InboxStatus.FORGED, "too late")  # the slow one's verdict is ignored
        assert inbox.finish(session, taken_over, InboxStatus.PROCESSED, "done")
