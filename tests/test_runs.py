"""A reconciliation run (``reconciliation.nightly.runs``): its business day, its steps (classify, heal, flag, refunds,
fees, payouts) and how it is closed. Real PostgreSQL; what each reference is classified as is
``tests/test_matching.py``, the whole nightly reconciliation ``tests/test_reconciliation.py``."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from reconciliation.models import FlagKind, Payment, PaymentStatus, ReconCase, ReconClass, ReconRun, SubscriptionGrant
from reconciliation.nightly import runs
from tests.helpers import new_reference
from tests.test_reconciliation import DAY, classes, line, payment, policy
from worker.runtime import Runtime


def run_row(rt: Runtime, run_id: int) -> ReconRun:
    with rt.sessions() as session:
        found = session.get(ReconRun, run_id)
        assert found is not None
        return found


@pytest.mark.parametrize(("day", "hours"), [(date(2026, 3, 29), 23), (date(2026, 10, 25), 25), (DAY, 24)])
def test_a_business_day_is_23_or_25_hours_on_a_daylight_saving_change(day: date, hours: int) -> None:
    start, end = runs.business_window(day, ZoneInfo("Europe/Paris"))
    assert end - start == timedelta(hours=hours)
    assert start.tzinfo is UTC and start.astimezone(ZoneInfo("Europe/Paris")).hour == 0


def test_a_run_counts_every_class_zeros_included(rt: Runtime) -> None:
    ref = new_reference()
    payment(rt, ref, PaymentStatus.SUCCEEDED)
    line(rt, ref, amount=4000)
    run = run_row(rt, runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt)))
    assert run.counts == {cls.value: int(cls is ReconClass.AMOUNT_MISMATCH) for cls in ReconClass}
    assert (run.status, run.error) == ("succeeded", None) and run.finished_at is not None


def test_a_step_that_fails_closes_the_run_failed_with_why_and_raises(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> int:
        raise ZeroDivisionError("a bug in a step")

    monkeypatch.setattr(runs, "post_payouts", broken)  # the only stand-in: a bug cannot be made real
    ref = new_reference()
    payment(rt, ref, PaymentStatus.SUCCEEDED)
    line(rt, ref, amount=4000)
    with pytest.raises(ZeroDivisionError):
        runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))
    with rt.sessions() as session:
        (run,) = session.scalars(select(ReconRun)).all()
        open_cases = session.scalars(select(ReconCase)).all()
    assert (run.status, run.error) == ("failed", "ZeroDivisionError: a bug in a step")
    assert run.counts["amount_mismatch"] == 1 and open_cases == []  # its items are kept, no case is opened


def test_a_run_whose_lock_cannot_be_taken_is_closed_failed_not_left_running(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's lock needs a connection of its own: PostgreSQL refusing it (too many clients, gone meanwhile)
    closes the run failed, saying why, rather than leaving it running until a nightly job takes it for abandoned."""
    from sqlalchemy.exc import OperationalError

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("connect", {}, Exception("FATAL: sorry, too many clients already"))

    monkeypatch.setattr(runs, "create_engine", refused)  # the one stand-in: a refused connection on demand
    with pytest.raises(OperationalError):
        runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))
    with rt.sessions() as session:
        (run,) = session.scalars(select(ReconRun)).all()
    assert run.status == "failed" and "its lock could not be taken" in (run.error or "") and "too many" in run.error


def test_status_checks_without_an_answer_keep_the_run_but_mark_it_failed(rt: Runtime) -> None:
    ref = new_reference()
    payment(rt, ref, PaymentStatus.SUCCEEDED)
    line(rt, ref)
    run_id = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt), failures=2)
    run = run_row(rt, run_id)
    assert run.status == "failed" and run.error is not None and run.error.startswith("2 status check(s)")
    assert classes(rt, run_id) == {ref: "matched"}


def test_a_statement_in_another_currency_flags_the_payment_once(rt: Runtime) -> None:
    ref = new_reference()
    payment(rt, ref, PaymentStatus.SUCCEEDED)
    line(rt, ref, currency="XAF")
    first = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))
    runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt), trigger="rerun")
    with rt.sessions() as session:
        paid = session.scalars(select(Payment).where(Payment.reference == ref)).one()
        flags = [(f.kind, f.detail) for f in paid.flags]
    said = f"the statement of {DAY} (run {first}) reports 5000 XAF, we recorded 5000 XOF"
    assert flags == [(FlagKind.CURRENCY_MISMATCH, said)]


def test_business_day_in_a_zone_that_is_not_utc(rt: Runtime) -> None:
    lagos = ZoneInfo("Africa/Lagos")  # UTC+1: the day starts at 23:00 UTC the evening before
    before, inside, after = new_reference(), new_reference(), new_reference()
    payment(rt, before, PaymentStatus.SUCCEEDED, at=datetime(2026, 11, 19, 22, 59, tzinfo=UTC))
    payment(rt, inside, PaymentStatus.SUCCEEDED, at=datetime(2026, 11, 19, 23, 1, tzinfo=UTC))
    payment(rt, after, PaymentStatus.SUCCEEDED, at=datetime(2026, 11, 20, 23, 1, tzinfo=UTC))
    run_id = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt, tz=lagos))
    assert set(classes(rt, run_id)) == {inside}
    assert runs.business_window(DAY, lagos) == (
        datetime(2026, 11, 19, 23, tzinfo=UTC),
        datetime(2026, 11, 20, 23, tzinfo=UTC),
    )


def test_rerun_is_a_new_run_after_the_previous_and_heals_once(rt: Runtime) -> None:
    ref = new_reference()
    payment(rt, ref, PaymentStatus.PENDING)
    line(rt, ref)
    first = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))
    second = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt), trigger="rerun")
    assert classes(rt, first)[ref] == "missing_in_ledger"
    assert classes(rt, second)[ref] == "matched"  # healed by the first run
    with rt.sessions() as session:
        assert session.get(ReconRun, second).previous_run_id == first  # type: ignore[union-attr]
        assert len(session.scalars(select(SubscriptionGrant)).all()) == 1


def test_runs_are_measured(rt: Runtime) -> None:
    from prometheus_client import REGISTRY

    import worker.observability  # noqa: F401 - subscribes the metrics to the facts

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = sample("payrecon_reconciliation_runs_total", provider="cinetpay", status="succeeded")
    mismatches = sample("payrecon_reconciliation_items_total", provider="cinetpay", **{"class": "amount_mismatch"})
    ref = new_reference()
    payment(rt, ref, PaymentStatus.SUCCEEDED)
    line(rt, ref, amount=1)
    runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))
    assert sample("payrecon_reconciliation_runs_total", provider="cinetpay", status="succeeded") == before + 1
    assert (
        sample("payrecon_reconciliation_items_total", provider="cinetpay", **{"class": "amount_mismatch"})
        == mismatches + 1
    )
    # Read from the runs at scrape time (a restarted worker, or a run made by hand, still shows it).
    from worker.observability import StateCollector

    gauges = {
        (family.name, s.labels.get("provider")): s.value
        for family in StateCollector(rt.sessions, None).collect()
        for s in family.samples
    }
    last = gauges["payrecon_reconciliation_last_success_timestamp_seconds", "cinetpay"]
    assert abs(last - datetime.now(UTC).timestamp()) < 60
