"""The items of the CSV and JSON reports written by PostgreSQL (``reports`` uses them on PostgreSQL).

A million-item run's CSV and JSON took ~7 s and ~9 s in Python (row objects from the cursor, then
``csv_row`` or ``json.dumps`` per item, profiled with py-spy). Here PostgreSQL formats each item in
the same ``COPY (SELECT …) TO STDOUT`` that sorts them, and Python only moves bytes to the file in
blocks: the files are byte for byte those of ``reports.csv_row`` and ``reports.item_json``
(``tests/test_reports.py`` compares both paths), and memory stays flat.

- **CSV**: ``COPY … WITH (FORMAT csv)`` quotes as Python's ``csv`` module does (a field with a
  comma, a quote, CR or LF; quotes doubled) but writes an empty string as ``""`` (every empty value
  is sent as NULL instead, written as nothing, as ``csv_row`` writes ``None``) and ends rows with LF:
  each row's terminating LF becomes CRLF; an LF inside a quoted field stays (``_CsvRows``).
- **JSON**: each item is one line built with ``to_json`` (which escapes as ``json.dumps`` with
  ``ensure_ascii=False``: ``\\" \\\\ \\b \\f \\n \\r \\t``, other control characters ``\\u00xx``), sent
  through ``FORMAT csv`` with a delimiter and a quote character that ``to_json`` always escapes, so
  that no line is ever quoted; the lines are joined with ``,\\n`` (``_JsonLines``).

The text of the item queries is built from constants only (classes, currencies); the run's values
are bound by psycopg2 (``mogrify``). Both need the connection's client encoding to be UTF-8 (the
files are UTF-8): ``usable`` says whether it is, else ``reports`` keeps to Python.
"""

from __future__ import annotations

from typing import Any, BinaryIO

from sqlalchemy.orm import Session

from reconciliation.reports_common import EXCEPTION_ORDER, FORMULA_TRIGGERS, MATCHED
from schemas.currency import MINOR_UNIT_EXPONENT

#: Rows handed over by psycopg2 (one ``write`` per row) gathered before a block goes to the file.
BLOCK_ROWS = 4_096
#: Memory for the sort of a run's items (``SET LOCAL``): a million items sort in memory, not on disk.
SORT_MEMORY = "256MB"


def _literal(value: str) -> str:
    """A SQL string literal of one of our constants (``E''`` form when it holds a control character)."""
    if value.isprintable():
        return "'" + value.replace("'", "''") + "'"
    escaped = value.replace("\\", "\\\\").replace("'", "''")
    return "E'" + "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in escaped) + "'"


# Items exceptions first, most serious first, then by healed, reference, id (``reports._RANK``).
_RANK = (
    "CASE cls "
    + " ".join(f"WHEN {_literal(cls)} THEN {rank}" for rank, cls in enumerate(EXCEPTION_ORDER))
    + f" WHEN {_literal(MATCHED)} THEN {len(EXCEPTION_ORDER) + 1} ELSE {len(EXCEPTION_ORDER)} END"
)
_ORDER = f"{_RANK}, healed, reference, id"
_CURRENCY = "coalesce(nullif(internal_currency, ''), provider_currency)"  # ItemRow.currency
# NUL cannot be in a PostgreSQL text value: the other triggers are enough.
_TRIGGERS = ", ".join(_literal(t) for t in FORMULA_TRIGGERS if t != "\0")


def _safe(column: str) -> str:
    """``formula_safe``, and NULL for an empty value (written as nothing, as ``None``)."""
    return f"CASE WHEN left({column}, 1) IN ({_TRIGGERS}) THEN '''' || {column} ELSE nullif({column}, '') END"


def _plain(minor: str, currency: str) -> str:
    """``plain_amount``: major units with the currency's decimals; NULL when either is, or unknown."""
    cases = " ".join(
        f"WHEN {_literal(code)} THEN "
        + (f"{minor}::text" if exp == 0 else f"round({minor}::numeric / {10**exp}, {exp})::text")
        for code, exp in sorted(MINOR_UNIT_EXPONENT.items())
    )
    return f"CASE {currency} {cases} END"


_CSV_ITEMS = f"""
COPY (
    SELECT %(run_id)s, nullif(%(provider)s, ''), %(business_date)s, {_safe("cls")},
           CASE WHEN healed THEN 'true' ELSE 'false' END, {_safe("reference")}, {_safe("provider_txn_id")},
           {_safe("internal_status")}, {_safe("provider_status")}, {_safe(_CURRENCY)},
           internal_amount, provider_amount, difference, fee, expected_fee,
           {_plain("internal_amount", "internal_currency")}, {_plain("provider_amount", "provider_currency")},
           {_safe("detail")}, {_safe("provider_currency")}
      FROM recon_items
     WHERE run_id = %(run_id)s
     ORDER BY {_ORDER}
) TO STDOUT WITH (FORMAT csv)
"""  # noqa: S608 - built from constants; the run's values are bound


def _json(value: str) -> str:
    return f"coalesce(to_json({value})::text, 'null')"


def _number(value: str) -> str:
    return f"coalesce({value}::text, 'null')"


# The keys and their order are ``reports.item_json``'s; separators are ``json.dumps``'s (", ", ": ").
_JSON_FIELDS = (
    ("id", _number("id")),
    ("class", _json("cls")),
    ("healed", "CASE WHEN healed THEN 'true' ELSE 'false' END"),
    ("reference", _json("reference")),
    ("provider_txn_id", _json("provider_txn_id")),
    ("payment_id", _number("payment_id")),
    ("internal_status", _json("internal_status")),
    ("provider_status", _json("provider_status")),
    ("currency", _json(_CURRENCY)),
    ("internal_amount_minor", _number("internal_amount")),
    ("internal_currency", _json("internal_currency")),
    ("provider_amount_minor", _number("provider_amount")),
    ("provider_currency", _json("provider_currency")),
    ("provider_lines", _number("provider_lines")),
    ("fee_minor", _number("fee")),
    ("expected_fee_minor", _number("expected_fee")),
    ("difference_minor", _number("difference")),
    ("detail", _json("detail")),
)
_JSON_LINE = " || ".join(
    f"'{'{' if n == 0 else ', '}\"{key}\": ' || {value}" for n, (key, value) in enumerate(_JSON_FIELDS)
)
# Delimiter and quote are control characters to_json always escapes: a line is never quoted.
_JSON_ITEMS = f"""
COPY (
    SELECT {_JSON_LINE} || '}}'
      FROM recon_items
     WHERE run_id = %(run_id)s
     ORDER BY {_ORDER}
) TO STDOUT WITH (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')
"""  # noqa: S608 - built from constants; the run's values are bound


def usable(session: Session) -> bool:
    """True on PostgreSQL with a UTF-8 client encoding (what the files are written in)."""
    if session.get_bind().dialect.name != "postgresql":
        return False
    return bool(session.connection().exec_driver_sql("SHOW client_encoding").scalar() in ("UTF8", "UNICODE"))


def copy_csv_items(session: Session, run_id: int, provider: str, business_date: str, out: BinaryIO) -> None:
    """The items CSV's rows (after its header), in ``reports.csv_row``'s bytes, to ``out``."""
    params = {"run_id": run_id, "provider": _formula_safe(provider), "business_date": business_date}
    _copy(session, _CSV_ITEMS, params, _CsvRows(out))


def copy_json_items(session: Session, run_id: int, out: BinaryIO) -> None:
    """The JSON report's items array content (between ``[`` and ``]``), as ``reports._write_json``
    wrote it: ``\\n`` then the items separated by ``,\\n``, then ``\\n``."""
    _copy(session, _JSON_ITEMS, {"run_id": run_id}, _JsonLines(out))


def _formula_safe(value: str) -> str:
    return "'" + value if value.startswith(FORMULA_TRIGGERS) else value


def _copy(session: Session, sql: str, params: dict[str, Any], sink: _Block) -> None:
    connection = session.connection()
    connection.exec_driver_sql(f"SET LOCAL work_mem = '{SORT_MEMORY}'")
    raw: Any = connection.connection.dbapi_connection  # psycopg2's: copy_expert, mogrify
    cursor = raw.cursor()
    try:
        cursor.copy_expert(cursor.mogrify(sql, params).decode(), sink)
    finally:
        cursor.close()
    sink.close()


class _Block:
    """A file for ``copy_expert`` (which calls ``write`` with each row's bytes), writing blocks."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.rows: list[bytes] = []

    def write(self, row: bytes) -> None:
        self.rows.append(row)
        if len(self.rows) >= BLOCK_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            block = b"".join(self.rows)
            self.rows = []
            self.put(block)

    def put(self, block: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.flush()


class _CsvRows(_Block):
    """CRLF after each row; an LF inside a quoted field (an odd number of quotes before it) kept."""

    def __init__(self, out: BinaryIO) -> None:
        super().__init__(out)
        self.quoted = False  # inside a quoted field at the end of the last block

    def put(self, block: bytes) -> None:
        if not self.quoted and b'"' not in block:
            self.out.write(block.replace(b"\n", b"\r\n"))
            return
        *lines, rest = block.split(b"\n")
        for line in lines:
            self.quoted ^= line.count(b'"') % 2 == 1
            self.out.write(line + (b"\n" if self.quoted else b"\r\n"))
        self.quoted ^= rest.count(b'"') % 2 == 1
        self.out.write(rest)


class _JsonLines(_Block):
    """``\\n`` before the first item, ``,\\n`` between items, ``\\n`` after the last (none: ``\\n``)."""

    def __init__(self, out: BinaryIO) -> None:
        super().__init__(out)
        self.separator = b"\n"
        self.pending = b""

    def put(self, block: bytes) -> None:
        # A line never holds a raw LF (to_json escapes it): each LF ends an item.
        body = self.pending + block
        head, found, self.pending = body.rpartition(b"\n")
        if found:
            self.out.write(self.separator + head.replace(b"\n", b",\n"))
            self.separator = b",\n"

    def close(self) -> None:
        super().close()
        self.out.write(self.pending + b"\n")
