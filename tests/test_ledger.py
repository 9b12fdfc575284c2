"""The double-entry ledger on real PostgreSQL: balanced or refused (per statement), append-only; set-based posting."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import Connection, event, func, inspect, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, NotSupportedError

from reconciliation import ledger, migrate
from reconciliation.db import make_engine, session_factory, transaction
from reconciliation.models import Entry, Journal, Payment, PaymentStatus, PayoutPosting, ReconRun
from reconciliation.nightly import runs
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


def _accounts(conn: Connection) -> None:
    conn.execute(text("INSERT INTO ledger_accounts (code, currency) VALUES ('x', 'XOF'), ('y', 'XOF'), ('u', 'USD')"))


#: A raw writer's journal and its entries in one statement, as the guard requires.
RAW_JOURNAL = (
    "WITH j AS (INSERT INTO ledger_journals (kind, memo) VALUES ('raw', '') RETURNING id) "
    "INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency) "
    "SELECT j.id, a.id, e.side, e.amount, 'XOF' FROM j, "
    "(VALUES ('x', 'debit', CAST(:d AS bigint)), ('y', 'credit', CAST(:c AS bigint))) AS e (code, side, amount) "
    "JOIN ledger_accounts a ON a.code = e.code AND a.currency = 'XOF'"
)


def _raw_journal(conn: Connection, debit: int, credit: int) -> None:
    _accounts(conn)
    conn.execute(text(RAW_JOURNAL), {"d": debit, "c": credit})


def _count(rt: Runtime, table: str) -> int:
    with rt.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608 - our names


def test_database_refuses_an_unbalanced_journal(rt: Runtime) -> None:
    refused = pytest.raises(DBAPIError, match="journal 1 does not balance in XOF: debit - credit = 10")
    with refused, rt.engine.begin() as conn:
        _raw_journal(conn, 100, 90)
    assert _count(rt, "ledger_journals") == 0


def test_database_refuses_a_journal_without_entries(rt: Runtime) -> None:
    with pytest.raises(DBAPIError, match="has no entries"), rt.engine.begin() as conn:
        conn.execute(text("INSERT INTO ledger_journals (kind, memo) VALUES ('empty', '')"))


def test_database_refuses_a_journal_whose_entries_come_in_a_later_statement(rt: Runtime) -> None:
    """The guard runs at the end of each statement: a journal is written together with its entries."""
    with rt.engine.begin() as conn:
        _accounts(conn)
    with pytest.raises(DBAPIError, match=r"journal [0-9]+ has no entries"), rt.engine.begin() as conn:
        jid = conn.execute(text("INSERT INTO ledger_journals (kind, memo) VALUES ('split', '') RETURNING id")).scalar()
        conn.execute(
            text(
                "INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency) VALUES "
                "(:j, (SELECT id FROM ledger_accounts WHERE code = 'x'), 'debit', 5, 'XOF'),"
                "(:j, (SELECT id FROM ledger_accounts WHERE code = 'y'), 'credit', 5, 'XOF')"
            ),
            {"j": jid},
        )
    assert _count(rt, "ledger_journals") == 0


@pytest.mark.parametrize(
    ("entries", "error"),
    [
        ([("x", "debit", 7)], "journal 1 does not balance in XOF: debit - credit = 7"),
        ([("x", "debit", 7), ("y", "credit", 7)], "journal 1 does not balance in XOF: debit - credit = 7"),
    ],
    ids=["one-entry", "a-balancing-pair-one-statement-each"],
)
def test_database_refuses_entries_that_unbalance_a_posted_journal(
    rt: Runtime, entries: list[tuple[str, str, int]], error: str
) -> None:
    with rt.engine.begin() as conn:
        _raw_journal(conn, 100, 100)
    with pytest.raises(DBAPIError, match=error), rt.engine.begin() as conn:
        for code, side, amount in entries:  # one statement per entry: each must leave the journal balanced
            conn.execute(
                text(
                    "INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency) "
                    "VALUES (1, (SELECT id FROM ledger_accounts WHERE code = :a), :s, :n, 'XOF')"
                ),
                {"a": code, "s": side, "n": amount},
            )
    assert _count(rt, "ledger_entries") == 2


def test_database_refuses_an_entry_in_another_currency_than_its_account(rt: Runtime) -> None:
    with rt.engine.begin() as conn:
        _accounts(conn)
    refused = pytest.raises(DBAPIError, match=r"journal [0-9]+ posts to an account of another currency")
    with refused, rt.engine.begin() as conn:  # balanced in USD, but 'y' is an XOF account
        conn.execute(
            text(
                "WITH j AS (INSERT INTO ledger_journals (kind, memo) VALUES ('fx', '') RETURNING id) "
                "INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency) "
                "SELECT j.id, a.id, e.side, 100, 'USD' FROM j, (VALUES ('u', 'debit'), ('y', 'credit')) "
                "AS e (code, side) JOIN ledger_accounts a ON a.code = e.code"
            )
        )
    assert _count(rt, "ledger_journals") == 0


def test_database_refuses_a_statement_with_one_unbalanced_journal_among_many(rt: Runtime) -> None:
    """A raw multi-journal statement: the one bad journal is named, and nothing of the statement stays."""
    with rt.engine.begin() as conn:
        _accounts(conn)
    many = (
        "WITH j AS (INSERT INTO ledger_journals (kind, memo) SELECT 'many', g.n::text FROM generate_series(1, 50) "
        "AS g (n) ORDER BY g.n RETURNING id, memo) "
        "INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency) "
        "SELECT j.id, a.id, e.side, CASE WHEN j.memo = :bad AND e.side = 'credit' THEN 99 ELSE 100 END, 'XOF' "
        "FROM j, (VALUES ('x', 'debit'), ('y', 'credit')) AS e (code, side) "
        "JOIN ledger_accounts a ON a.code = e.code AND a.currency = 'XOF'"
    )
    refused = pytest.raises(DBAPIError, match="journal 37 does not balance in XOF: debit - credit = 1")
    with refused, rt.engine.begin() as conn:
        conn.execute(text(many), {"bad": "37"})
    assert _count(rt, "ledger_journals") == 0 and _count(rt, "ledger_entries") == 0
    with rt.engine.begin() as conn:
        conn.execute(text(many), {"bad": "none"})
    assert _count(rt, "ledger_journals") == 50 and _count(rt, "ledger_entries") == 100


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_entries SET amount = amount + 1",
        "DELETE FROM ledger_entries",
        "UPDATE ledger_journals SET memo = 'x'",
        "DELETE FROM ledger_journals",
        "UPDATE ledger_accounts SET currency = 'USD' WHERE code = 'x'",
        "UPDATE ledger_accounts SET id = id + 100",
        "DELETE FROM ledger_accounts WHERE code = 'u'",  # even one no entry uses
    ],
)
def test_ledger_rows_are_append_only(rt: Runtime, statement: str) -> None:
    with rt.engine.begin() as conn:
        _raw_journal(conn, 100, 100)
    with pytest.raises(DBAPIError, match="append-only"), rt.engine.begin() as conn:
        conn.execute(text(statement))


# The references of journals and entries (migration 0013: checked per statement by the guard, not by
# per-row foreign keys): each refusal, with a statement that balances, so that only the reference is wrong.
ENTRIES_OF = (
    "INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency) VALUES "
    "(:j, (SELECT id FROM ledger_accounts WHERE code = 'x'), 'debit', 5, 'XOF'), "
    "(:j, :credit_account, 'credit', 5, 'XOF')"
)


def _journal_of(conn: Connection, payment_id: object = None, reverses_id: object = None) -> None:
    conn.execute(
        text(
            "WITH j AS (INSERT INTO ledger_journals (kind, memo, payment_id, reverses_id) "
            "VALUES ('ref', '', :p, :r) RETURNING id) "
            "INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency) "
            "SELECT j.id, a.id, e.side, 5, 'XOF' FROM j, (VALUES ('x', 'debit'), ('y', 'credit')) AS e (code, side) "
            "JOIN ledger_accounts a ON a.code = e.code AND a.currency = 'XOF'"
        ),
        {"p": payment_id, "r": reverses_id},
    )


def test_database_refuses_entries_of_a_journal_that_does_not_exist(rt: Runtime) -> None:
    with rt.engine.begin() as conn:
        _accounts(conn)
    refused = pytest.raises(IntegrityError, match="ledger entries refer to journal 999, which does not exist")
    with refused, rt.engine.begin() as conn:
        credit = conn.execute(text("SELECT id FROM ledger_accounts WHERE code = 'y'")).scalar()
        conn.execute(text(ENTRIES_OF), {"j": 999, "credit_account": credit})
    assert _count(rt, "ledger_entries") == 0


def test_database_refuses_an_entry_on_an_account_that_does_not_exist(rt: Runtime) -> None:
    with rt.engine.begin() as conn:
        _raw_journal(conn, 100, 100)  # journal 1
    refused = pytest.raises(IntegrityError, match="journal 1 posts to account 999, which does not exist")
    with refused, rt.engine.begin() as conn:
        conn.execute(text(ENTRIES_OF), {"j": 1, "credit_account": 999})
    assert _count(rt, "ledger_entries") == 2


def test_database_refuses_a_journal_of_a_payment_or_reversing_a_journal_that_does_not_exist(rt: Runtime) -> None:
    (payment,) = _payments(rt, 1)
    with rt.engine.begin() as conn:
        _accounts(conn)
        _journal_of(conn, payment_id=payment)  # journal 1, of a payment that exists
        _journal_of(conn, reverses_id=1)
    refused = pytest.raises(IntegrityError, match=r"journal 3 is of payment 999, which does not exist")
    with refused, rt.engine.begin() as conn:
        _journal_of(conn, payment_id=999)
    refused = pytest.raises(IntegrityError, match=r"journal 4 reverses journal 999, which does not exist")
    with refused, rt.engine.begin() as conn:
        _journal_of(conn, reverses_id=999)
    assert _count(rt, "ledger_journals") == 2


@pytest.mark.parametrize(
    ("statement", "error"),
    [
        ("DELETE FROM payments", "payment 1 has ledger journals: DELETE refused"),
        ("UPDATE payments SET id = 7", "payment 1 has ledger journals: UPDATE refused"),
        ("TRUNCATE ledger_journals CASCADE", "TRUNCATE of ledger_journals refused: ledger rows refer to it"),
        ("TRUNCATE ledger_accounts", "TRUNCATE of ledger_accounts refused: ledger rows refer to it"),
        ("TRUNCATE payments CASCADE", "TRUNCATE of payments refused: ledger rows refer to it"),
    ],
)
def test_what_the_ledger_refers_to_cannot_go(rt: Runtime, statement: str, error: str) -> None:
    (payment,) = _payments(rt, 1)
    with rt.engine.begin() as conn:
        _accounts(conn)
        _journal_of(conn, payment_id=payment)
    with pytest.raises(IntegrityError, match=error), rt.engine.begin() as conn:
        conn.execute(text(statement))
    with rt.engine.begin() as conn:  # a payment without journals goes; the others' updates are not refused
        conn.execute(text("UPDATE payments SET check_count = check_count + 1, id = id WHERE id = :p"), {"p": payment})
        conn.execute(text("TRUNCATE ledger_journals, ledger_entries, ledger_accounts CASCADE"))
        conn.execute(text("DELETE FROM payments"))
    assert _count(rt, "payments") == 0


#: A fee journal of a run's chunk and its postings in one statement, as ``runs._FEES_POST`` writes them: the journal
#: (``:kind``) debits ``:debit`` XOF to x and credits it to y; the postings give the payments ``:payments`` the fees
#: ``:fees``, under the run ``:run``.
FEE_CHUNK = (
    "WITH j AS (INSERT INTO ledger_journals (kind, memo) VALUES (:kind, '') RETURNING id), "
    "e AS (INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency) "
    "SELECT j.id, a.id, s.side, :debit, 'XOF' FROM j, (VALUES ('x', 'debit'), ('y', 'credit')) AS s (code, side) "
    "JOIN ledger_accounts a ON a.code = s.code AND a.currency = 'XOF') "
    "INSERT INTO fee_postings (payment_id, journal_id, run_id, amount, currency) "
    "SELECT p.id, j.id, :run, p.fee, 'XOF' FROM j, "
    "unnest(CAST(:payments AS bigint[]), CAST(:fees AS bigint[])) AS p (id, fee)"
)


def _fee_chunk(rt: Runtime, **changed: object) -> dict[str, object]:
    """Two payments, the accounts, a run: what ``FEE_CHUNK`` posts as given, unless ``changed``."""
    payments = _payments(rt, 2)
    with rt.engine.begin() as conn:
        _accounts(conn)
    return {"kind": "fee", "debit": 7, "run": _run(rt), "payments": payments, "fees": [3, 4]} | changed


def test_a_fee_journal_and_its_postings_are_written_together(rt: Runtime) -> None:
    with rt.engine.begin() as conn:
        conn.execute(text(FEE_CHUNK), _fee_chunk(rt))
    assert _count(rt, "fee_postings") == 2
    with rt.sessions() as session:
        assert ledger.dangling_references(session) == []


@pytest.mark.parametrize(
    ("changed", "error"),
    [
        ({"debit": 8}, r"fee postings of 7 XOF in journal \d+ whose debits in XOF are 8"),
        ({"kind": "settlement"}, r"fee postings name journal \d+, a settlement journal, not a fee journal"),
        ({"payments": [999, 998]}, "a fee posting is of payment 998, which does not exist"),
        ({"run": 999}, "fee postings name run 999, which does not exist"),
        ({"fees": [3, -3], "debit": 1}, "ck_fee_postings_amount_positive"),
    ],
)
def test_the_database_refuses_fee_postings_their_journal_does_not_carry(
    rt: Runtime, changed: dict[str, object], error: str
) -> None:
    """The postings' guard (migration 0025), per statement: each payment and run exists, and each journal named is a
    fee journal whose debits in each currency are the statement's fees in it."""
    given = _fee_chunk(rt, **changed)
    with pytest.raises(IntegrityError, match=error), rt.engine.begin() as conn:
        conn.execute(text(FEE_CHUNK), given)
    assert _count(rt, "fee_postings") == _count(rt, "ledger_journals") == 0


@pytest.mark.parametrize("later", ["statement", "transaction"])
def test_fee_postings_are_written_with_their_journal_not_added_to_it_later(rt: Runtime, later: str) -> None:
    """A fee journal and its postings are one statement: a later one cannot add postings to it, even adding up to its
    debits (the journal would then carry twice what it debited, and refunds would reverse fees never posted). The
    guard compares the rows' inserting transaction and command: a later statement of the same transaction (the same
    xmin, another cmin) and the first statement of a later one (another xmin, the same cmin, 0) are both refused."""
    given = _fee_chunk(rt)
    posting = text("INSERT INTO fee_postings (payment_id, journal_id, amount, currency) VALUES (:p, :j, 7, 'XOF')")
    refused = pytest.raises(IntegrityError, match="which an earlier statement wrote")
    with rt.engine.connect() as conn:
        conn.begin()
        conn.execute(text(FEE_CHUNK), given | {"payments": given["payments"][:1], "fees": [7]})  # command 0
        journal = conn.execute(text("SELECT max(id) FROM ledger_journals")).scalar_one()
        if later == "transaction":
            conn.commit()
            conn.begin()
        else:
            assert conn.execute(text("SELECT xmin = pg_current_xact_id()::xid FROM ledger_journals WHERE id = :j"),
                                {"j": journal}).scalar_one()  # fmt: skip
        with refused:
            conn.execute(posting, {"p": given["payments"][1], "j": journal})
        conn.rollback()
    assert _count(rt, "fee_postings") == (1 if later == "transaction" else 0)


def test_fee_postings_naming_a_journal_that_does_not_exist_are_refused(rt: Runtime) -> None:
    (payment,) = _payments(rt, 1)
    refused = pytest.raises(IntegrityError, match="fee postings name journal 424242, which does not exist")
    with refused, rt.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO fee_postings (payment_id, journal_id, amount, currency) VALUES (:p, 424242, 5, 'XOF')"),
            {"p": payment},
        )


@pytest.mark.parametrize(
    ("statement", "error"),
    [
        ("UPDATE fee_postings SET amount = amount", "append-only: UPDATE on fee_postings refused"),
        ("DELETE FROM fee_postings", "append-only: DELETE on fee_postings refused"),
        ("DELETE FROM payments", "has a fee posted: DELETE refused"),
        ("UPDATE payments SET id = id + 100", "has a fee posted: UPDATE refused"),
        ("TRUNCATE payments CASCADE", "TRUNCATE of payments refused: ledger rows refer to it"),
        ("TRUNCATE fee_postings", "TRUNCATE of fee_postings refused: ledger rows refer to it"),
    ],
)
def test_a_fee_posted_stays_and_keeps_its_payment(rt: Runtime, statement: str, error: str) -> None:
    with rt.engine.begin() as conn:
        conn.execute(text(FEE_CHUNK), _fee_chunk(rt))
    with pytest.raises(IntegrityError, match=error), rt.engine.begin() as conn:
        conn.execute(text(statement))
    assert _count(rt, "fee_postings") == 2


def test_a_truncate_of_what_the_ledger_refers_to_needs_read_committed(rt: Runtime) -> None:
    """An older snapshot could miss ledger rows committed since it was taken, and let the TRUNCATE through."""
    with rt.engine.connect() as conn:
        conn.execute(text("BEGIN ISOLATION LEVEL REPEATABLE READ"))
        conn.execute(text("SELECT count(*) FROM ledger_entries"))  # the snapshot
        with pytest.raises(NotSupportedError, match="TRUNCATE of payments runs under READ COMMITTED only"):
            conn.execute(text("TRUNCATE payments CASCADE"))
        conn.rollback()


def test_a_journal_holds_its_payment_until_it_commits(rt: Runtime) -> None:
    """What the foreign key's row lock did: a DELETE of a payment while a journal of it is being written
    waits for the journal's transaction (it locks the journals against writers), then sees the journal
    and is refused."""
    (payment,) = _payments(rt, 1)
    with rt.engine.begin() as conn:
        _accounts(conn)
    with rt.engine.connect() as writer, rt.engine.connect() as deleter:
        writer.begin()
        _journal_of(writer, payment_id=payment)
        deleter.begin()
        deleter.execute(text("SET LOCAL lock_timeout = '100ms'"))
        with pytest.raises(DBAPIError, match="lock timeout"):
            deleter.execute(text("DELETE FROM payments WHERE id = :p"), {"p": payment})
        deleter.rollback()
        writer.commit()
        with pytest.raises(IntegrityError, match="has ledger journals"), deleter.begin():
            deleter.execute(text("DELETE FROM payments WHERE id = :p"), {"p": payment})


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


# --------------------------------------------------------------------------- post_many: set-based posting


@contextmanager
def _statements(rt: Runtime) -> Iterator[list[str]]:
    """The SQL statements sent to the database meanwhile."""
    sent: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        sent.append(statement)

    event.listen(rt.engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(rt.engine, "before_cursor_execute", record)


def _payments(rt: Runtime, n: int) -> list[int]:
    with transaction(rt.sessions) as session:
        rows = [Payment(provider="wave", reference=f"P-{i}", status=PaymentStatus.SUCCEEDED) for i in range(n)]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


def test_post_many_writes_many_journals_and_their_entries_in_one_statement(rt: Runtime) -> None:
    journals = [
        ledger.NewJournal(ledger.transfer(ledger.clearing("wave"), ledger.REVENUE, 100 + i, "XOF"), kind="bulk")
        for i in range(1_000)
    ] + [
        ledger.NewJournal(
            [
                ledger.Line(ledger.clearing("wave"), ledger.DEBIT, 300, "USD"),
                ledger.Line(ledger.REVENUE, ledger.CREDIT, 200, "USD"),
                ledger.Line(ledger.fees("wave"), ledger.CREDIT, 100, "USD"),
            ],
            kind="three-lines",
            memo="three",
        )
    ]
    with _statements(rt) as sent, transaction(rt.sessions) as session:
        ids = ledger.post_many(session, journals)
        assert not session.new and not session.dirty  # a Core insert: nothing left for the ORM to write
    assert ids == list(range(1, 1_002))
    assert sum("INSERT INTO ledger_journals" in s for s in sent) == 1
    assert sum("INSERT INTO ledger_entries" in s for s in sent) == 1  # the same statement
    assert _count(rt, "ledger_entries") == 2_003
    with rt.sessions() as session:
        assert ledger.unbalanced_journals(session) == []
        balances = {(b.account, b.currency): b.balance for b in ledger.balances(session)}
        last = session.get(Journal, 1_001)
        assert last is not None and (last.kind, last.memo) == ("three-lines", "three")
        assert [(e.side, e.amount) for e in last.entries] == [("debit", 300), ("credit", 200), ("credit", 100)]
    assert balances[ledger.REVENUE, "XOF"] == -sum(100 + i for i in range(1_000))
    assert balances[ledger.fees("wave"), "USD"] == -100


def test_post_many_keeps_any_memo_and_kind_as_given(rt: Runtime) -> None:
    """The columns travel as array literals: quotes, backslashes, commas, braces and NULL survive."""
    memos = ['a "quoted" memo', "back\\slash\\", "{braces}, commas", "NULL", "", "  spaces  "]
    memos.append("D\u00e9pannage \u2013 5\u202f000 F")
    with transaction(rt.sessions) as session:
        ids = ledger.post_many(
            session, [ledger.NewJournal(ledger.transfer("a", "b", 1, "XOF"), kind=m[:40], memo=m) for m in memos]
        )
    with rt.sessions() as session:
        stored = {j.id: (j.kind, j.memo) for j in session.scalars(select(Journal))}
    assert [stored[i] for i in ids if i is not None] == [(m[:40], m) for m in memos]


def test_post_many_refuses_every_journal_when_one_is_unbalanced(rt: Runtime) -> None:
    good = ledger.NewJournal(ledger.transfer("a", "b", 100, "XOF"), kind="good")
    bad = ledger.NewJournal(
        [ledger.Line("a", ledger.DEBIT, 100, "XOF"), ledger.Line("b", ledger.CREDIT, 99, "XOF")], kind="bad"
    )
    with pytest.raises(ledger.UnbalancedJournal), transaction(rt.sessions) as session:
        ledger.post_many(session, [good] * 10 + [bad] + [good] * 10)
    assert _count(rt, "ledger_journals") == 0 and _count(rt, "ledger_accounts") == 0


def test_post_many_writes_a_statement_per_chunk(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger, "POST_CHUNK", 3)
    journals = [ledger.NewJournal(ledger.transfer("a", "b", i + 1, "XOF"), kind="chunked") for i in range(7)]
    with _statements(rt) as sent, transaction(rt.sessions) as session:
        assert ledger.post_many(session, journals) == [1, 2, 3, 4, 5, 6, 7]
    assert sum("INSERT INTO ledger_journals" in s for s in sent) == 3
    with rt.sessions() as session:
        assert ledger.unbalanced_journals(session) == []
        amounts = session.scalars(select(Entry.amount).where(Entry.side == ledger.DEBIT).order_by(Entry.journal_id))
        assert list(amounts) == [1, 2, 3, 4, 5, 6, 7]


def test_post_many_skips_journals_posted_before_when_asked(rt: Runtime) -> None:
    first, second = _payments(rt, 2)
    fee = ledger.transfer(ledger.fees("wave"), ledger.clearing("wave"), 50, "XOF")
    with transaction(rt.sessions) as session:
        posted = ledger.post(session, fee, kind="charge", payment_id=first)
    with transaction(rt.sessions) as session:
        journals = [ledger.NewJournal(fee, kind="charge", payment_id=p) for p in (first, second, second)]
        skipped, new, again = ledger.post_many(session, journals, skip_posted=True)
    assert skipped is None and again is None  # posted before; posted by this very statement
    assert new is not None and new > posted.id  # ids are drawn before the key is looked at: gaps are fine
    with pytest.raises(IntegrityError), transaction(rt.sessions) as session:  # the key refuses it otherwise
        ledger.post_many(session, [ledger.NewJournal(fee, kind="charge", payment_id=first)])
    assert _count(rt, "ledger_journals") == 2 and _count(rt, "ledger_entries") == 4


def test_post_returns_a_persistent_journal_and_leaves_nothing_pending(rt: Runtime) -> None:
    with transaction(rt.sessions) as session:
        journal = ledger.post(session, ledger.transfer("a", "b", 100, "XOF"), kind="one", memo="memo")
        assert inspect(journal).persistent and not session.new and not session.dirty
        assert (journal.id, journal.kind, journal.memo, journal.payment_id) == (1, "one", "memo", None)
        assert journal.created_at is not None  # loaded on access
        assert [(e.side, e.amount) for e in journal.entries] == [("debit", 100), ("credit", 100)]
        assert session.scalars(select(Journal)).one() is journal
    with _statements(rt) as sent, transaction(rt.sessions) as session:
        ledger.post(session, ledger.transfer("a", "b", 5, "XOF"), kind="two")
    assert len(sent) == 2  # the accounts (both known: one query), then the journal with its entries


def test_accounts_of_a_batch_are_found_in_one_query_and_created_at_once(rt: Runtime) -> None:
    with _statements(rt) as sent, transaction(rt.sessions) as session:
        created = ledger.account_ids(session, [("a", "XOF"), ("b", "XOF"), ("a", "USD")])
    assert len(sent) == 3  # look up, insert the missing ones, look them up
    with _statements(rt) as sent, transaction(rt.sessions) as session:
        assert ledger.account_ids(session, [("a", "USD"), ("b", "XOF"), ("a", "XOF")]) == created
        assert ledger.account_id(session, "b", "XOF") == created["b", "XOF"]
    assert len(sent) == 2
    assert sorted(created.values()) == [1, 2, 3]


def test_post_and_post_many_on_sqlite(tmp_path: Path) -> None:
    """The embedded demo's database: no CTE that inserts, no balance guard; the same results."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    try:
        with transaction(sessions) as session:
            payment = Payment(provider="wave", reference="P-1", status=PaymentStatus.SUCCEEDED)
            session.add(payment)
            session.flush()
            original = ledger.post(session, ledger.transfer("a", "b", 100, "XOF"), kind="s", payment_id=payment.id)
            ledger.reverse(session, original, kind="s_rev")
            fee = ledger.transfer(ledger.fees("wave"), ledger.clearing("wave"), 7, "XOF")
            journals = [ledger.NewJournal(fee, kind=kind, payment_id=payment.id) for kind in ("s", "charge", "charge")]
            assert ledger.post_many(session, journals, skip_posted=True) == [None, 3, None]
            assert not session.new
        with sessions() as session:
            assert ledger.unbalanced_journals(session) == []
            assert {(b.account, b.balance) for b in ledger.balances(session)} == {
                ("a", 0), ("b", 0), (ledger.fees("wave"), 7), (ledger.clearing("wave"), -7)
            }  # fmt: skip
    finally:
        engine.dispose()


def test_a_payout_chunk_that_meets_a_posted_payout_falls_back_to_one_at_a_time(rt: Runtime) -> None:
    """A payout posted by someone else after ``post_payouts`` read the run: the chunk's journals are
    rolled back with its savepoint, and the others are posted one by one, each once."""
    run_id = _run(rt)
    with transaction(rt.sessions) as session:
        assert runs.post_payout(session, run_id, "wave", "PO-2", amount=200, currency="XOF") is not None
    payouts = [runs._Payout(f"PO-{i}", 100 * i, "XOF", "wave") for i in (1, 2, 3)]
    with transaction(rt.sessions) as session:
        assert runs._post_payout_chunk(session, run_id, payouts) == 2
    with transaction(rt.sessions) as session:
        assert runs._post_payout_chunk(session, run_id, payouts) == 0
    assert _payout_journals(rt) == 3
    with rt.sessions() as session:
        assert ledger.unbalanced_journals(session) == []
        posted = dict(session.execute(select(PayoutPosting.payout_id, PayoutPosting.journal_id)).all())
        amounts = dict(
            session.execute(
                select(Entry.journal_id, Entry.amount).where(
                    Entry.side == ledger.DEBIT, Entry.journal_id.in_(posted.values())
                )
            ).all()
        )
    assert {payout: amounts[journal] for payout, journal in posted.items()} == {"PO-1": 100, "PO-2": 200, "PO-3": 300}


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency) VALUES (999, 1, 'debit', 5, 'X')",
        "INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency) VALUES (1, 999, 'debit', 5, 'X')",
        "INSERT INTO ledger_journals (kind, memo, payment_id) VALUES ('x', '', 999)",
        "INSERT INTO ledger_journals (kind, memo, reverses_id) VALUES ('x', '', 999)",
        "DELETE FROM payments",
        "UPDATE payments SET id = 7",
        "DELETE FROM ledger_accounts",
        "UPDATE ledger_accounts SET currency = 'USD'",
        # A REPLACE deletes the row it conflicts with: its delete triggers must fire (recursive_triggers).
        "INSERT OR REPLACE INTO payments (id, provider, reference, status, amount, currency, account, plan_code, "
        "periods, provider_data, check_count, settled, created_at, updated_at) SELECT 2, provider, reference, "
        "status, amount, currency, account, plan_code, periods, provider_data, check_count, settled, created_at, "
        "updated_at FROM payments WHERE id = 1",
        "INSERT OR REPLACE INTO ledger_accounts (id, code, currency, created_at) "
        "SELECT 9, code, currency, created_at FROM ledger_accounts WHERE id = 1",
        "INSERT OR REPLACE INTO ledger_journals (id, kind, memo, payment_id, created_at) "
        "SELECT id, kind, 'edited', payment_id, created_at FROM ledger_journals WHERE id = 1",
    ],
)
def test_the_embedded_demo_database_keeps_the_ledger_references_too(tmp_path: Path, statement: str) -> None:
    """SQLite (the demo) has no statement-level guard: row triggers refuse what the foreign keys did."""
    url = f"sqlite:///{tmp_path / 'demo.sqlite'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO payments (provider, reference, status, amount, currency, account, "
                              "plan_code, periods, provider_data, check_count, settled, created_at, updated_at) "
                              "VALUES ('wave', 'P-1', 'succeeded', 5, 'XOF', 'a', 'p', 1, '{}', 0, 1, "
                              "'2026-12-06', '2026-12-06')"))  # fmt: skip
            _accounts(conn)
            conn.execute(text("INSERT INTO ledger_journals (kind, memo, payment_id) VALUES ('k', '', 1)"))
            conn.execute(
                text(
                    "INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency) "
                    "VALUES (1, 1, 'debit', 5, 'XOF'), (1, 2, 'credit', 5, 'XOF')"
                )
            )
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


def test_a_journal_whose_snapshot_predates_the_deletion_of_its_payment_is_refused(rt: Runtime) -> None:
    """Under REPEATABLE READ the guard's view of the payments is the transaction's snapshot, which may
    still show a payment deleted since: there it locks them FOR KEY SHARE, as the foreign key did, and
    the lock fails. A DELETE of a payment is refused under anything but READ COMMITTED (its check must
    see every journal committed before it)."""
    (payment,) = _payments(rt, 1)
    with rt.engine.begin() as conn:
        _accounts(conn)
    with rt.engine.connect() as writer:
        writer.begin()
        writer.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        writer.execute(text("SELECT count(*) FROM payments")).scalar()  # its snapshot: the payment is there
        with rt.engine.connect() as deleter:
            with pytest.raises(DBAPIError, match="under READ COMMITTED only"), deleter.begin():
                deleter.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
                deleter.execute(text("DELETE FROM payments WHERE id = :p"), {"p": payment})
            with deleter.begin():
                deleter.execute(text("DELETE FROM payments WHERE id = :p"), {"p": payment})
        with pytest.raises(DBAPIError, match="could not serialize access due to concurrent"):
            _journal_of(writer, payment_id=payment)
        writer.rollback()
    assert _count(rt, "ledger_journals") == 0


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE fee_postings SET amount = 6",
        "DELETE FROM fee_postings",
        "DELETE FROM payments",
        "UPDATE payments SET id = 7",
        "INSERT INTO fee_postings (payment_id, journal_id, amount, currency) VALUES (999, 1, 5, 'XOF')",
        "INSERT INTO fee_postings (payment_id, journal_id, amount, currency) VALUES (2, 999, 5, 'XOF')",
        "INSERT INTO fee_postings (payment_id, journal_id, run_id, amount, currency) VALUES (2, 1, 999, 5, 'XOF')",
    ],
)
def test_the_embedded_demo_database_keeps_the_fee_postings_too(tmp_path: Path, statement: str) -> None:
    """SQLite (the demo): row triggers keep a fee posting, its payment, and refuse one of a payment, journal or run
    that does not exist (a payment 2 without a fee stays deletable)."""
    url = f"sqlite:///{tmp_path / 'demo.sqlite'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for payment in (1, 2):
                conn.execute(text("INSERT INTO payments (id, provider, reference, status, amount, currency, account, "
                                  "plan_code, periods, provider_data, check_count, settled, created_at, updated_at) "
                                  "VALUES (:id, 'wave', :ref, 'succeeded', 5, 'XOF', 'a', 'p', 1, '{}', 0, 1, "
                                  "'2026-12-06', '2026-12-06')"), {"id": payment, "ref": f"P-{payment}"})  # fmt: skip
            _accounts(conn)
            conn.execute(text("INSERT INTO ledger_journals (kind, memo) VALUES ('fee', '')"))
            conn.execute(
                text(
                    "INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency) "
                    "VALUES (1, 1, 'debit', 5, 'XOF'), (1, 2, 'credit', 5, 'XOF')"
                )
            )
            conn.execute(
                text("INSERT INTO fee_postings (payment_id, journal_id, amount, currency) VALUES (1, 1, 5, 'XOF')")
            )
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text(statement if "payments" not in statement else statement + " WHERE id = 1"))
        with engine.begin() as conn:
            assert conn.execute(text("SELECT count(*) FROM fee_postings")).scalar() == 1
            conn.execute(text("DELETE FROM payments WHERE id = 2"))
    finally:
        engine.dispose()
