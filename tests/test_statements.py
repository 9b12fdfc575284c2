"""Statement imports on PostgreSQL: the optimistic path, the strict path and the Python path agree."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import delete, func, select, text

from reconciliation.models import PaymentStatus, StatementImport, StatementLine
from reconciliation.nightly import runs
from reconciliation.statements import pg as statements_pg
from reconciliation.statements.files import StatementError, import_file, visible
from tests.helpers import new_reference
from worker.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
TZ = ZoneInfo("Africa/Abidjan")
COLUMNS = ("business_date", "line_no", "provider_txn_id", "reference", "status", "amount", "currency", "fee",
           "occurred_at", "payout_id", "raw")  # fmt: skip

TRICKY = (
    "transaction_id,operator_id,payment_date,amount,currency,fees,status\n"
    "TXN-1, OP1 ,2026-11-20 23:30:00,15000,xof,525,ACCEPTED\n"
    'TXN-2,,2026-11-21T00:30:00+01:00,"12.50",USD,,refused\n'
    "TXN-3,OP3,2026-11-21T10:15Z,-2500,XOF,0,REFUNDED\n"
    "TXN-4,OP4,2026-11-21 10:15:30.250+0100,3.5,EUR,0.10,waiting_for_customer\n"
    "TXN-5,OP5,2026-11-21 12:00,5000.00,XOF,,ACCEPTED\n"
    "TXN-6,OP6,2026-11-21 12:30:00,6 500,XOF,1 30,ACCEPTED\n"  # a space separates thousands
    "TXN-7\t,OP7,2026-11-21 12:31:00,5000,XOF,0,ACCEPTED\n"  # a tab and a no-break space around the
    "\u00a0TXN-8,OP8,\t2026-11-21 12:32:00-01:30 ,5000,XOF,0, ACCEPTED\u00a0\n"  # values, as Python strips them
)


def _stored(rt: Runtime, provider: str) -> list[tuple[Any, ...]]:
    with rt.sessions() as session:
        lines = session.scalars(
            select(StatementLine).where(StatementLine.provider == provider).order_by(StatementLine.line_no)
        ).all()
        return [tuple(getattr(line, c) for c in COLUMNS) for line in lines]


def _forget(rt: Runtime, provider: str) -> None:
    with rt.sessions() as session, session.begin():
        session.execute(delete(StatementLine).where(StatementLine.provider == provider))
        session.execute(delete(StatementImport).where(StatementImport.provider == provider))


@pytest.mark.parametrize("sessions", [1, 2, 3])
@pytest.mark.parametrize("provider", ["cinetpay", "mtn_momo", "orange_money", "wave", "tricky", "spaces_only"])
def test_optimistic_and_strict_paths_store_the_same_lines(
    rt: Runtime, provider: str, sessions: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One session or several side by side (as for a large file): the optimistic path stores what the
    strict one and the Python one do, and blank lines a spreadsheet leaves at the end do not matter."""
    monkeypatch.setattr(statements_pg, "PARALLEL_FROM", 1)
    path = ROOT / "docs" / "statements" / f"{provider}.csv"
    if provider == "tricky":
        provider, path = "cinetpay", tmp_path / "cinetpay.csv"
        path.write_text(TRICKY + "\r\n \n\n", encoding="utf-8")
    elif provider == "spaces_only":  # no tab, no no-break space: the optimistic path trims spaces, CR, LF only
        provider, path = "cinetpay", tmp_path / "cinetpay.csv"
        lines = [line for line in TRICKY.splitlines() if "\t" not in line and "\u00a0" not in line]
        path.write_bytes(("\r\n".join(lines) + "\r\n\r\n").encode())
    _same_three_ways(rt, provider, path, monkeypatch, sessions=sessions)


@pytest.mark.parametrize("sessions", [2, 3])
def test_a_large_file_s_pages_are_loaded_a_range_at_a_time_by_whichever_session_is_free(
    rt: Runtime, sessions: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Side by side, the sessions take the staged pages a range at a time (``_chunks``: the largest first, down to
    ``LAST_CHUNK_PAGES``): the lines, their numbers in the file among them, are those of the other paths."""
    monkeypatch.setattr(statements_pg, "PARALLEL_FROM", 1)
    monkeypatch.setattr(statements_pg, "LAST_CHUNK_PAGES", 2)
    path = tmp_path / "cinetpay.csv"
    rows = [f"TXN-{n},OP{n},2026-11-21 10:{n % 60:02d}:00,{5000 + n},XOF,{n % 7},ACCEPTED" for n in range(3000)]
    path.write_text(TRICKY + "\n".join(rows) + "\n", encoding="utf-8")
    chunks: list[Any] = []
    plan = statements_pg._chunks

    def spy(*args: Any, **kwargs: Any) -> Any:
        planned = plan(*args, **kwargs)
        chunks.append(planned)  # the optimistic path's, then the strict path's (in the default sessions)
        return planned

    monkeypatch.setattr(statements_pg, "_chunks", spy)
    _same_three_ways(rt, "cinetpay", path, monkeypatch, sessions=sessions)
    assert len({table for table, *_ in chunks[0]}) == sessions  # a part of the file each, copied side by side
    assert len(chunks[0]) > 2 * sessions  # ranges of each part


def test_a_refused_range_undoes_every_session_s_ranges_and_stops_the_others(
    rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line the optimistic path refuses in one range: the ranges both sessions converted before are rolled back
    with it, the ranges not started yet are left (the strict path names the line), nothing is stored, and the
    ``insert`` stage still ends at its total."""
    monkeypatch.setattr(statements_pg, "PARALLEL_FROM", 1)
    monkeypatch.setattr(statements_pg, "LAST_CHUNK_PAGES", 2)
    path = tmp_path / "cinetpay.csv"
    rows = [f"TXN-{n},OP{n},2026-11-21 10:00:00,5000,XOF,0,ACCEPTED" for n in range(3000)]
    rows[1500] = "TXN-1500,OP1500,2026-11-21 10:00:00,5000,XOF,0,LOST"  # in the first part's last range
    path.write_text("transaction_id,operator_id,payment_date,amount,currency,fees,status\n" + "\n".join(rows) + "\n")
    taken: list[tuple[str, bool]] = []
    both = threading.Barrier(2)
    optimistic = statements_pg._fast_insert

    def spy(*args: Any, **kwargs: Any) -> Any:
        result = optimistic(*args, **kwargs)
        taken.append((threading.current_thread().name, result is not None))
        if len(taken) <= 2:
            both.wait(timeout=30)  # each session has converted a range before either goes on
        return result

    chunks: list[Any] = []
    plan = statements_pg._chunks
    monkeypatch.setattr(statements_pg, "_chunks", lambda *a, **k: chunks.append(plan(*a, **k)) or chunks[-1])
    monkeypatch.setattr(statements_pg, "_fast_insert", spy)
    heard: list[tuple[str, int, int]] = []
    with pytest.raises(StatementError) as info, rt.sessions() as session, session.begin():
        import_file(session, "cinetpay", path, business_tz=TZ, sessions=2, progress=lambda *e: heard.append(e))
    assert info.value.errors == [(1502, "unknown status 'LOST'; expected one of ACCEPTED, REFUSED, "
                                        "WAITING_FOR_CUSTOMER, REFUNDED")]  # fmt: skip
    assert len({thread for thread, ok in taken if ok}) == 2  # both sessions had written ranges: undone
    assert False in {ok for _, ok in taken} and len(taken) < len(chunks[0])  # the ranges after it never ran
    assert _stored(rt, "cinetpay") == []
    inserted = [(done, total) for stage, done, total in heard if stage == "insert"]
    assert inserted[-1][0] == inserted[-1][1] == 3000


def test_a_range_of_pages_is_a_share_of_what_is_left_down_to_the_smallest() -> None:
    """``_chunks``: each part's pages in order, no page twice or left out; each range a quarter of the pages left
    for two sessions, at least ``LAST_CHUNK_PAGES``; a part's last range runs to its end."""
    parts = [("a", 0, 50_000, 600), ("b", 50_000, 49_000, 590)]
    chunks = statements_pg._chunks(parts, 2)
    end = statements_pg._END_TID
    for table, offset, _, pages in parts:
        mine = [(lo, hi) for t, o, lo, hi in chunks if t == table and o == offset]
        starts = [int(lo[1:].split(",")[0]) for lo, _ in mine]
        ends = [int(hi[1:].split(",")[0]) for _, hi in mine[:-1]]
        assert starts[0] == 0 and starts[1:] == ends and mine[-1][1] == end and starts[-1] < pages
    sizes = [int(hi[1:].split(",")[0]) - int(lo[1:].split(",")[0]) for _, _, lo, hi in chunks if hi != end]
    assert sizes == [298, 223, 148, 111, 83, 64, 64, 64]  # 1,190 pages: a quarter of what is left each time
    assert statements_pg._chunks([("a", 0, 0, 0)], 2) == [("a", 0, "(0,0)", end)]  # an empty part: one range


def _same_three_ways(
    rt: Runtime, provider: str, path: Path, monkeypatch: pytest.MonkeyPatch, *, sessions: int = 1
) -> None:
    """``path`` imported by the optimistic path (which must take it), the strict one and Python's: the same lines."""
    taken: list[bool] = []
    optimistic = statements_pg._fast_insert

    def spy(*args: Any, **kwargs: Any) -> Any:
        result = optimistic(*args, **kwargs)
        taken.append(result is not None)
        return result

    parts: list[Any] = []
    stage = statements_pg._stage

    def staged(*args: Any, **kwargs: Any) -> Any:
        parts[:] = stage(*args, **kwargs)
        return parts

    monkeypatch.setattr(statements_pg, "_fast_insert", spy)
    monkeypatch.setattr(statements_pg, "_stage", staged)
    with rt.sessions() as session, session.begin():
        fast = import_file(session, provider, path, business_tz=TZ, sessions=sessions)
    # A good file: the optimistic path, once in one session, or once per range of the staged pages side by side.
    assert taken == [True] * (1 if sessions == 1 else len(statements_pg._chunks(parts, sessions)))
    fast_lines = _stored(rt, provider)
    _forget(rt, provider)
    monkeypatch.setattr(statements_pg, "_fast_insert", lambda *a, **k: None)
    with rt.sessions() as session, session.begin():
        strict = import_file(session, provider, path, business_tz=TZ)
    assert (fast.rows, fast.days) == (strict.rows, strict.days)
    assert fast_lines == _stored(rt, provider) and len(fast_lines) == fast.rows
    _forget(rt, provider)
    monkeypatch.setattr(statements_pg, "import_copy", _refused)
    with rt.sessions() as session, session.begin():
        python = import_file(session, provider, path, business_tz=TZ)
    assert (python.rows, python.days) == (fast.rows, fast.days) and _stored(rt, provider) == fast_lines
    _forget(rt, provider)


def _refused(*args: Any, **kwargs: Any) -> Any:
    raise statements_pg.LayoutError("as if COPY had refused the file")


def _exported_twice(tmp_path: Path) -> tuple[Path, Path]:
    """A CinetPay day exported twice: three transactions in both (one refused since, with its amount corrected),
    one in the first only, one late in the second only."""
    header = "transaction_id,operator_id,payment_date,amount,currency,fees,status\n"
    ids = [new_reference() for _ in range(3)]
    same = [f"{ids[n]},OP{n},2026-11-21 1{n}:00:00,5000,XOF,0,ACCEPTED\n" for n in range(1, 3)]
    first, again = tmp_path / "first.csv", tmp_path / "again.csv"
    first.write_text(
        header + "".join(same) + f"{ids[0]},OP0,2026-11-21 10:00:00,5000,XOF,0,ACCEPTED\n"
        f"{new_reference()},OPX,2026-11-21 09:00:00,700,XOF,0,REFUSED\n"
    )
    again.write_text(
        header + "".join(same) + f"{ids[0]},OP0,2026-11-21 10:00:05,4000,XOF,0,REFUSED\n"
        f"{new_reference()},OPL,2026-11-21 23:00:00,900,XOF,0,ACCEPTED\n"
    )
    return first, again


def test_a_refund_row_sharing_its_payment_s_id_replaces_neither_and_lines_without_ids_match_nulls(
    rt: Runtime, tmp_path: Path
) -> None:
    """MTN lists a refund under its payment's transaction id, with the amount negative: two exports of the day, the
    payment in one, the refund in the other, keep both lines (one replacing the other lost the payment's fee and
    payout, or the refund). Lines without a transaction id match on the rest, a missing reference alike."""
    header = "reference_id,financial_transaction_id,date,amount,currency,fee,status\n"
    ref, txn = new_reference(), new_reference()
    bare = ",,2026-11-21 12:00:00,300,XOF,0,FAILED\n"  # no reference, no transaction id: in both files
    first, again = tmp_path / "mtn-1.csv", tmp_path / "mtn-2.csv"
    first.write_text(header + f"{ref},{txn},2026-11-21 10:00:00,5000,XOF,50,SUCCESSFUL\n" + bare)
    again.write_text(header + f"{ref},{txn},2026-11-21 16:00:00,-5000,XOF,0,REFUNDED\n" + bare)
    with rt.sessions() as session, session.begin():
        import_file(session, "mtn_momo", first, business_tz=TZ)
    with rt.sessions() as session, session.begin():
        second = import_file(session, "mtn_momo", again, business_tz=TZ)
    assert second.replaced == 1  # the bare line alone
    with rt.sessions() as session:
        kept = sorted(session.execute(select(StatementLine.status, StatementLine.amount)).all())
    assert kept == [("failed", 300), ("refunded", -5000), ("succeeded", 5000)]


def test_a_day_imported_again_replaces_the_copies_on_sqlite_too(tmp_path: Path) -> None:
    """The embedded demo's database: the same replacement, its days read back as dates."""
    from reconciliation import migrate
    from reconciliation.db import make_engine, session_factory, transaction

    url = f"sqlite:///{tmp_path / 'demo.sqlite'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        sessions = session_factory(engine)
        first, again = _exported_twice(tmp_path)
        with transaction(sessions) as session:
            kept = import_file(session, "cinetpay", first, business_tz=TZ)
        with transaction(sessions) as session:
            replacing = import_file(session, "cinetpay", again, business_tz=TZ)
        assert (replacing.rows, replacing.replaced, replacing.restated) == (4, 3, (date(2026, 11, 21),))
        with sessions() as session:
            counts = dict(
                session.execute(select(StatementLine.import_id, func.count()).group_by(StatementLine.import_id)).all()
            )
        assert counts == {kept.import_id: 1, replacing.import_id: 4}
    finally:
        engine.dispose()


@pytest.mark.parametrize("path", ["optimistic", "strict", "python"])
def test_a_day_imported_again_replaces_the_copies_on_every_path(
    rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Whichever path loads the second file (PostgreSQL's optimistic one, its strict one, the streamed Python one),
    its lines replace the first file's lines of the same transactions (by transaction id: one refused since, its
    amount and time corrected, too), and only those."""
    first, again = _exported_twice(tmp_path)
    with rt.sessions() as session, session.begin():
        kept = import_file(session, "cinetpay", first, business_tz=TZ)
    if path == "strict":
        monkeypatch.setattr(statements_pg, "_fast_insert", lambda *a, **k: None)
    elif path == "python":
        monkeypatch.setattr(statements_pg, "import_copy", _refused)
    with rt.sessions() as session, session.begin():
        replacing = import_file(session, "cinetpay", again, business_tz=TZ)
    assert (replacing.rows, replacing.replaced, replacing.restated) == (4, 3, (date(2026, 11, 21),))
    with rt.sessions() as session:
        counts = dict(
            session.execute(select(StatementLine.import_id, func.count()).group_by(StatementLine.import_id)).all()
        )
    assert counts == {kept.import_id: 1, replacing.import_id: 4}


def test_the_optimistic_path_leaves_the_session_time_zone_as_it_was(rt: Runtime) -> None:
    with rt.sessions() as session, session.begin():
        import_file(session, "cinetpay", ROOT / "docs" / "statements" / "cinetpay.csv", business_tz=TZ)
        assert session.connection().exec_driver_sql("SHOW TimeZone").scalar() != "Africa/Abidjan"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("TXN-9,OP9,2026-11-21 25:00:00,5000,XOF,0,ACCEPTED", "time"),  # passes the SQL checks, not the cast
        ("TXN-9,OP9,2026-02-30 10:00:00,5000,XOF,0,ACCEPTED", "time"),
        ("TXN-9,OP9,2026-11-21 10:00:00,.5,USD,0,ACCEPTED", "amount '.5': not a number"),
        ("TXN-9,OP9,2026-11-21 10:00:00,1e3,XOF,0,ACCEPTED", "amount '1e3': not a number"),
        ("TXN-9,OP9,2026-11-21 10:00:00,5000,XOF,abc,ACCEPTED", "fee 'abc': not a number"),
        ("TXN-9,OP9,now,5000,XOF,0,ACCEPTED", "time 'now'"),
        ("TXN-9,OP9,2026-11-21 10:00:00,5000,XOF,52.5,ACCEPTED", "fee '52.5': has more decimals than XOF allows"),
        ("TXN-9,OP9,2026-11-21 10:00:00,50.5,XOF,0,ACCEPTED", "amount '50.5': has more decimals than XOF allows"),
        ("TXN-9,OP9,2026-11-21 10:15 PM,5000,XOF,0,ACCEPTED", "time '2026-11-21 10:15 PM'"),
        ("TXN-9,OP9,2026-11-21 24:00:00,5000,XOF,0,ACCEPTED", "time '2026-11-21 24:00:00'"),
        ("TXN-9,OP9,2026-11-21 23:59:60,5000,XOF,0,ACCEPTED", "time '2026-11-21 23:59:60'"),
        ("TXN-9,OP9,2026-11-21 10:00:00z,5000,XOF,0,ACCEPTED", "time '2026-11-21 10:00:00z'"),
        ("TXN-9,OP9,2026-11-21 10:00:00.1234567,5000,XOF,0,ACCEPTED", "time '2026-11-21 10:00:00.1234567'"),
        ("TXN-9,OP9,2026-11-21 10:00 Europe/Paris,5000,XOF,0,ACCEPTED", "time '2026-11-21 10:00 Europe/Paris'"),
        ("\t,OP9,2026-11-21 10:00:00,5000,XOF,0,ACCEPTED", "a paid row without a reference"),
        ("TXN-9,OP9,2026-11-21 10:00,1.0000000000000000000000000001,XOF,0,ACCEPTED", "more decimals than XOF"),
        ("TXN-9,OP9,2026-11-21 10:00,99999999999999999999,XOF,0,ACCEPTED", "amount '99999999999999999999': too"),
        ("TXN-9,OP9,2026-11-31 10:00:00,5000,XOF,0,ACCEPTED", "time '2026-11-31 10:00:00'"),
        ("TXN-9,OP9,2027-02-29 10:00:00,5000,XOF,0,ACCEPTED", "time '2027-02-29 10:00:00'"),
        ("TXN-9,OP9,0001-01-01 00:00+01:00,5000,XOF,0,ACCEPTED", "time '0001-01-01 00:00+01:00'"),
        ("TXN-9,OP9,9999-12-31 23:59:59-01:00,5000,XOF,0,ACCEPTED", "time '9999-12-31 23:59:59-01:00'"),
        # The common layout, nearly: a separator or a space where a digit belongs, a wide digit, the years; and
        # values PostgreSQL's cast would take (wrongly) if the shape were not checked digit by digit: a T or a
        # letter in a digit's place.
        ("TXN-9,OP9,2026-1--21 10:00:00,5000,XOF,0,ACCEPTED", "time '2026-1--21 10:00:00'"),
        ("TXN-9,OP9,2026-11-21  0:00:00,5000,XOF,0,ACCEPTED", "time '2026-11-21  0:00:00'"),
        ("TXN-9,OP9,2026-11-21 1\uff10:00:00,5000,XOF,0,ACCEPTED", "time '2026-11-21 1\uff10:00:00'"),  # a wide 0
        ("TXN-9,OP9,1969-12-31 23:59:59,5000,XOF,0,ACCEPTED", "time '1969-12-31 23:59:59'"),
        ("TXN-9,OP9,3000-01-01 00:00:00,5000,XOF,0,ACCEPTED", "time '3000-01-01 00:00:00'"),
        ("TXN-9,OP9,2026-11-2T 10:00:00,5000,XOF,0,ACCEPTED", "time '2026-11-2T 10:00:00'"),
        ("TXN-9,OP9,2026-11-21 10:00:0s,5000,XOF,0,ACCEPTED", "time '2026-11-21 10:00:0s'"),
        ("TXN-9,OP9,2026-11-21 a0:00:00,5000,XOF,0,ACCEPTED", "time '2026-11-21 a0:00:00'"),
        # What PostgreSQL's timestamps read and write back as given (the common layout's check), Python refuses.
        ("TXN-9,OP9,29999-01-01 00:00:00,5000,XOF,0,ACCEPTED", "time '29999-01-01 00:00:00'"),
        ("TXN-9,OP9,19700-01-01 00:00:00,5000,XOF,0,ACCEPTED", "time '19700-01-01 00:00:00'"),
        ("TXN-9,OP9,infinity,5000,XOF,0,ACCEPTED", "time 'infinity'"),
        ("TXN-9,OP9,-infinity,5000,XOF,0,ACCEPTED", "time '-infinity'"),
        ("TXN-9,OP9,2026-11-21 10:00:00 BC,5000,XOF,0,ACCEPTED", "time '2026-11-21 10:00:00 BC'"),
        ("TXN-9,OP9,2026-11-21 10:00:00.5 BC,5000,XOF,0,ACCEPTED", "time '2026-11-21 10:00:00.5 BC'"),
        # What a bigint reads (the whole numbers' check) and Python refuses.
        ("TXN-9,OP9,2026-11-21 10:00:00,+5000,XOF,0,ACCEPTED", "amount '+5000': not a number"),
        ("TXN-9,OP9,2026-11-21 10:00:00,5000,XOF,+50,ACCEPTED", "fee '+50': not a number"),
        ("TXN-9,OP\x009,2026-11-21 10:00:00,5000,XOF,0,ACCEPTED", "a NUL character (byte 0)"),
        # Longer than statement_lines keeps: named, not refused by the database with no line.
        ("R" * 101 + ",OP9,2026-11-21 10:00:00,5000,XOF,0,ACCEPTED", f"reference {'R' * 30!r}... has 101 characters"),
        ("TXN-9," + "O" * 201 + ",2026-11-21 10:00:00,5000,XOF,0,ACCEPTED", "transaction id 'OOOO"),
    ],
)
@pytest.mark.parametrize("path_taken", ["database", "side_by_side", "python"])
def test_a_bad_value_is_named_with_its_line_whichever_path_finds_it(
    rt: Runtime, tmp_path: Path, row: str, message: str, path_taken: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path_taken == "side_by_side":
        monkeypatch.setattr(statements_pg, "PARALLEL_FROM", 1)
    if path_taken == "python":
        monkeypatch.setattr(statements_pg, "import_copy", _refused)
    path = tmp_path / "cinetpay.csv"
    path.write_text(TRICKY + row + "\n", encoding="utf-8")
    with pytest.raises(StatementError) as info, rt.sessions() as session, session.begin():
        import_file(session, "cinetpay", path, business_tz=TZ)
    assert [n for n, _ in info.value.errors] == [10]
    assert message in info.value.errors[0][1]
    assert _stored(rt, "cinetpay") == []


@pytest.mark.parametrize("quoted", ["a line break", "one line"])
def test_a_file_cut_inside_a_quoted_value_is_staged_whole(
    rt: Runtime, tmp_path: Path, quoted: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large file is cut in parts at line ends; a line end inside a quoted value is no place to cut (COPY
    refuses the part before it), and the file is then staged whole: the lines are those of the other paths."""
    monkeypatch.setattr(statements_pg, "PARALLEL_FROM", 1)
    lines = [f"line {k} of OP3, a value" for k in range(8)]  # 190 characters: a transaction id holds 200
    value = '"' + ("\n" if quoted == "a line break" else " ").join(lines) + '"'
    rows = [f"TXN-{n},OP{n},2026-11-21 10:00:{n:02d},5000,XOF,0,ACCEPTED" for n in range(1, 7)]
    rows[2] = f"TXN-3,{value},2026-11-21 10:00:03,5000,XOF,0,ACCEPTED"
    path = tmp_path / "cinetpay.csv"
    path.write_text("transaction_id,operator_id,payment_date,amount,currency,fees,status\n" + "\n".join(rows) + "\n")
    data = path.read_bytes()
    cuts = statements_pg._cuts(path, len(data), 2)
    middle = cuts[0][1]  # the cut, just after a line feed
    # The middle of the file is inside the quoted value: with line breaks in it, the cut falls there.
    assert data.index(b'"line 0') < middle < data.index(b'7 of OP3, a value"') + (quoted == "one line") * len(data)
    staged: list[int] = []
    stage = statements_pg._stage

    def spy(*args: Any, **kwargs: Any) -> Any:
        parts = stage(*args, **kwargs)
        staged.append(len(parts))
        return parts

    monkeypatch.setattr(statements_pg, "_stage", spy)
    _same_three_ways(rt, "cinetpay", path, monkeypatch, sessions=2)
    assert staged[0] == (1 if quoted == "a line break" else 2)


@pytest.mark.parametrize("sessions", [1, 2])
def test_an_identifier_too_long_is_named_by_the_database_paths_themselves(
    rt: Runtime, tmp_path: Path, sessions: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The strict path checks the lengths too: the line is named without falling back to the Python path."""
    from reconciliation.statements import files

    def python_path(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the Python path ran")

    monkeypatch.setattr(files, "_Parser", python_path)
    monkeypatch.setattr(statements_pg, "PARALLEL_FROM", 1)
    path = tmp_path / "cinetpay.csv"
    path.write_text(TRICKY + "TXN-9," + "O" * 201 + ",2026-11-21 10:00:00,5000,XOF,0,ACCEPTED\n", encoding="utf-8")
    with pytest.raises(StatementError) as info, rt.sessions() as session, session.begin():
        import_file(session, "cinetpay", path, business_tz=TZ, sessions=sessions)
    assert info.value.errors == [(10, f"transaction id {'O' * 30!r}... has 201 characters, more than the 200 kept")]


@pytest.mark.parametrize("fee", [False, True])
def test_the_strict_path_names_every_bad_row_as_python_does_numbers_too_large_included(
    rt: Runtime, tmp_path: Path, fee: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A number too large for a bigint is a bad row on the strict path too: it names it with the others, not only
    the rows after it (the insert it would have failed never runs when another row is bad)."""
    huge = "99999999999999999999"
    path = tmp_path / "cinetpay.csv"
    path.write_text(
        "transaction_id,operator_id,payment_date,amount,currency,fees,status\n"
        f"TXN-1,OP1,2026-11-21 10:00:00,{'5000' if fee else huge},XOF,{huge if fee else '0'},ACCEPTED\n"
        f"{'R' * 101},OP2,2026-11-21 10:00:00,5000,XOF,0,ACCEPTED\n",
        encoding="utf-8",
    )
    found = []
    for way in ("database", "python"):
        if way == "python":
            monkeypatch.setattr(statements_pg, "import_copy", _refused)
        with pytest.raises(StatementError) as info, rt.sessions() as session, session.begin():
            import_file(session, "cinetpay", path, business_tz=TZ)
        found.append(info.value.errors)
    assert found[0] == found[1]
    assert [n for n, _ in found[0]] == [2, 3] and found[0][0][1] == f"{'fee' if fee else 'amount'} '{huge}': too large"


def test_identifiers_as_long_as_kept_are_imported_the_same_three_ways(
    rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reference of 100 characters and a transaction id of 200, once trimmed: at the limit, not over it."""
    path = tmp_path / "cinetpay.csv"
    path.write_text(
        "transaction_id,operator_id,payment_date,amount,currency,fees,status\n"
        f" {'R' * 100} , {'O' * 200} ,2026-11-21 10:00:00,5000,XOF,0,ACCEPTED\n",
        encoding="utf-8",
    )
    _same_three_ways(rt, "cinetpay", path, monkeypatch)
    with rt.sessions() as session, session.begin():
        import_file(session, "cinetpay", path, business_tz=TZ)
    assert [(line[3], line[2]) for line in _stored(rt, "cinetpay")] == [("R" * 100, "O" * 200)]
    _forget(rt, "cinetpay")


def _stage_tables(rt: Runtime) -> list[str]:
    with rt.sessions() as session:
        return list(
            session.scalars(
                text(
                    "SELECT relname FROM pg_class WHERE relkind = 'r' "
                    "AND relname LIKE 'payrecon\\_stage\\_%' ORDER BY relname"
                )
            )
        )


def test_lines_written_side_by_side_stay_invisible_until_their_import_commits(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(statements_pg, "PARALLEL_FROM", 1)
    sample = ROOT / "docs" / "statements" / "cinetpay.csv"
    with rt.sessions() as session, session.begin():
        imported = import_file(session, "cinetpay", sample, business_tz=TZ)
        with rt.sessions() as reader:  # another transaction, while the import is not committed yet
            written = reader.scalar(select(func.count()).select_from(StatementLine))
            usable = reader.scalar(select(func.count()).select_from(StatementLine).where(visible()))
        assert (written, usable) == (imported.rows, 0)
    with rt.sessions() as reader:
        assert reader.scalar(select(func.count()).select_from(StatementLine).where(visible())) == imported.rows
    assert _stage_tables(rt) == []  # dropped with the import


def test_a_run_does_not_use_the_lines_of_an_import_still_in_progress(
    rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_reconciliation import DAY, classes, payment, policy

    monkeypatch.setattr(statements_pg, "PARALLEL_FROM", 1)
    ref = new_reference()
    payment(rt, ref, PaymentStatus.SUCCEEDED)
    path = tmp_path / "cinetpay.csv"
    path.write_text(
        "transaction_id,operator_id,payment_date,amount,currency,fees,status\n"
        f"{ref},OP1,2026-11-20 12:00:00,5000,XOF,0,ACCEPTED\n",
        encoding="utf-8",
    )
    with rt.sessions() as session, session.begin():
        import_file(session, "cinetpay", path, business_tz=TZ)
        during = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))
    after = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))
    assert classes(rt, during) == {ref: "missing_at_provider"}  # not the provider's word yet
    assert classes(rt, after) == {ref: "matched"}


def test_a_load_that_never_committed_is_swept_by_the_next_import(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statements_pg, "PARALLEL_FROM", 1)
    docs = ROOT / "docs" / "statements"

    class Crash(Exception):
        pass

    with pytest.raises(Crash), rt.sessions() as session, session.begin():
        import_file(session, "cinetpay", docs / "cinetpay.csv", business_tz=TZ)
        raise Crash  # the process dies before the import commits: its lines were written by side sessions
    left = _stage_tables(rt)  # a stage table per part of the file, each loaded by its own session
    assert len(left) == statements_pg.WORKERS
    assert left == sorted([left[0], *(f"{left[0]}_{k}" for k in range(1, len(left)))])
    with rt.sessions() as session:
        assert session.scalar(select(func.count()).select_from(StatementLine)) > 0
        assert session.scalar(select(func.count()).select_from(StatementLine).where(visible())) == 0
    with rt.sessions() as session, session.begin():
        kept = import_file(session, "wave", docs / "wave.csv", business_tz=TZ)
    with rt.sessions() as session:
        providers = session.scalars(select(StatementLine.provider).distinct()).all()
        assert providers == ["wave"] and session.scalar(select(func.count()).select_from(StatementLine)) == kept.rows
    assert _stage_tables(rt) == []


def test_the_bulk_tables_take_their_ids_a_thousand_at_a_time(rt: Runtime) -> None:
    """Two sessions writing one file or one run side by side do not queue on one sequence page."""
    with rt.sessions() as session:
        caches = dict(
            session.execute(
                text("SELECT sequencename, cache_size FROM pg_sequences WHERE sequencename LIKE '%_id_seq'")
            ).all()
        )
    assert caches["statement_lines_id_seq"] == caches["recon_items_id_seq"] == 1000
    assert caches["payments_id_seq"] == 1  # the others keep PostgreSQL's default


def test_a_run_takes_the_lines_of_its_business_day_in_a_zone_that_is_not_utc(rt: Runtime, tmp_path: Path) -> None:
    """Lines on both sides of Lagos midnight (UTC+1): the statement's day is Lagos's, as the payments' is."""
    from tests.test_reconciliation import DAY, classes, payment, policy

    lagos = ZoneInfo("Africa/Lagos")
    times = {
        "before": datetime(2026, 11, 19, 22, 59, tzinfo=UTC),  # 23:59 on the 19th in Lagos
        "inside": datetime(2026, 11, 19, 23, 1, tzinfo=UTC),  # 00:01 on the 20th
        "after": datetime(2026, 11, 20, 23, 1, tzinfo=UTC),  # 00:01 on the 21st
    }
    refs = {name: new_reference() for name in times}
    rows = ["transaction_id,operator_id,payment_date,amount,currency,fees,status"]
    for name, at in times.items():
        payment(rt, refs[name], PaymentStatus.SUCCEEDED, at=at)
        rows.append(f"{refs[name]},OP-{name},{at:%Y-%m-%d %H:%M:%S},5000,XOF,0,ACCEPTED")  # Abidjan: UTC
    path = tmp_path / "cinetpay.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with rt.sessions() as session, session.begin():
        imported = import_file(session, "cinetpay", path, business_tz=lagos)
    assert imported.days == (date(2026, 11, 19), date(2026, 11, 20), date(2026, 11, 21))
    run_id = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt, tz=lagos))
    assert classes(rt, run_id) == {refs["inside"]: "matched"}


def test_every_share_of_a_run_sees_the_same_database(
    rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import committing while a run is classified counts for every reference of the run or none."""
    from reconciliation.nightly import matching
    from tests.test_reconciliation import DAY, classes, payment, policy

    refs = [new_reference() for _ in range(12)]
    for ref in refs:
        payment(rt, ref, PaymentStatus.SUCCEEDED)
    path = tmp_path / "cinetpay.csv"
    path.write_text(
        "transaction_id,operator_id,payment_date,amount,currency,fees,status\n"
        + "".join(f"{ref},OP,2026-11-20 12:00:00,5000,XOF,0,ACCEPTED\n" for ref in refs),
        encoding="utf-8",
    )
    importing = rt.sessions()
    importing.begin()
    import_file(importing, "cinetpay", path, business_tz=TZ)  # finance's import, about to commit
    first_done, committed = threading.Event(), threading.Event()
    real = matching.classify

    def classify(session: Any, run_id: int, window: Any, day: Any, part: Any = None) -> int:
        if part is not None and part[0] == 1:
            assert committed.wait(10)  # the second share starts after the import committed
        written = real(session, run_id, window, day, part)
        if part is not None and part[0] == 0:
            first_done.set()
        return written

    def commit_the_import() -> None:
        assert first_done.wait(10)
        importing.commit()
        importing.close()
        committed.set()

    monkeypatch.setattr(runs, "classify", classify)
    importer = threading.Thread(target=commit_the_import)
    importer.start()
    during = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt, sessions=2))
    importer.join()
    assert set(classes(rt, during).values()) == {"missing_at_provider"}  # the day as it was when the run began
    after = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt, sessions=2))
    assert set(classes(rt, after).values()) == {"matched"}


def test_a_line_copy_would_read_as_the_end_of_the_data_is_a_bad_row(rt: Runtime, tmp_path: Path) -> None:
    """COPY stops at a line that is only a backslash and a dot, even in CSV: the file goes down the
    Python path, which names that line, rather than being imported short."""
    path = tmp_path / "cinetpay.csv"
    path.write_text(TRICKY + "\\.\r\n" + "TXN-9,OP9,2026-11-21 10:00:00,5000,XOF,0,ACCEPTED\n", encoding="utf-8")
    with pytest.raises(StatementError) as info, rt.sessions() as session, session.begin():
        import_file(session, "cinetpay", path, business_tz=TZ)
    assert info.value.errors == [(10, "1 fields, the header has 7")]
    assert _stored(rt, "cinetpay") == []


def test_the_same_file_imported_twice_at_once_is_refused_clearly(rt: Runtime) -> None:
    sample = ROOT / "docs" / "statements" / "orange_money.csv"
    outcome: list[str] = []
    first = rt.sessions()
    first.begin()
    import_file(first, "orange_money", sample, business_tz=TZ)  # not committed yet

    def second() -> None:
        try:
            with rt.sessions() as session, session.begin():
                import_file(session, "orange_money", sample, business_tz=TZ)  # waits on the first's key
            outcome.append("imported")
        except StatementError as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(1)  # the second import is waiting for the first to end
    first.commit()
    first.close()
    thread.join(10)
    assert outcome == ["orange_money.csv was already imported for orange_money (same SHA-256)"]


@pytest.mark.parametrize("path_taken", ["database", "python"])
def test_every_bad_row_is_named_even_one_only_a_cast_would_refuse(
    rt: Runtime, tmp_path: Path, path_taken: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path_taken == "python":
        monkeypatch.setattr(statements_pg, "import_copy", _refused)
    path = tmp_path / "cinetpay.csv"
    lines = TRICKY.splitlines()
    lines[1] = lines[1].replace("xof", "ZZZ")
    lines.append("TXN-9,OP9,2026-11-31 10:00:00,5000,XOF,0,ACCEPTED")  # a day November has not
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(StatementError) as info, rt.sessions() as session, session.begin():
        import_file(session, "cinetpay", path, business_tz=TZ)
    assert [n for n, _ in info.value.errors] == [2, 10]


def test_quotes_inside_fields_are_read_as_python_reads_them(
    rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COPY would read ``OP"9"X`` as ``OP9X``: such a file is read by the Python path, one way."""
    path = tmp_path / "cinetpay.csv"
    path.write_text(
        TRICKY + 'TXN-9,OP"9"X,2026-11-21 10:00,5000,XOF,0,ACCEPTED\n'
        'TXN""10, "OP10",2026-11-21 10:00,5000,XOF,0,ACCEPTED\n',
        encoding="utf-8",
    )
    with rt.sessions() as session, session.begin():
        import_file(session, "cinetpay", path, business_tz=TZ)
    stored = _stored(rt, "cinetpay")
    assert [(line[2], line[3]) for line in stored[-2:]] == [('OP"9"X', "TXN-9"), ('"OP10"', 'TXN""10')]
    _forget(rt, "cinetpay")
    monkeypatch.setattr(statements_pg, "import_copy", _refused)
    with rt.sessions() as session, session.begin():
        import_file(session, "cinetpay", path, business_tz=TZ)
    assert _stored(rt, "cinetpay") == stored


def test_lines_ending_with_a_cr_alone_are_read_line_by_line(rt: Runtime, tmp_path: Path) -> None:
    """COPY would take a line of a backslash and a dot for the end of such a file: nothing is cut short."""
    path = tmp_path / "cinetpay.csv"
    rows = TRICKY.splitlines()[:3]
    path.write_bytes("\r".join([*rows, "\\.", "TXN-9,OP9,2026-11-21 10:00:00,5000,XOF,0,ACCEPTED", ""]).encode())
    with pytest.raises(StatementError) as info, rt.sessions() as session, session.begin():
        import_file(session, "cinetpay", path, business_tz=TZ)
    assert info.value.errors == [(4, "1 fields, the header has 7")]
    path.write_bytes("\r".join([*rows, ""]).encode())
    with rt.sessions() as session, session.begin():
        assert import_file(session, "cinetpay", path, business_tz=TZ).rows == 2


def test_a_file_that_is_not_utf8_is_refused_with_its_line(rt: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "cinetpay.csv"
    path.write_bytes(TRICKY.encode() + b"TXN-9,OP\xe99,2026-11-21 10:00:00,5000,XOF,0,ACCEPTED\n")  # Latin-1
    with pytest.raises(StatementError) as info, rt.sessions() as session, session.begin():
        import_file(session, "cinetpay", path, business_tz=TZ)
    assert [n for n, _ in info.value.errors] == [10] and "not UTF-8" in str(info.value)
    assert _stored(rt, "cinetpay") == []


def test_the_whitespace_trimmed_in_sql_is_what_python_strips() -> None:
    assert "".join(chr(c) for c in range(0x110000) if chr(c).isspace()) == statements_pg.WHITESPACE


@pytest.mark.parametrize("way", ["side_by_side", "one_session", "python"])
def test_an_import_reports_each_stage_until_done(
    rt: Runtime, way: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each stage starts at 0 and ends at its total, never going back; a large file loaded by four
    sessions (a part of the file each) reports each one's part as it ends; the Python path reports its rows."""
    path = tmp_path / "cinetpay.csv"
    rows = [f"T{n},OP{n},2026-11-21 10:00:00,5000,XOF,0,ACCEPTED" for n in range(1, 41)]
    path.write_text("transaction_id,operator_id,payment_date,amount,currency,fees,status\n" + "\n".join(rows) + "\n")
    monkeypatch.setattr(statements_pg, "PARALLEL_FROM", 1 if way == "side_by_side" else 10**9)
    if way == "python":
        monkeypatch.setattr(statements_pg, "import_copy", _refused)
    heard: list[tuple[str, int, int]] = []
    with rt.sessions() as session, session.begin():
        imported = import_file(
            session, "cinetpay", path, business_tz=TZ, sessions=4, progress=lambda *e: heard.append(e)
        )
    assert imported.rows == 40
    stages = list(dict.fromkeys(stage for stage, _, _ in heard))
    size = path.stat().st_size
    expected = {"python": ["checksum", "rows"]}.get(way, ["checksum", "check", "copy", "insert"])
    assert stages == expected
    for stage in stages:
        seen = [(done, total) for s, done, total in heard if s == stage]
        assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1], (stage, seen)
        assert [d for d, _ in seen] == sorted(d for d, _ in seen), (stage, seen)
        assert seen[-1][1] == {"checksum": size, "check": size, "copy": size}.get(stage, 40)
    inserts = [done for stage, done, _ in heard if stage == "insert"]
    assert inserts == ([0, 10, 20, 30, 40] if way == "side_by_side" else [0, 40] if way == "one_session" else [])


@pytest.mark.parametrize(
    "time_", ["2026-11-21 10:00:0s", "2026-11-2T 10:00:00", "2026-11-21  0:00:00", "1969-12-31 23:59:59"]
)
@pytest.mark.parametrize("edge", ["", " "])
def test_a_file_without_tabs_keeps_the_time_checks_trimmed_or_not(
    rt: Runtime, tmp_path: Path, time_: str, edge: str
) -> None:
    """A file whose only whitespace is spaces, CR and LF is converted untrimmed (``statements_pg.NONE``), or, with a
    space at a field's edge, trimmed with the narrow set (``NARROW``): the time checks hold either way."""
    path = tmp_path / "cinetpay.csv"
    path.write_text(
        "transaction_id,operator_id,payment_date,amount,currency,fees,status\r\n"
        f"TXN-1,{edge}OP1,2026-11-21 09:00:00,5000,XOF,0,ACCEPTED\r\n"
        f"TXN-2,OP2,{time_},5000,XOF,0,ACCEPTED\r\n",
        encoding="utf-8",
    )
    assert statements_pg._scan(path)[1] == (statements_pg.NARROW if edge else statements_pg.NONE)
    with pytest.raises(StatementError) as info, rt.sessions() as session, session.begin():
        import_file(session, "cinetpay", path, business_tz=TZ)
    assert info.value.errors == [(3, info.value.errors[0][1])]
    assert f"time '{time_}'" in info.value.errors[0][1]


GOOD = "TXN-1,OP1,2026-11-21 10:00:00,5000,XOF,0,ACCEPTED"


@pytest.mark.parametrize(
    ("lines", "whitespace"),
    [
        # Nothing to trim; whole numbers PostgreSQL writes otherwise (a leading zero, -0), a fraction of a second.
        ([GOOD, "TXN-2,OP2,2026-11-21 11:00:00.5,05000,xof,-0,accepted"], statements_pg.NONE),
        ([GOOD, "TXN-2,OP2,2026-11-21 11:00:00,-9223372036854775808,XOF,0,ACCEPTED"], statements_pg.NONE),  # bigint's
        ([GOOD, "TXN-2, OP2,2026-11-21 11:00:00,5000,XOF,0,ACCEPTED"], statements_pg.NARROW),  # after a comma
        ([GOOD, "TXN-2 ,OP2,2026-11-21 11:00:00,5000,XOF,0,ACCEPTED"], statements_pg.NARROW),  # before one
        ([GOOD, " TXN-2,OP2,2026-11-21 11:00:00,5000,XOF,0,ACCEPTED"], statements_pg.NARROW),  # a line's start
        ([" TXN-2,OP2,2026-11-21 11:00:00,5000,XOF,0,ACCEPTED", GOOD], statements_pg.NARROW),  # the first line's
        (["TXN-2,OP2,2026-11-21 11:00:00,5000,XOF,0,ACCEPTED ", GOOD], statements_pg.NARROW),  # a line's end
        ([GOOD, "TXN-2,OP2,2026-11-21 11:00:00,5000,XOF,0,ACCEPTED "], statements_pg.NARROW),  # the file's end
        ([GOOD, '"TXN-2 ",OP2,2026-11-21 11:00:00,5000,XOF,0,ACCEPTED'], statements_pg.NARROW),  # in quotes
        ([GOOD, '" TXN-2",OP2,2026-11-21 11:00:00,5000,XOF,0,ACCEPTED'], statements_pg.NARROW),
        ([GOOD, '"TXN-2\n",OP2,2026-11-21 11:00:00,5000,XOF,0,ACCEPTED'], statements_pg.NARROW),  # a quoted LF
        ([GOOD, 'TXN-2,"\r\nOP2",2026-11-21 11:00:00,5000,XOF,0,ACCEPTED'], statements_pg.NARROW),
        ([GOOD, 'TXN-2,"OP2\n",2026-11-21 11:00:00,5000,XOF,0,ACCEPTED'], statements_pg.NARROW),  # the last LF
        ([GOOD, 'TXN-2,"OP2\r\n",2026-11-21 11:00:00,5000,XOF,0,ACCEPTED'], statements_pg.NARROW),
        ([GOOD, "TXN-2\x0b,OP2,2026-11-21 11:00:00,5000,XOF,0,ACCEPTED"], statements_pg.WIDE),
    ],
)
@pytest.mark.parametrize("ending", ["\n", "\r\n", ""])
def test_only_whitespace_at_a_fields_edge_is_trimmed_and_all_of_it_is(
    rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: list[str], whitespace: str, ending: str
) -> None:
    """A file none of whose fields starts or ends with whitespace is converted without trimming (most are:
    ``statements_pg._scan``); one space at any field's edge, and the file's fields are trimmed as Python strips
    them. ``ending``: after each line, or (empty) LF between lines and none after the last."""
    path = tmp_path / "cinetpay.csv"
    header = "transaction_id,operator_id,payment_date,amount,currency,fees,status"
    path.write_text((ending or "\n").join([header, *lines]) + ending, encoding="utf-8", newline="")
    assert statements_pg._scan(path)[1] == whitespace
    _same_three_ways(rt, "cinetpay", path, monkeypatch)


def test_a_quoted_line_break_at_the_end_of_a_block_read_is_trimmed(
    rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``statements_pg._scan`` reads the file a MiB at a time, cut after the last LF: a quoted field whose LF is
    that last one has its closing quote in the next block, and is trimmed all the same."""
    before = 'TXN-X,"OP-X'  # then the LF at byte 1 MiB - 1, the closing quote at 1 MiB
    filler = "TXN-F,OP-F,2026-11-21 10:00:00,5000,XOF,0,ACCEPTED\n"
    head = "transaction_id,operator_id,payment_date,amount,currency,fees,status\n"
    lines, pad = divmod((1 << 20) - 1 - len(head) - len(before) - len(filler), len(GOOD) + 1)
    head += (GOOD + "\n") * lines
    filler = filler.replace("OP-F", "OP-F" + "F" * pad)
    text_ = head + filler + before + '\n",2026-11-21 11:00:00,5000,XOF,0,ACCEPTED\n'
    assert text_.index('\n",2026') == (1 << 20) - 1
    path = tmp_path / "cinetpay.csv"
    path.write_text(text_, encoding="utf-8", newline="")
    assert statements_pg._scan(path)[1] == statements_pg.NARROW
    _same_three_ways(rt, "cinetpay", path, monkeypatch)
