"""The double-entry ledger on real PostgreSQL: balanced or refused, append-only."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from reconciliation import ledger, runs
from reconciliation.db import transaction
from reconciliation.models import Journal, PayoutPosting, ReconRun
from worker.runtime import Runtime


def test_balanced_journal_is_posted_and_balances_add_up(rt: Runtime) -> None:
    with transaction(rt.sessions) as session:
        ledger.post(session, ledger.transfer("provider_clearing:cinetpay", ledger.REVENUE, 5000, "XOF"), kind="test")
        ledger.post(session, ledger.transfer("provider_clearing:cinetpay", ledger.SUSPENSE, 700, "XOF"), kind="test2")
    with rt.sessions() as session:
        balances = {(b.account, b.currency): b.balance for b in ledger.balances(session)}
        assert ledger.unbalanced_journals(session) == []
    assert balances == {
        ("provider_clearing:cinetpay", "XOF"): 5700,
        ("revenue:subscriptions", "XOF"): -5000,
        ("suspense", "XOF"): -700,
    }


@pytest.mark.parametrize(
    "lines",
    [
        [ledger.Line("a", ledger.DEBIT, 100, "XOF"), ledger.Line("b", ledger.CREDIT, 99, "XOF")],
        [ledger.Line("a", ledger.DEBIT, 100, "XOF"), ledger.Line("b", ledger.CREDIT, 100, "USD")],
        [ledger.Line("a", ledger.DEBIT, 0, "XOF"), ledger.Line("b", ledger.CREDIT, 0, "XOF")],
        [ledger.Line("a", ledger.DEBIT, 1.5, "XOF"), ledger.Line("b", ledger.CREDIT, 1.5, "XOF")],  # type: ignore[arg-type]
        [],
    ],
)
def test_unbalanced_or_invalid_journal_is_refused_before_the_database(rt: Runtime, lines: list[ledger.Line]) -> None:
    with pytest.raises(ledger.UnbalancedJournal), transaction(rt.sessions) as session:
        ledger.post(session, lines, kind="bad")


def _raw_journal(conn: object, debit: int, credit: int) -> None:
    conn.execute(text("INSERT INTO ledger_accounts (code, currency) VALUES ('x', 'XOF'), ('y', 'XOF')"))  # type: ignore[attr-defined]
    jid = conn.execute(text("INSERT INTO ledger_journals (kind, memo) VALUES ('raw', '') RETURNING id")).scalar()  # type: ignore[attr-defined]
    conn.execute(  # type: ignore[attr-defined]
        text(
            "INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency) VALUES "
            "(:j, (SELECT id FROM ledger_accounts WHERE code='x'), 'debit', :d, 'XOF'),"
            "(:j, (SELECT id FROM ledger_accounts WHERE code='y'), 'credit', :c, 'XOF')"
        ),
        {"j": jid, "d": debit, "c": credit},
    )


def test_database_refuses_an_unbalanced_journal_at_commit(rt: Runtime) -> None:
    with pytest.raises(DBAPIError, match="does not balance"), rt.engine.begin() as conn:
        _raw_journal(conn, 100, 90)
    with rt.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ledger_journals")).scalar() == 0


def test_database_refuses_a_journal_without_entries(rt: Runtime) -> None:
    with pytest.raises(DBAPIError, match="has no entries"), rt.engine.begin() as conn:
        conn.execute(text("INSERT INTO ledger_journals (kind, memo) VALUES ('empty', '')"))


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_entries SET amount = amount + 1",
        "DELETE FROM ledger_entries",
        "UPDATE ledger_journals SET memo = 'x'",
        "DELETE FROM ledger_journals",
    ],
)
def test_ledger_rows_are_append_only(rt: Runtime, statement: str) -> None:
    with rt.engine.begin() as conn:
        _raw_journal(conn, 100, 100)
    with pytest.raises(DBAPIError, match="append-only"), rt.engine.begin() as conn:
        conn.execute(text(statement))


def test_reverse_mirrors_the_original(rt: Runtime) -> None:
    with transaction(rt.sessions) as session:
        original = ledger.post(
            session, ledger.transfer("provider_clearing:cinetpay", ledger.SUSPENSE, 300, "XOF"), kind="s"
        )
        ledger.reverse(session, original, kind="s_rev")
    with rt.sessions() as session:
        assert {b.account: b.balance for b in ledger.balances(session)} == {
            "provider_clearing:cinetpay": 0,
            "suspense": 0,
        }


def test_unbalanced_journals_finds_rows_written_around_the_guards(rt: Runtime) -> None:
    with rt.engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))  # disables triggers
        _raw_journal(conn, 100, 60)
    with rt.sessions() as session:
        assert ledger.unbalanced_journals(session) == [(1, "XOF", 40)]


def _run(rt: Runtime) -> int:
    at = datetime(2026, 11, 21, tzinfo=UTC)
    with transaction(rt.sessions) as session:
        run = ReconRun(
            provider="wave", business_date=date(2026, 11, 20), timezone="UTC", window_start=at, window_end=at,
            trigger="manual", status="running", started_at=at, counts={},
        )  # fmt: skip
        session.add(run)
        session.flush()
        return run.id


def _payout_journals(rt: Runtime) -> int:
    with rt.sessions() as session:
        return int(session.scalar(select(func.count()).where(Journal.kind == runs.PAYOUT)) or 0)


def test_bank_account_code() -> None:
    assert ledger.bank("wave") == "bank:wave"
    assert ledger.clearing("wave") == "provider_clearing:wave"  # the account a payout is credited to


def test_a_payout_is_posted_once_even_when_posted_directly_twice(rt: Runtime) -> None:
    run_id = _run(rt)
    with transaction(rt.sessions) as session:
        journal = runs.post_payout(session, run_id, "wave", "PO-1", amount=70785, currency="XOF")
    with transaction(rt.sessions) as session:
        # No pre-check here (post_payouts skips posted payouts before it calls this): the key refuses it.
        assert runs.post_payout(session, run_id, "wave", "PO-1", amount=70785, currency="XOF") is None
        assert runs.post_payout(session, run_id, "mtn_momo", "PO-1", amount=500, currency="XOF") is not None
    assert journal is not None and _payout_journals(rt) == 2
    with rt.sessions() as session:
        balances = {(b.account, b.currency): b.balance for b in ledger.balances(session)}
        assert ledger.unbalanced_journals(session) == []
    assert balances[("bank:wave", "XOF")] == 70785
    assert balances[("provider_clearing:wave", "XOF")] == -70785


def test_the_database_refuses_a_second_posting_of_a_payout(rt: Runtime) -> None:
    run_id = _run(rt)
    with transaction(rt.sessions) as session:
        first = runs.post_payout(session, run_id, "wave", "PO-1", amount=100, currency="XOF")
        other = ledger.post(
            session, ledger.transfer(ledger.bank("wave"), ledger.clearing("wave"), 100, "XOF"), kind="x"
        )
    assert first is not None
    with pytest.raises(IntegrityError), transaction(rt.sessions) as session:
        session.add(PayoutPosting(provider="wave", payout_id="PO-1", journal_id=other.id, run_id=run_id))
        session.flush()


def test_concurrent_postings_of_one_payout_wait_on_the_key_and_post_once(rt: Runtime) -> None:
    """Not check-then-act: the second writer saw no posting, waits on the key, then posts nothing."""
    run_id = _run(rt)

    def second() -> Journal | None:
        with transaction(rt.sessions) as session:
            return runs.post_payout(session, run_id, "wave", "PO-1", amount=100, currency="XOF")

    holder = rt.sessions()
    try:
        assert runs.post_payout(holder, run_id, "wave", "PO-1", amount=100, currency="XOF") is not None
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(second)
            time.sleep(0.5)
            assert not waiting.done()  # blocked on the first writer's uncommitted key
            holder.commit()
            assert waiting.result(timeout=10) is None
    finally:
        holder.close()
    assert _payout_journals(rt) == 1
