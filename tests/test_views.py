"""Read models (``reconciliation.views``): what ``payments show``, ``subscriptions show``, the demo's summary
and the health gauges read. Real PostgreSQL, the module called directly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import update

from reconciliation import deadletters, subscriptions, views
from reconciliation.db import transaction
from reconciliation.models import Payment, PaymentStatus, Plan, ReconRun
from reconciliation.nightly import runs
from tests.helpers import new_reference, registration
from tests.test_reconciliation import DAY, line, payment, policy
from worker import pipeline
from worker.runtime import Runtime

NOW = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
ABIDJAN = ZoneInfo("Africa/Abidjan")


def test_a_reference_is_found_at_every_provider_or_at_the_one_named(rt: Runtime) -> None:
    ref = new_reference()
    for provider in ("wave", "cinetpay"):
        pipeline.register_payment(rt, registration(ref, provider=provider))
    pipeline.register_payment(rt, registration(new_reference()))
    with rt.sessions() as session:
        assert [p.provider for p in views.find_payments(session, ref)] == ["cinetpay", "wave"]
        assert [p.provider for p in views.find_payments(session, ref, "wave")] == ["wave"]
        assert views.find_payments(session, "TXN-NOT-THERE") == []


def test_a_payment_not_paid_says_nothing_of_a_confirmed_amount_and_has_no_journal_grant_or_evidence(
    rt: Runtime,
) -> None:
    ref = new_reference()
    payment(rt, ref, PaymentStatus.PENDING)
    with rt.sessions() as session:
        (found,) = views.find_payments(session, ref)
        shown = views.payment_detail(session, found)
    assert (shown["status"], shown["amount_confirmed_by_provider"], shown["deliveries"], shown["grant"]) == (
        "pending",
        None,
        [],
        None,
    )
    assert shown["journals"] == [] and shown["reconciliation"] == []


def test_access_lasts_through_the_plans_grace_and_not_a_moment_longer(rt: Runtime) -> None:
    with transaction(rt.sessions) as session:
        session.execute(update(Plan).where(Plan.code == "depannage-monthly").values(grace_days=3))
        grant = subscriptions.grant_manual(
            session, "tech-7", "depannage-monthly", 1, reason="goodwill", by="ops", now=NOW, tz=ABIDJAN
        )
        subscriptions.grant_manual(
            session, "tech-7", "coko-premium-monthly", 1, reason="trial", by="ops", now=NOW, tz=ABIDJAN
        )
    try:
        end = grant.ends_at
        with rt.sessions() as session:
            within = views.subscriptions_of(session, "tech-7", "depannage", end + timedelta(days=2, hours=23))
            after = views.subscriptions_of(session, "tech-7", "depannage", end + timedelta(days=3))
            both = views.subscriptions_of(session, "tech-7", None, NOW)
    finally:
        with transaction(rt.sessions) as session:
            session.execute(update(Plan).where(Plan.code == "depannage-monthly").values(grace_days=0))
    assert [(s["active"], s["grace_until"]) for s in within] == [(True, (end + timedelta(days=3)).isoformat())]
    assert [s["active"] for s in after] == [False]  # the expiry job has not run: the view says it all the same
    assert [s["product"] for s in both] == ["coko", "depannage"]
    assert [(g["kind"], g["payment_reference"], g["reason"], g["by"]) for g in both[1]["grants"]] == [
        ("manual", None, "goodwill", "ops")
    ]


def test_the_summary_counts_every_status_zeros_included(rt: Runtime) -> None:
    payment(rt, new_reference(), PaymentStatus.SUCCEEDED)
    payment(rt, new_reference(), PaymentStatus.PENDING)
    payment(rt, new_reference(), PaymentStatus.PENDING)
    with rt.sessions() as session:
        summary = views.summary(session, NOW)
    assert summary["payments"] == {s.value: {"succeeded": 1, "pending": 2}.get(s.value, 0) for s in PaymentStatus}
    assert (summary["subscriptions_active"], summary["grants"], summary["unbalanced_journals"]) == (0, 0, 0)


def test_health_counts_only_what_is_unfinished(rt: Runtime) -> None:
    old, done = new_reference(), new_reference()
    payment(rt, old, PaymentStatus.PENDING, at=NOW - timedelta(hours=5))
    payment(rt, new_reference(), PaymentStatus.REGISTERED, at=NOW)
    payment(rt, done, PaymentStatus.SUCCEEDED)
    with transaction(rt.sessions) as session:
        for reason in ("unknown_plan", "unknown_plan", "invalid_envelope"):
            deadletters.record(session, task="t", reason=reason, detail="", payload="{}", now=NOW)
        replayed = deadletters.record(session, task="t", reason="invalid_envelope", detail="", payload="{}", now=NOW)
        replayed.replayed_at = NOW
    with rt.sessions() as session:
        counts = views.health_counts(session)
        created = session.query(Payment.created_at).filter(Payment.reference == old).scalar()
    assert counts.unfinished_payments == [("cinetpay", 2, created)]
    assert sorted(counts.dead_letters) == [("invalid_envelope", 1), ("unknown_plan", 2)]
    assert counts.waiting_deliveries == [] and counts.open_cases == []


def test_the_last_successful_run_is_the_latest_that_succeeded(rt: Runtime) -> None:
    ref = new_reference()
    payment(rt, ref, PaymentStatus.SUCCEEDED)
    line(rt, ref)
    succeeded = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))
    runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt), failures=1)  # a later one that failed
    with rt.sessions() as session:
        counts = views.health_counts(session)
        finished = session.get(ReconRun, succeeded).finished_at  # type: ignore[union-attr]
    assert counts.last_successful_runs == [("cinetpay", finished)]


def test_evidence_lists_a_payments_items_of_every_run_matched_or_not(rt: Runtime) -> None:
    """Matched items are found through the runs of the payment's day, exceptions by reference."""
    ref, other = new_reference(), new_reference()
    payment(rt, ref, PaymentStatus.SUCCEEDED)
    payment(rt, other, PaymentStatus.SUCCEEDED)
    line(rt, ref)
    line(rt, other)
    first = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))
    line(rt, ref, amount=4000, txn="T-late-copy")  # the provider now reports it twice
    second = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))
    runs.reconcile_stored(rt.sessions, "cinetpay", DAY + timedelta(days=5), policy(rt))  # another day: not its
    with rt.sessions() as session:
        found = views.payment_detail(session, views.find_payments(session, ref)[0])["reconciliation"]
    assert [(r["run"], r["class"]) for r in found] == [(first, "matched"), (second, "duplicate")]
