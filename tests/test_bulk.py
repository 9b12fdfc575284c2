"""reconciliation.bulk writes the rows SQLAlchemy's own statements would (PostgreSQL, arrays)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.exc import DataError

from reconciliation import bulk
from reconciliation.db import transaction
from reconciliation.dialect import insert
from reconciliation.models import InboxDelivery, InboxStatus
from worker.runtime import Runtime

INBOX = cast(Table, InboxDelivery.__table__)
NOW = datetime(2026, 12, 6, 1, 2, 3, 456789, tzinfo=UTC)


def _row(key: str, **extra: Any) -> dict[str, Any]:
    # Enum, JSON (with a None in it), aware timestamps, NULLs; repeat_count, detail, attempts... left
    # to their Python-side defaults.
    return {
        "provider": "cinetpay",
        "dedupe_key": key,
        "status": InboxStatus.RECEIVED,
        "reference": None,
        "method": "POST",
        "path": "/webhooks/cinetpay",
        "headers": {"x-token": "é", "empty": None},
        "body": "cpm_trans_id=1",
        "envelope_raw": "{}",
        "received_at": NOW.astimezone(tz=None),
        "first_seen_at": NOW,
        "last_seen_at": NOW,
        "next_attempt_at": None,
        **extra,
    }


def _read(rt: Runtime, keys: list[str]) -> list[dict[str, Any]]:
    with rt.sessions() as session:
        rows = session.execute(select(INBOX).where(INBOX.c.dedupe_key.in_(keys)).order_by(INBOX.c.dedupe_key))
        return [{k: v for k, v in row._mapping.items() if k not in ("id", "dedupe_key")} for row in rows]


def test_inserted_rows_are_those_sqlalchemy_inserts(rt: Runtime) -> None:
    with transaction(rt.sessions) as session:
        session.execute(insert(session, INBOX), [_row("a-sqlalchemy"), _row("b-sqlalchemy", reference="R1")])
        returned = bulk.insert_rows(
            session, INBOX, [_row("a-bulk"), _row("b-bulk", reference="R1")], returning=("dedupe_key", "status")
        )
    assert sorted(tuple(r) for r in returned) == [("a-bulk", "received"), ("b-bulk", "received")]
    assert _read(rt, ["a-bulk", "b-bulk"]) == _read(rt, ["a-sqlalchemy", "b-sqlalchemy"])
    assert _read(rt, ["a-bulk"])[0]["headers"] == {"x-token": "é", "empty": None}


def test_updated_rows_are_those_sqlalchemy_updates(rt: Runtime) -> None:
    with transaction(rt.sessions) as session:
        bulk.insert_rows(session, INBOX, [_row(k) for k in ("a-sqlalchemy", "b-sqlalchemy", "a-bulk", "b-bulk")])
    with rt.sessions() as session:
        ids = {key: id_ for key, id_ in session.execute(select(INBOX.c.dedupe_key, INBOX.c.id))}
    later = NOW + timedelta(minutes=5)

    def changes(prefix: str) -> list[dict[str, Any]]:
        return [
            {"id": ids[f"a-{prefix}"], "status": InboxStatus.PROCESSED, "detail": "done", "next_attempt_at": None},
            {"id": ids[f"b-{prefix}"], "status": InboxStatus.FAILED, "detail": "", "next_attempt_at": later},
        ]

    with transaction(rt.sessions) as session:
        session.execute(
            update(INBOX)
            .where(INBOX.c.id == bindparam("b_id"))
            .values({name: bindparam("b_" + name) for name in ("status", "detail", "next_attempt_at")}),
            [{"b_" + k: v for k, v in row.items()} for row in changes("sqlalchemy")],
        )
        bulk.update_rows(session, INBOX, changes("bulk"))
    assert _read(rt, ["a-bulk", "b-bulk"]) == _read(rt, ["a-sqlalchemy", "b-sqlalchemy"])
    assert [r["status"] for r in _read(rt, ["a-bulk", "b-bulk"])] == ["processed", "failed"]


def test_a_naive_timestamp_is_refused_as_the_orm_refuses_it(rt: Runtime) -> None:
    with pytest.raises(ValueError, match="naive datetime"), transaction(rt.sessions) as session:
        bulk.insert_rows(session, INBOX, [_row("naive", received_at=datetime(2026, 12, 6, 1, 2, 3))])  # noqa: DTZ001


@pytest.mark.parametrize("how", ["insert", "update"])
def test_a_value_too_long_for_its_column_is_refused_not_cut(rt: Runtime, how: str) -> None:
    """As SQLAlchemy's statements: an over-long value is an error, never stored cut (a provider's transaction id
    cut short would no longer match its statement line)."""
    too_long = "k" * (INBOX.c.dedupe_key.type.length + 1)  # type: ignore[attr-defined]
    with transaction(rt.sessions) as session:
        (stored,) = bulk.insert_rows(session, INBOX, [_row("fits")], returning=("id",))
    with pytest.raises(DataError, match="value too long"), transaction(rt.sessions) as session:
        if how == "insert":
            bulk.insert_rows(session, INBOX, [_row(too_long)])
        else:
            bulk.update_rows(session, INBOX, [{"id": stored.id, "dedupe_key": too_long}])
    with rt.sessions() as session:
        assert session.scalars(select(INBOX.c.dedupe_key)).all() == ["fits"]


def test_rows_of_different_keys_or_an_update_twice_of_one_row_are_refused(rt: Runtime) -> None:
    with pytest.raises(ValueError, match="same keys"), transaction(rt.sessions) as session:
        bulk.insert_rows(session, INBOX, [_row("a"), {**_row("b"), "detail": "only here"}])
    with pytest.raises(ValueError, match="with the same id"), transaction(rt.sessions) as session:
        bulk.update_rows(session, INBOX, [{"id": 1, "detail": "x"}, {"id": 1, "detail": "y"}])


def test_a_value_every_row_shares_is_sent_once(rt: Runtime) -> None:
    """A column whose value is the same in every row (a batch's status, its time, its counters) is one scalar
    parameter, not an array of the value repeated; the rows are the same, inserted and updated, and a column that
    differs in one row stays an array. The update's key is always an array."""
    from sqlalchemy import event

    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        sent.append(statement)

    keys = [f"same-{n}" for n in range(3)]
    event.listen(rt.engine, "before_cursor_execute", record)
    try:
        with transaction(rt.sessions) as session:
            returned = bulk.insert_rows(
                session, INBOX, [_row(k, reference="R" if k != keys[2] else "S") for k in keys], returning=("id",)
            )
            ids = sorted(r.id for r in returned)
            bulk.update_rows(session, INBOX, [{"id": i, "detail": "done", "errors": 2} for i in ids])
    finally:
        event.remove(rt.engine, "before_cursor_execute", record)
    inserted, updated = sent
    assert "CAST(%(status)s AS VARCHAR)" in inserted and "CAST(%(status)s AS VARCHAR[])" not in inserted
    assert "CAST(%(received_at)s AS TIMESTAMP WITH TIME ZONE)" in inserted
    assert "CAST(%(repeat_count)s AS INTEGER)" in inserted  # a Python-side default too
    assert "CAST(%(reference)s AS VARCHAR[])" in inserted and "CAST(%(dedupe_key)s AS VARCHAR[])" in inserted
    assert "CAST(%(detail)s AS VARCHAR)" in updated and "CAST(%(id)s AS BIGINT[])" in updated
    rows = _read(rt, keys)
    assert [r["reference"] for r in rows] == ["R", "R", "S"]
    assert {(r["status"], r["detail"], r["errors"], r["repeat_count"], r["received_at"]) for r in rows} == {
        ("received", "done", 2, 0, NOW)
    }
    assert rows[0]["headers"] == {"x-token": "é", "empty": None}


def test_only_values_that_are_the_same_are_sent_once() -> None:
    """Equal is not enough: 1 and True, 1.0 and 1.00 as numerics, 0.0 and -0.0, or the two 02:30 of the night
    Berlin's clocks go back (equal wall times in one zone, an hour apart) are different values."""
    from decimal import Decimal
    from zoneinfo import ZoneInfo

    berlin = datetime(2026, 10, 25, 2, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    assert bulk._constant({"at": [berlin, berlin.replace(fold=1)], "n": [0.0, -0.0], "k": [1, 2]}, keep=()) == ()
    same_instant = [berlin, berlin.astimezone(UTC).astimezone(ZoneInfo("Europe/Berlin"))]
    assert bulk._constant({"at": same_instant, "k": [1, 2]}, keep=()) == ("at",)

    columns = {
        "flag": [1, True],
        "amount": [Decimal("1.0"), Decimal("1.00")],
        "none": [None, None],
        "text": ["a", "a"],
        "id": [1, 2],
    }
    assert bulk._constant(columns, keep=()) == ("none", "text")
    assert bulk._constant({"a": [1, 1], "b": [2, 2]}, keep=()) == ("b",)  # one array stays: unnest needs one
    assert bulk._constant({"id": [5], "x": [1]}, keep=("id",)) == ()  # a single row: nothing to gain
