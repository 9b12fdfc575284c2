"""Many rows of one table written with one statement over arrays, on PostgreSQL without SQLAlchemy's
per-value work.

SQLAlchemy's ``executemany`` of an ``insert()`` or ``update()`` renders one ``VALUES`` tuple per row and
runs each value through its type's bind processor in Python ("insertmanyvalues"); for a batch of a
hundred settlements that was most of the worker's time in settling. Here each column is one array
parameter (``unnest(CAST(:c AS type[]))``): a statement whose text depends only on the table and the
column names (compiled once, cached), and one list per column, which psycopg2 adapts in C. The values
are what the ORM would store: a ``JSON``/``JSONB`` value is serialized as SQLAlchemy's JSON type does
(``json.dumps``), an enum stored as text is its value, a timestamp must be aware (``UtcDateTime``'s
rule), and a column a row leaves out gets its Python-side default, as an ``insert()`` would give it.

Other databases (SQLite, the embedded demo's) take SQLAlchemy's own statement: same rows.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import Column, Table, TextClause, bindparam, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session
from sqlalchemy.types import JSON

from reconciliation.dialect import insert

_PG = postgresql.dialect()  # type: ignore[no-untyped-call]


def insert_rows(
    session: Session,
    table: Table,
    rows: Sequence[dict[str, Any]],
    *,
    returning: Sequence[str] = (),
    tail: str = "",
    tail_params: dict[str, Any] | None = None,
) -> list[Row[Any]]:
    """INSERT ``rows`` (dicts with the same keys) into ``table`` in one statement; with ``returning``,
    those columns of the rows inserted (in no promised order: match them by a key). ``tail``, on
    PostgreSQL only: SQL after the rows instead (an ``ON CONFLICT`` clause and a ``RETURNING`` list, whose
    rows are returned), with ``tail_params`` bound."""
    if not rows:
        return []
    if tail and session.get_bind().dialect.name != "postgresql":
        raise ValueError("a tail of SQL is for PostgreSQL only")
    if session.get_bind().dialect.name != "postgresql":
        statement = insert(session, table)
        if returning:
            statement = statement.returning(*(table.c[name] for name in returning))
            return list(session.execute(statement, list(rows)))
        session.execute(statement, list(rows))
        return []
    names = _same_keys(rows)
    defaults = _defaults(table, names)
    statement = _statement(_insert_sql, table, names + tuple(defaults), (tuple(returning), tail))
    params: dict[str, Any] = {**_columns(table, names, rows), **(tail_params or {})}
    for name, default in defaults.items():
        params[name] = [default() for _ in rows]
    result = session.execute(statement, params)
    return list(result) if returning or "RETURNING" in tail.upper() else []


def update_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]], *, key: str = "id") -> None:
    """UPDATE each row of ``table`` whose ``key`` is a row's ``key`` to that row's other values (dicts
    with the same keys), in one statement."""
    if not rows:
        return
    names = _same_keys(rows)
    if len({row[key] for row in rows}) != len(rows):
        raise ValueError(f"update_rows: two rows of {table.name} with the same {key}: which one wins is unsaid")
    if session.get_bind().dialect.name != "postgresql":
        statement = (
            update(table)
            .where(table.c[key] == bindparam("b_" + key))
            .values({name: bindparam("b_" + name) for name in names if name != key})
        )
        session.execute(statement, [{"b_" + name: value for name, value in row.items()} for row in rows])
        return
    session.execute(_statement(_update_sql, table, names, key), _columns(table, names, rows))


def _same_keys(rows: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The rows' keys, the same for every row (a key only some rows have would be dropped unsaid)."""
    names = tuple(rows[0])
    if any(row.keys() != rows[0].keys() for row in rows):
        raise ValueError("every row must have the same keys")
    return names


def _columns(table: Table, names: tuple[str, ...], rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    params: dict[str, list[Any]] = {}
    for name in names:
        convert = _converter(table, name)
        values = [row[name] for row in rows]
        params[name] = values if convert is None else [convert(v) for v in values]
    return params


def _converter(table: Table, name: str) -> Callable[[Any], Any] | None:
    """What turns a Python value (None included) into what the column's array parameter holds (None: as
    it is)."""
    key = (table.name, name)
    if key not in _CONVERTERS:
        _CONVERTERS[key] = _make_converter(table.c[name])
    return _CONVERTERS[key]


_CONVERTERS: dict[tuple[str, str], Callable[[Any], Any] | None] = {}


def _make_converter(column: Column[Any]) -> Callable[[Any], Any] | None:
    kind = column.type.dialect_impl(_PG)
    impl = getattr(kind, "impl", kind)  # a TypeDecorator's underlying type
    if isinstance(impl, JSON):
        # As SQLAlchemy's JSON type: None is JSON's null unless the column says none_as_null.
        return _json_or_null if impl.none_as_null else json.dumps
    enum_class = getattr(impl, "enum_class", None)
    if enum_class is not None:
        return _enum_value
    if getattr(impl, "timezone", False):
        return _aware
    return None


def _json_or_null(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _enum_value(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: payrecon stores aware timestamps only")
    return value


def _defaults(table: Table, names: tuple[str, ...]) -> dict[str, Callable[[], Any]]:
    """The Python-side defaults (``mapped_column(default=...)``) of the columns the rows leave out."""
    out: dict[str, Callable[[], Any]] = {}
    for column in table.columns:
        default = column.default
        if column.key in names or default is None:
            continue
        if getattr(default, "is_scalar", False):
            out[column.key] = partial(_same, default.arg)  # type: ignore[attr-defined]
        elif getattr(default, "is_callable", False):
            out[column.key] = partial(default.arg, None)  # type: ignore[attr-defined]
    return out


def _same(value: Any) -> Any:
    return value


def _array_type(column: Column[Any]) -> str:
    """The column's type as an array, without its length or precision: an explicit cast to ``VARCHAR(200)``
    would cut a longer value silently, where the INSERT's or UPDATE's own conversion to the column refuses
    it ("value too long"), as SQLAlchemy's statements did."""
    kind = column.type.dialect_impl(_PG)
    impl = getattr(kind, "impl", kind)
    return _MODIFIERS.sub("", impl.compile(dialect=_PG)) + "[]"


_MODIFIERS = re.compile(r"\(\s*\d+(\s*,\s*\d+)?\s*\)")


#: Statements by (kind, table, columns, extra): their text depends on nothing else.
_STATEMENTS: dict[tuple[Any, ...], TextClause] = {}


def _statement(
    render: Callable[[Table, tuple[str, ...], Any], str], table: Table, names: tuple[str, ...], extra: Any
) -> TextClause:
    key = (render.__name__, table.name, names, extra)
    statement = _STATEMENTS.get(key)
    if statement is None:
        statement = _STATEMENTS[key] = text(render(table, names, extra))
    return statement


def _arrays(table: Table, names: tuple[str, ...]) -> str:
    return ", ".join(f"CAST(:{name} AS {_array_type(table.c[name])})" for name in names)


def _insert_sql(table: Table, names: tuple[str, ...], extra: tuple[tuple[str, ...], str]) -> str:
    returning, tail = extra
    columns = ", ".join(f'"{table.c[name].name}"' for name in names)
    # Names from the table's metadata only (and the caller's own SQL tail); every value is a bound parameter.
    sql = f'INSERT INTO "{table.name}" ({columns}) SELECT * FROM unnest({_arrays(table, names)})'  # noqa: S608
    if tail:
        return f"{sql} {tail}"
    if returning:
        sql += " RETURNING " + ", ".join(f'"{table.c[name].name}"' for name in returning)
    return sql


def _update_sql(table: Table, names: tuple[str, ...], key: str) -> str:
    aliases = {name: f"c{i}" for i, name in enumerate(names)}
    sets = ", ".join(f'"{table.c[name].name}" = v.{aliases[name]}' for name in names if name != key)
    source = f"unnest({_arrays(table, names)}) AS v ({', '.join(aliases.values())})"
    return f'UPDATE "{table.name}" AS t SET {sets} FROM {source} WHERE t."{table.c[key].name}" = v.{aliases[key]}'  # noqa: S608
