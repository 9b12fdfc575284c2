"""Many rows of one table written with one statement over arrays, on PostgreSQL without SQLAlchemy's
per-value work.

SQLAlchemy's ``executemany`` of an ``insert()`` or ``update()`` renders one ``VALUES`` tuple per row and
runs each value through its type's bind processor in Python ("insertmanyvalues"); for a batch of a
hundred settlements that was most of the worker's time in settling. Here each column is one array
parameter (``unnest(CAST(:c AS type[]))``), but a column whose value every row shares, which is one
scalar parameter: a statement whose text depends only on the table, the column names and which of them
are shared (compiled once, cached), and one list per column, which psycopg2 adapts in C. The values
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
from decimal import Decimal
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
    columns = _columns(table, names, rows)
    for name, default in defaults.items():
        columns[name] = [default() for _ in rows]
    constant = _constant(columns, keep=())
    statement = _statement(_insert_sql, table, names + tuple(defaults), (tuple(returning), tail, constant))
    params: dict[str, Any] = {**_folded(columns, constant), **(tail_params or {})}
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
    columns = _columns(table, names, rows)
    constant = _constant(columns, keep=(key,))
    session.execute(_statement(_update_sql, table, names, (key, constant)), _folded(columns, constant))


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


def _constant(columns: dict[str, list[Any]], *, keep: tuple[str, ...]) -> tuple[str, ...]:
    """The columns whose value is the same in every row (a batch's status, time, counters...), but those of
    ``keep`` and at least one other: each is sent once, as a scalar parameter, instead of as an array of one
    value repeated (psycopg2 adapts every element in Python's C API, PostgreSQL parses each in the array's
    text; a batch's inbox rows share a dozen columns: BENCHMARKS.md has what it saves)."""
    same = tuple(name for name, values in columns.items() if name not in keep and len(values) > 1 and _all_same(values))
    if len(same) == len(columns):  # unnest needs an array: the first column stays one
        same = same[1:]
    return same


def _all_same(values: list[Any]) -> bool:
    """Every value the same value: of one type and equal, and more than equal where ``==`` is not enough."""
    first = values[0]
    kind = type(first)
    if kind in (Decimal, float):  # 1.0 and 1.00 (numeric keeps the digits), 0.0 and -0.0
        return all(type(v) is kind and repr(v) == repr(first) for v in values)
    if kind is datetime:  # in one zone, == compares wall times: a repeated hour's two instants are "equal"
        offset = first.utcoffset()
        return all(type(v) is kind and v == first and v.utcoffset() == offset for v in values)
    return all(type(v) is kind and v == first for v in values)


def _folded(columns: dict[str, list[Any]], constant: tuple[str, ...]) -> dict[str, Any]:
    """The statement's parameters: an array per column, a scalar for each of ``constant``."""
    return {name: values[0] if name in constant else values for name, values in columns.items()}


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


#: Statements by (kind, table, columns, extra: with the columns sent once): their text depends on nothing else.
_STATEMENTS: dict[tuple[Any, ...], TextClause] = {}


def _statement(
    render: Callable[[Table, tuple[str, ...], Any], str], table: Table, names: tuple[str, ...], extra: Any
) -> TextClause:
    key = (render.__name__, table.name, names, extra)
    statement = _STATEMENTS.get(key)
    if statement is None:
        if len(_STATEMENTS) >= STATEMENTS_KEPT:  # which columns a batch shares varies: the set stays bounded
            _STATEMENTS.clear()
        statement = _STATEMENTS[key] = text(render(table, names, extra))
    return statement


#: Statements kept by ``_statement`` before it starts afresh.
STATEMENTS_KEPT = 500


def _arrays(table: Table, names: tuple[str, ...]) -> str:
    return ", ".join(f"CAST(:{name} AS {_array_type(table.c[name])})" for name in names)


def _scalar(table: Table, name: str) -> str:
    """A column's value given once (``_constant``), cast as its array's elements are."""
    return f"CAST(:{name} AS {_array_type(table.c[name]).removesuffix('[]')})"


def _source(table: Table, names: tuple[str, ...], constant: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """``unnest(...) AS v (c0, c1...)`` over the columns not in ``constant``, and each column's expression."""
    arrays = tuple(name for name in names if name not in constant)
    aliases = {name: f"v.c{i}" for i, name in enumerate(arrays)}
    source = f"unnest({_arrays(table, arrays)}) AS v ({', '.join(f'c{i}' for i in range(len(arrays)))})"
    return source, {name: aliases[name] if name in aliases else _scalar(table, name) for name in names}


def _insert_sql(table: Table, names: tuple[str, ...], extra: tuple[tuple[str, ...], str, tuple[str, ...]]) -> str:
    returning, tail, constant = extra
    columns = ", ".join(f'"{table.c[name].name}"' for name in names)
    source, values = _source(table, names, constant)
    # Names from the table's metadata only (and the caller's own SQL tail); every value is a bound parameter.
    sql = f'INSERT INTO "{table.name}" ({columns}) SELECT {", ".join(values[n] for n in names)} FROM {source}'  # noqa: S608
    if tail:
        return f"{sql} {tail}"
    if returning:
        sql += " RETURNING " + ", ".join(f'"{table.c[name].name}"' for name in returning)
    return sql


def _update_sql(table: Table, names: tuple[str, ...], extra: tuple[str, tuple[str, ...]]) -> str:
    key, constant = extra
    source, values = _source(table, names, constant)
    sets = ", ".join(f'"{table.c[name].name}" = {values[name]}' for name in names if name != key)
    return f'UPDATE "{table.name}" AS t SET {sets} FROM {source} WHERE t."{table.c[key].name}" = {values[key]}'  # noqa: S608
