"""Exceptions as work (reconciliation.nightly.cases, ``payrecon exceptions``): cases opened by a run, carried across
the re-runs of their day, resolved by a run or by a person, written off through the ledger, audited."""

from __future__ import annotations

import contextlib
import json
import threading
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, select, update

from reconciliation import ledger
from reconciliation.db import transaction
from reconciliation.models import (
    CaseStatus,
    Journal,
    Payment,
    PaymentStatus,
    ReconCase,
    ReconCaseEvent,
    ReconRun,
    Resolution,
    StatementLine,
)
from reconciliation.nightly import cases, runs
from tests.conftest import worker_env
from tests.helpers import new_reference
from tests.test_reconciliation import DAY, NOON, line, payment, policy
from worker.cli import main
from worker.runtime import Runtime

LATER = datetime(2026, 11, 24, 9, tzinfo=UTC)  # four days after DAY


def run_day(rt: Runtime, **over: Any) -> int:
    return runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt, fee_bps=100, **over))


def all_cases(rt: Runtime) -> dict[str, ReconCase]:
    with rt.sessions() as session:
        found = {c.reference: c for c in session.scalars(select(ReconCase))}
        session.expunge_all()
        return found


def events(rt: Runtime, case_id: int) -> list[tuple[str, str]]:
    with rt.sessions() as session:
        rows = session.execute(
            select(ReconCaseEvent.actor, ReconCaseEvent.action)
            .where(ReconCaseEvent.case_id == case_id)
            .order_by(ReconCaseEvent.id)
        )
        return [(actor, action) for actor, action in rows]


@pytest.fixture
def day(rt: Runtime) -> dict[str, str]:
    """A CinetPay day with one exception of each kind a person works, a matched payment and a lost webhook."""
    refs = {n: new_reference() for n in ("matched", "lost", "missing", "amount", "big", "duplicate", "fee", "sla")}
    payment(rt, refs["matched"], PaymentStatus.SUCCEEDED)
    line(rt, refs["matched"], fee=50)
    payment(rt, refs["lost"], PaymentStatus.PENDING)
    line(rt, refs["lost"])
    payment(rt, refs["missing"], PaymentStatus.SUCCEEDED)
    payment(rt, refs["amount"], PaymentStatus.SUCCEEDED)
    line(rt, refs["amount"], amount=4000, txn=f"T-{refs['amount']}")
    payment(rt, refs["big"], PaymentStatus.SUCCEEDED, amount=300_000)
    line(rt, refs["big"], amount=150_000)
    payment(rt, refs["duplicate"], PaymentStatus.SUCCEEDED)
    line(rt, refs["duplicate"])
    line(rt, refs["duplicate"])
    payment(rt, refs["fee"], PaymentStatus.SUCCEEDED)
    line(rt, refs["fee"], fee=90)
    payment(rt, refs["sla"], PaymentStatus.PENDING, at=NOON - timedelta(hours=2))
    return refs


def test_a_run_opens_a_case_per_exception_with_age_priority_and_sla(rt: Runtime, day: dict[str, str]) -> None:
    run_id = run_day(rt)
    found = all_cases(rt)
    assert set(found) == set(day.values()) - {day["matched"]}  # matched: no case
    by_class = {c.cls: c for c in found.values()}
    assert set(by_class) == {
        "missing_in_ledger", "missing_at_provider", "amount_mismatch", "duplicate", "fee_variance", "missing_after_sla",
    }  # fmt: skip
    # The lost webhook was healed by the run: its case is closed by the run at once.
    lost = found[day["lost"]]
    assert lost.status is CaseStatus.RESOLVED and lost.resolution is Resolution.HEALED
    assert lost.resolved_by == f"run {run_id}"
    assert events(rt, lost.id) == [(f"run {run_id}", "opened"), (f"run {run_id}", "resolved")]
    # The others are open, with the amount at stake, a priority from class and amount, and an SLA date.
    missing, amount, big = found[day["missing"]], found[day["amount"]], found[day["big"]]
    assert (missing.status, missing.priority, missing.amount, missing.currency) == (
        CaseStatus.OPEN,
        "high",
        5000,
        "XOF",
    )
    assert (amount.priority, amount.amount) == ("medium", 1000)  # the difference is at stake
    assert (big.priority, big.amount) == ("high", 150_000)  # a large difference: one level up
    assert (found[day["fee"]].priority, found[day["fee"]].amount) == ("low", 40)  # 90 charged, 50 expected
    opened_on = missing.opened_at.date()
    assert missing.sla_due == opened_on + timedelta(days=1) and amount.sla_due == opened_on + timedelta(days=3)
    assert all(c.opened_run_id == run_id and c.runs_seen == 1 for c in found.values())
    assert events(rt, missing.id) == [(f"run {run_id}", "opened")]
    # Age counts from the business day, in Formance's buckets.
    with rt.sessions() as session:
        listed = cases.listing(session, DAY + timedelta(days=9))
    assert {r["age_days"] for r in listed} == {9} and {r["age_bucket"] for r in listed} == {"8-30"}
    assert len(listed) == 6  # the healed case is not open
    assert [r["amount"] for r in listed] == sorted((r["amount"] for r in listed), reverse=True)  # largest first


def test_open_cases_are_gauges_on_the_metrics_page(rt: Runtime, day: dict[str, str]) -> None:
    from worker.observability import StateCollector

    run_day(rt)
    with transaction(rt.sessions) as session:  # one case past its SLA date
        session.execute(
            update(ReconCase)
            .where(ReconCase.reference == day["fee"])
            .values(sla_due=datetime.now(UTC).date() - timedelta(days=2))
        )
    gauges = {
        (family.name, tuple(sorted(s.labels.items()))): s.value
        for family in StateCollector(rt.sessions, None, tz=ZoneInfo("Africa/Abidjan")).collect()
        for s in family.samples
        if family.name.startswith("payrecon_exception_cases")
    }

    def open_cases(bucket: str, priority: str, provider: str = "cinetpay") -> float:
        key = (("age_bucket", bucket), ("priority", priority), ("provider", provider))
        return gauges["payrecon_exception_cases_open", key]

    bucket = cases.age_bucket(cases.age_days(DAY, datetime.now(ZoneInfo("Africa/Abidjan")).date()))
    assert (open_cases(bucket, "high"), open_cases(bucket, "medium"), open_cases(bucket, "low")) == (2, 3, 1)
    assert open_cases("0-1", "high") == 0 and open_cases(bucket, "high", "wave") == 0  # the healed one is not open
    assert gauges["payrecon_exception_cases_overdue", (("provider", "cinetpay"),)] == 1
    assert gauges["payrecon_exception_cases_overdue", (("provider", "wave"),)] == 0


def test_age_buckets() -> None:
    assert [cases.age_bucket(d) for d in (0, 1, 2, 7, 8, 30, 31, 400)] == [
        "0-1", "0-1", "2-7", "2-7", "8-30", "8-30", "31+", "31+",
    ]  # fmt: skip
    assert cases.age_days(date(2026, 11, 20), date(2026, 11, 19)) == 0  # never negative


def test_a_rerun_carries_cases_resolves_what_it_no_longer_finds_and_reopens_what_comes_back(
    rt: Runtime, day: dict[str, str]
) -> None:
    first = run_day(rt)
    before = all_cases(rt)
    # The provider restates: the short payment's line now has the right amount; the duplicate's second line is
    # gone; the payment missing at the provider is moved to another day of ours (the day no longer has it).
    with transaction(rt.sessions) as session:
        session.execute(update(StatementLine).where(StatementLine.reference == day["amount"]).values(amount=5000))
        dup = session.scalars(select(StatementLine.id).where(StatementLine.reference == day["duplicate"])).first()
        session.execute(delete(StatementLine).where(StatementLine.id == dup))
        session.execute(
            update(Payment).where(Payment.reference == day["missing"]).values(paid_at=NOON + timedelta(days=2))
        )
    second = run_day(rt)
    after = all_cases(rt)
    assert set(after) == set(before)  # no case opened twice
    amount, dup_case, missing = after[day["amount"]], after[day["duplicate"]], after[day["missing"]]
    assert (amount.status, amount.resolution, amount.resolved_by) == (
        CaseStatus.RESOLVED, Resolution.MATCHED_LATER, f"run {second}",
    )  # fmt: skip
    assert dup_case.resolution is Resolution.MATCHED_LATER
    assert (missing.status, missing.resolution) == (CaseStatus.RESOLVED, Resolution.CLEARED)
    still = after[day["fee"]]
    assert (still.status, still.runs_seen, still.opened_run_id, still.last_run_id) == (
        CaseStatus.OPEN, 2, first, second,
    )  # fmt: skip
    assert events(rt, amount.id) == [(f"run {first}", "opened"), (f"run {second}", "resolved")]
    # The provider restates back: the difference comes back, and the case a run had closed is reopened.
    with transaction(rt.sessions) as session:
        session.execute(update(StatementLine).where(StatementLine.reference == day["amount"]).values(amount=4000))
    third = run_day(rt)
    amount = all_cases(rt)[day["amount"]]
    assert (amount.status, amount.resolution, amount.runs_seen) == (CaseStatus.OPEN, None, 2)
    assert events(rt, amount.id)[-1] == (f"run {third}", "reopened")


def test_a_person_s_decision_stands_when_the_day_is_re_run(rt: Runtime, day: dict[str, str]) -> None:
    run_day(rt)
    fee = all_cases(rt)[day["fee"]]
    with transaction(rt.sessions) as session:
        cases.resolve(session, fee.id, Resolution.DISMISSED, note="the new tariff applies", by="awa")
    run_day(rt)
    fee = all_cases(rt)[day["fee"]]
    assert (fee.status, fee.resolution, fee.resolved_by, fee.runs_seen) == (
        CaseStatus.RESOLVED, Resolution.DISMISSED, "awa", 2,
    )  # fmt: skip


def test_a_payment_booked_on_two_days_is_matched_later_across_them(rt: Runtime) -> None:
    """We booked it on DAY (at 23:30), the provider on the next day: DAY's run finds it missing at the provider,
    the next day's run finds the provider's line missing in our ledger. One payment: both cases matched later."""
    ref, other_amount = new_reference(), new_reference()
    late = NOON + timedelta(hours=11, minutes=30)
    payment(rt, ref, PaymentStatus.SUCCEEDED, at=late)
    payment(rt, other_amount, PaymentStatus.SUCCEEDED, at=late)
    first = run_day(rt)
    line(rt, ref, at=late + timedelta(hours=1))
    line(rt, other_amount, amount=4000, at=late + timedelta(hours=1))  # another amount: not the same payment
    second = runs.reconcile_stored(rt.sessions, "cinetpay", DAY + timedelta(days=1), policy(rt, fee_bps=100))
    with rt.sessions() as session:
        found = {
            (c.business_date, c.reference): (c.cls, c.status, c.resolution, c.resolved_by)
            for c in session.scalars(select(ReconCase))
        }
    nxt = DAY + timedelta(days=1)
    assert found[(DAY, ref)] == ("missing_at_provider", CaseStatus.RESOLVED, Resolution.MATCHED_LATER, f"run {second}")
    assert found[(nxt, ref)] == ("missing_in_ledger", CaseStatus.RESOLVED, Resolution.MATCHED_LATER, f"run {second}")
    assert found[(DAY, other_amount)][:2] == ("missing_at_provider", CaseStatus.OPEN)
    assert first != second


def test_an_older_run_finishing_after_a_newer_one_does_not_change_the_cases(rt: Runtime, day: dict[str, str]) -> None:
    first = run_day(rt)
    run_day(rt)
    before = {r: (c.status, c.last_run_id, c.runs_seen) for r, c in all_cases(rt).items()}
    with transaction(rt.sessions) as session:
        assert cases.sync(session, first).skipped
    assert {r: (c.status, c.last_run_id, c.runs_seen) for r, c in all_cases(rt).items()} == before


def test_a_run_that_failed_leaves_the_cases_alone(rt: Runtime, day: dict[str, str]) -> None:
    runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt, fee_bps=100), failures=1)
    assert all_cases(rt) == {}
    with rt.sessions() as session:
        failed = session.scalars(select(ReconRun.id)).one()
        with pytest.raises(cases.CaseError, match="did not succeed"):
            cases.sync(session, failed)


def test_assign_note_resolve_reopen_each_audited(rt: Runtime, day: dict[str, str]) -> None:
    run_id = run_day(rt)
    case_id = all_cases(rt)[day["duplicate"]].id
    with transaction(rt.sessions) as session:
        assert cases.assign(session, case_id, "kofi", by="awa").status is CaseStatus.INVESTIGATING
        cases.note(session, case_id, "asked CinetPay for the second transaction", by="kofi")
    with transaction(rt.sessions) as session, pytest.raises(cases.CaseError, match="say why"):
        cases.resolve(session, case_id, Resolution.DISMISSED, note=" ", by="kofi")
    with transaction(rt.sessions) as session, pytest.raises(cases.CaseError, match="a run's resolution"):
        cases.resolve(session, case_id, Resolution.HEALED, note="x", by="kofi")
    with transaction(rt.sessions) as session, pytest.raises(cases.CaseError, match="names a reconciliation run"):
        cases.note(session, case_id, "x", by="run 7")
    with transaction(rt.sessions) as session:
        cases.resolve(session, case_id, Resolution.REFUNDED, note="CinetPay refunded the second debit", by="kofi")
    with transaction(rt.sessions) as session, pytest.raises(cases.CaseError, match="already resolved"):
        cases.resolve(session, case_id, Resolution.DISMISSED, note="again", by="kofi")
    with transaction(rt.sessions) as session:
        case = cases.reopen(session, case_id, note="the refund bounced", by="awa")
        assert (case.status, case.resolution, case.assignee) == (CaseStatus.INVESTIGATING, None, "kofi")
    assert events(rt, case_id) == [
        (f"run {run_id}", "opened"), ("awa", "assigned"), ("kofi", "noted"), ("kofi", "resolved"), ("awa", "reopened"),
    ]  # fmt: skip


def _balances(rt: Runtime) -> dict[str, int]:
    with rt.sessions() as session:
        return {b.account: b.balance for b in ledger.balances(session)}


def test_a_write_off_posts_its_journal_through_the_ledger(rt: Runtime, day: dict[str, str]) -> None:
    run_day(rt)
    found = all_cases(rt)
    clearing = _balances(rt)["provider_clearing:cinetpay"]
    with transaction(rt.sessions) as session:
        case = cases.resolve(
            session, found[day["missing"]].id, Resolution.WRITTEN_OFF, note="CinetPay never had it", by="awa"
        )
        assert case.status is CaseStatus.WRITTEN_OFF and case.journal_id is not None
    balances = _balances(rt)
    assert balances["writeoffs:cinetpay"] == 5000 and balances["provider_clearing:cinetpay"] == clearing - 5000
    with rt.sessions() as session:
        journal = session.get(Journal, case.journal_id)
        assert journal is not None and journal.kind == "writeoff" and "CinetPay never had it" in journal.memo
    # A gain: the provider paid more than we booked (Dr clearing / Cr writeoffs), for the amount given.
    gain_ref = new_reference()
    payment(rt, gain_ref, PaymentStatus.SUCCEEDED, amount=5000)
    line(rt, gain_ref, amount=5500)
    run_day(rt)
    gain = all_cases(rt)[gain_ref]
    with transaction(rt.sessions) as session:
        cases.resolve(session, gain.id, Resolution.WRITTEN_OFF, note="customer paid extra", by="awa", amount=400)
    assert _balances(rt)["writeoffs:cinetpay"] == 5000 - 400
    # Nothing of a duplicate is in our ledger: no write-off; and a closed case is not written off again.
    with transaction(rt.sessions) as session, pytest.raises(cases.CaseError, match="nothing of a duplicate"):
        cases.resolve(session, found[day["duplicate"]].id, Resolution.WRITTEN_OFF, note="x", by="awa")
    with transaction(rt.sessions) as session, pytest.raises(cases.CaseError, match="already written_off"):
        cases.resolve(session, found[day["missing"]].id, Resolution.WRITTEN_OFF, note="x", by="awa")
    with transaction(rt.sessions) as session, pytest.raises(cases.CaseError, match="post a correcting journal"):
        cases.reopen(session, found[day["missing"]].id, note="x", by="awa")
    with rt.sessions() as session:
        assert ledger.unbalanced_journals(session) == []


def test_two_people_writing_off_one_case_at_once_post_one_journal(rt: Runtime, day: dict[str, str]) -> None:
    run_day(rt)
    case_id = all_cases(rt)[day["missing"]].id
    start, outcomes = threading.Barrier(2), []

    def write_off(who: str) -> None:
        start.wait()
        try:
            with transaction(rt.sessions) as session:
                cases.resolve(session, case_id, Resolution.WRITTEN_OFF, note="lost", by=who)
            outcomes.append("written off")
        except cases.CaseError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=write_off, args=(who,)) for who in ("awa", "kofi")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes)[1] == "written off" and "already written_off" in sorted(outcomes)[0]
    with rt.sessions() as session:
        assert len(session.scalars(select(Journal).where(Journal.kind == "writeoff")).all()) == 1
    assert _balances(rt)["writeoffs:cinetpay"] == 5000


def test_the_exceptions_command(
    rt: Runtime, day: dict[str, str], pg_url: str, redis_url: str, sandbox_server: Any
) -> None:
    run_day(rt)
    env = worker_env(pg_url, redis_url, sandbox_server)
    cli = CliRunner()
    listed = cli.invoke(main, ["exceptions", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert len(rows) == 6 and {r["status"] for r in rows} == {"open"}
    case_id = next(r["id"] for r in rows if r["reference"] == day["missing"])
    assigned = cli.invoke(main, ["exceptions", "assign", str(case_id), "--to", "kofi", "--by", "awa"], env=env)
    assert assigned.exit_code == 0 and assigned.output.strip() == f"case #{case_id}: investigating"
    mine = json.loads(cli.invoke(main, ["exceptions", "list", "--assignee", "kofi", "--json"], env=env).output)
    assert [r["id"] for r in mine] == [case_id]
    written = cli.invoke(
        main,
        ["exceptions", "resolve", str(case_id), "--how", "written_off", "--note", "lost at CinetPay", "--by", "kofi"],
        env=env,
    )
    assert written.exit_code == 0 and written.output.startswith(f"case #{case_id}: written_off (written_off), journal ")
    again = cli.invoke(
        main, ["exceptions", "resolve", str(case_id), "--how", "dismissed", "--note", "x", "--by", "kofi"], env=env
    )
    assert again.exit_code == 2 and "already written_off" in again.output
    shown = cli.invoke(main, ["exceptions", "show", str(case_id)], env={**env, "PAYRECON_LANGUAGE": "fr"})
    assert shown.exit_code == 0
    assert "Payé chez nous, inconnu de l'opérateur" in shown.output and "Passé en perte" in shown.output
    assert "kofi" in shown.output and "lost at CinetPay" in shown.output
    text = cli.invoke(main, ["exceptions", "list", "--status", "all"], env=env).output
    assert text.strip().splitlines()[-1] == "7 cases" and "Recorded paid by us, unknown to the provider" in text
    old = cli.invoke(main, ["exceptions", "list", "--age", "0-1", "--json"], env=env)
    assert json.loads(old.output) == []  # DAY is long past: no case is 0-1 days old
    missing = cli.invoke(main, ["exceptions", "show", "999999"], env=env)
    assert missing.exit_code == 2 and "no exception case 999999" in missing.output


# --------------------------------------------------------------------------- found by review


def test_two_runs_of_a_day_finishing_together_wait_for_each_other(
    rt: Runtime, day: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each finish wrote its own run row, then locked every run row of the day: two at once deadlocked, and the
    loser stayed 'running'. The provider's case lock is taken first now: the second waits for the first."""
    first = runs.start(rt.sessions, "cinetpay", DAY, policy(rt), "manual")
    second = runs.start(rt.sessions, "cinetpay", DAY, policy(rt), "rerun")
    for run_id in (first, second):
        runs.classify_run(rt.sessions, run_id, policy(rt), parallel=1)
    meet, real_sync, failures = threading.Barrier(2), cases.sync, []

    def sync_together(session: Any, run_id: int, **kw: Any) -> cases.Synced:
        # Both finishes inside at once, as in production when they overlap (the lock keeps one out now).
        with contextlib.suppress(threading.BrokenBarrierError):
            meet.wait(timeout=3)
        return real_sync(session, run_id, **kw)

    monkeypatch.setattr(cases, "sync", sync_together)

    def finish(run_id: int) -> None:
        try:
            runs.finish(rt.sessions, run_id)
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=finish, args=(run_id,)) for run_id in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    with rt.sessions() as session:
        statuses = {r.id: r.status for r in session.scalars(select(ReconRun))}
    assert statuses == {first: "succeeded", second: "succeeded"}
    assert {c.last_run_id for c in all_cases(rt).values()} <= {first, second}


def test_a_person_s_closed_case_keeps_what_it_was_closed_with(rt: Runtime, day: dict[str, str]) -> None:
    run_day(rt)
    short = all_cases(rt)[day["amount"]]
    with transaction(rt.sessions) as session:
        cases.resolve(session, short.id, Resolution.WRITTEN_OFF, note="CinetPay will not pay the 1 000", by="awa")
    with transaction(rt.sessions) as session:  # the provider restates: 3 000 short now
        session.execute(update(StatementLine).where(StatementLine.reference == day["amount"]).values(amount=2000))
    again = run_day(rt)
    short = all_cases(rt)[day["amount"]]
    assert (short.status, short.amount, short.runs_seen) == (CaseStatus.WRITTEN_OFF, 1000, 2)  # as written off
    assert events(rt, short.id)[-1] == (f"run {again}", "seen_again")
    with transaction(rt.sessions) as session:  # and then pays in full: the written-off money arrived
        session.execute(update(StatementLine).where(StatementLine.reference == day["amount"]).values(amount=5000))
    last = run_day(rt)
    with rt.sessions() as session:
        said = session.scalars(
            select(ReconCaseEvent.detail).where(ReconCaseEvent.case_id == short.id).order_by(ReconCaseEvent.id.desc())
        ).first()
    assert said is not None and f"run {last} matches it now" in said and "reversing the write-off" in said


def test_a_write_off_is_refused_when_the_payment_changed_since_the_run(rt: Runtime, day: dict[str, str]) -> None:
    """A refund after the run reversed the payment's journals: writing it off would credit clearing twice."""
    from reconciliation import payments as payments_mod

    run_day(rt)
    case_id = all_cases(rt)[day["missing"]].id
    with transaction(rt.sessions) as session:
        found = payments_mod.find(session, "cinetpay", day["missing"], lock=True)
        assert found is not None
        payments_mod.refund(session, found, rt.context("cinetpay"), reason="customer asked", by="awa")
    with transaction(rt.sessions) as session, pytest.raises(cases.CaseError, match="changed since run"):
        cases.resolve(session, case_id, Resolution.WRITTEN_OFF, note="lost", by="awa")
    with transaction(rt.sessions) as session, pytest.raises(cases.CaseError, match="more than the 5000 XOF"):
        cases.resolve(session, case_id, Resolution.WRITTEN_OFF, note="lost", by="awa", amount=5001)
    assert "writeoffs:cinetpay" not in _balances(rt)


def test_a_payment_written_off_on_one_day_and_reported_on_the_next_asks_the_person_again(rt: Runtime) -> None:
    ref = new_reference()
    late = NOON + timedelta(hours=11, minutes=30)
    payment(rt, ref, PaymentStatus.SUCCEEDED, at=late)
    run_day(rt)
    written = all_cases(rt)[ref]
    with transaction(rt.sessions) as session:
        cases.resolve(session, written.id, Resolution.WRITTEN_OFF, note="never arrived", by="awa")
    line(rt, ref, at=late + timedelta(hours=1))
    runs.reconcile_stored(rt.sessions, "cinetpay", DAY + timedelta(days=1), policy(rt, fee_bps=100))
    with rt.sessions() as session:
        nxt = session.scalars(select(ReconCase).where(ReconCase.business_date == DAY + timedelta(days=1))).one()
        said = session.scalars(select(ReconCaseEvent.detail).where(ReconCaseEvent.case_id == nxt.id)).all()
    assert nxt.resolution is not Resolution.MATCHED_LATER  # not quietly matched against a write-off
    assert any(f"case {written.id}" in d and "written_off" in d and "check that decision" in d for d in said)
    with rt.sessions() as session:  # the person's decision stands
        first = session.scalars(select(ReconCase).where(ReconCase.business_date == DAY)).one()
    assert first.status is CaseStatus.WRITTEN_OFF


def test_a_second_write_off_of_one_payment_is_refused_by_the_ledger_with_a_clear_error(
    rt: Runtime, day: dict[str, str], pg_url: str, redis_url: str, sandbox_server: Any
) -> None:
    """Two cases naming one payment (found on two days): the ledger's (payment, kind) key refuses the second
    write-off journal; the command says so (exit 2), no traceback; and provider text is never printed raw."""
    run_day(rt)
    first = all_cases(rt)[day["missing"]]
    with transaction(rt.sessions) as session:
        twin = ReconCase(
            provider="cinetpay", business_date=DAY + timedelta(days=1), reference=first.reference + "\x1b[31m",
            cls=first.cls, payment_id=first.payment_id, currency="XOF", amount=5000, internal_amount=5000,
            internal_currency="XOF", internal_status="succeeded", detail="", priority="high",
            sla_due=first.sla_due, status=CaseStatus.OPEN, opened_at=first.opened_at, opened_run_id=1,
            last_run_id=first.last_run_id, runs_seen=1, updated_at=first.opened_at,
        )  # fmt: skip
        session.add(twin)
        session.flush()
        twin_id = twin.id
    env = worker_env(pg_url, redis_url, sandbox_server)
    cli = CliRunner()
    resolve = ["exceptions", "resolve", "--how", "written_off", "--note", "lost", "--by", "awa"]
    assert cli.invoke(main, [*resolve[:2], str(first.id), *resolve[2:]], env=env).exit_code == 0
    second = cli.invoke(main, [*resolve[:2], str(twin_id), *resolve[2:]], env=env)
    assert second.exit_code == 2 and "the ledger refuses it" in second.output and "Traceback" not in second.output
    shown = cli.invoke(main, ["exceptions", "show", str(twin_id)], env=env)
    assert "\x1b" not in shown.output and "?[31m" in shown.output
