"""The double-entry ledger on real PostgreSQL: balanced or refused, append-only."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from reconciliation import ledger
from reconciliation.db import transaction
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
