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
  ``ensure_ascii=False``: ``\\" \\\\ \\b \\f \\n \\r \\t``, other control characters ``\\u00xx``; the words of
  our own vocabularies, classes, statuses and currency codes, need no escaping and skip it: ``_WORDS``), sent
  through ``FORMAT csv`` with a delimiter and a quote character that ``to_json`` always escapes, so
  that no line is ever quoted; the lines are joined with ``,\\n`` (``_JsonLines``).
- **Both at once** (``export_all``, which writes every format): one COPY sorts the items once and
  sends, per item, its JSON line and its CSV line (built in SQL: ``_csv_text`` quotes as Python's
  ``csv`` does), separated by that delimiter; a row is quoted only when its CSV line holds CR, LF
  or one of the two control characters, and then read with the ``csv`` module (``_BothRows``).
  Measured on a million items: 6.3 s for both files, against ~4 s each from two COPYs (the sort of
  the million rows is most of each).

The text of the item queries is built from constants only (classes, currencies); the run's values
are bound by psycopg2 (``mogrify``). Both need the connection's client encoding to be UTF-8 (the
files are UTF-8), and the server's encoding too: ``usable`` says whether they are, else ``reports`` keeps to Python.
"""

from __future__ import annotations

import csv
import io
from typing import Any, BinaryIO

from sqlalchemy.orm import Session

from reconciliation.db import statement_settings
from reconciliation.models import PaymentStatus, ReconClass
from reconciliation.reports.common import BYTE_ORDER, EXCEPTION_ORDER, FORMULA_TRIGGERS, MATCHED, formula_safe
from schemas.currency import MINOR_UNIT_EXPONENT

#: Bytes of COPY output gathered before a block is split and written to the files: psycopg2 hands over
#: each row with a ``write``, which goes to an ``io.BufferedWriter`` (C, no Python call per row), and
#: only its full buffer reaches Python (``_Block.write``), cut anywhere in a row.
BLOCK_BYTES = 1 << 20
#: Memory for the sort of a run's items (``SET LOCAL``), per process: a million items sort in memory, not on disk.
SORT_MEMORY = "256MB"
#: Planner settings of the items' COPY (``SET LOCAL``): a parallel plan (PostgreSQL's workers scan, format and
#: sort shares of the items, the COPY's backend merges them), which the planner would not choose by itself:
#: the run's items are seldom analyzed when its reports are written (estimated at a few hundred rows for a
#: million), and it does not weigh the formatting, most of the COPY's time (measured 2026-12-06 on 250,000
#: items: 4.7 s without, 2.3 s with, ``EXPLAIN ANALYZE``, 2 cores). ``max_parallel_workers_per_gather``
#: (the server's, default 2) still bounds the workers; with none free the plan runs in the backend alone.
PARALLEL = {"parallel_setup_cost": "0", "parallel_tuple_cost": "0"}


def _literal(value: str) -> str:
    """A SQL string literal of one of our constants (``E''`` form when it holds a control character)."""
    if value.isprintable():
        return "'" + value.replace("'", "''") + "'"
    escaped = value.replace("\\", "\\\\").replace("'", "''")
    return "E'" + "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in escaped) + "'"


# The class's rank: exceptions first, most serious first, then unknown classes, then matched (``reports._RANK``).
_RANK = (
    "CASE cls "
    + " ".join(f"WHEN {_literal(cls)} THEN {rank}" for rank, cls in enumerate(EXCEPTION_ORDER))
    + f" WHEN {_literal(MATCHED)} THEN {len(EXCEPTION_ORDER) + 1} ELSE {len(EXCEPTION_ORDER)} END"
)
#: The items' order (``reports.iter_items``'s): the class's rank, healed, the reference in byte order, the id;
#: computed beside the formatted lines and ahead of them (``_sorted``).
_KEYS = (_RANK, "healed", f'reference COLLATE "{BYTE_ORDER}"', "id")
_CURRENCY = "coalesce(nullif(internal_currency, ''), provider_currency)"  # ItemRow.currency
# The formula triggers by code point: ``ascii`` of the first character is an integer compared with a list,
# where ``left(…, 1) IN (…)`` made a string per field and compared strings. NUL cannot be in a PostgreSQL
# text value: the other triggers are enough.
_TRIGGER_CODES = ", ".join(str(ord(t)) for t in FORMULA_TRIGGERS if t != "\0")


def _formula(column: str) -> str:
    """True when the value starts as a formula would (``formula_safe``'s test); NULL for NULL, false for ''."""
    return f"ascii({column}) IN ({_TRIGGER_CODES})"


def _safe(column: str) -> str:
    """``formula_safe``, and NULL for an empty value (written as nothing, as ``None``)."""
    return f"CASE WHEN {_formula(column)} THEN '''' || {column} ELSE nullif({column}, '') END"


def _plain(minor: str, currency: str) -> str:
    """``plain_amount``: major units with the currency's decimals; NULL when either is, or unknown.
    The currencies are grouped by their decimals: a list per group, not a comparison per currency."""
    groups: dict[int, list[str]] = {}
    for code, exp in sorted(MINOR_UNIT_EXPONENT.items()):
        groups.setdefault(exp, []).append(_literal(code))
    cases = " ".join(
        f"WHEN {currency} IN ({', '.join(codes)}) THEN "
        + (f"{minor}::text" if exp == 0 else f"round({minor}::numeric / {10**exp}, {exp})::text")
        for exp, codes in sorted(groups.items())
    )
    return f"CASE {cases} END"


# The items CSV's columns (``reports.CSV_COLUMNS``), as ``reports.csv_row`` writes them: each a
# column or expression, and whether it is text (escaped against formulas, may need quoting): True, or the
# name of its vocabulary (``_WORDS``) when our code writes it.
_CSV_FIELDS = (
    ("%(run_id)s", False),
    ("%(provider)s", False),  # formula-safe already (``formula_safe``); in CSV form for ``_BOTH_ITEMS``
    ("%(business_date)s", False),
    ("cls", "class"),
    ("CASE WHEN healed THEN 'true' ELSE 'false' END", False),
    ("reference", True),
    ("provider_txn_id", True),
    ("internal_status", "status"),
    ("provider_status", "status"),
    (_CURRENCY, "currency"),
    ("internal_amount", False),
    ("provider_amount", False),
    ("difference", False),
    ("fee", False),
    ("expected_fee", False),
    (_plain("internal_amount", "internal_currency"), False),
    (_plain("provider_amount", "provider_currency"), False),
    ("detail", True),
    ("provider_currency", "currency"),
)


def _sorted(columns: list[str]) -> str:
    """SQL: the run's items as ``columns``, in the reports' order (``reports.iter_items``'s).

    The keys come first in the rows the sort holds: the sort compares rows of equal class (a million
    ``matched``) by their later keys, read from each row by walking its columns from the first, and
    the formatted lines are hundreds of bytes; the reference is compared as bytes (``BYTE_ORDER``).
    """
    keys = ", ".join(f"{key} AS k{n}" for n, key in enumerate(_KEYS))
    values = ", ".join(f"{column} AS v{n}" for n, column in enumerate(columns))
    kept = ", ".join(f"v{n}" for n in range(len(columns)))
    order = ", ".join(str(n + 1) for n in range(len(_KEYS)))
    return f"""SELECT {kept} FROM (
        SELECT {keys}, {values}
          FROM recon_items
         WHERE run_id = %(run_id)s
         ORDER BY {order}
        OFFSET 0
    ) AS sorted"""  # noqa: S608 - built from constants; the run's values are bound


_CSV_ITEMS = f"""
COPY ({_sorted([_safe(field) if text else field for field, text in _CSV_FIELDS])}) TO STDOUT WITH (FORMAT csv)
"""


def _csv_text(column: str) -> str:
    """A text field as ``csv_row`` and Python's ``csv`` (QUOTE_MINIMAL) write it: ``formula_safe``, then
    quoted when it holds a quote (doubled), a comma, CR or LF; NULL stays NULL (``concat``: nothing)."""
    prefix = f"CASE WHEN {_formula(column)} THEN '''' ELSE '' END"
    special = " OR ".join(f"strpos({column}, {char}) > 0" for char in ("'\"'", "','", "E'\\r'", "E'\\n'"))
    return (
        f"CASE WHEN {special} THEN '\"' || {prefix} || replace({column}, '\"', '\"\"') || '\"' "
        f"ELSE {prefix} || {column} END"
    )


def _json(value: str) -> str:
    return f"coalesce(to_json({value})::text, 'null')"


# Words our own code writes in a text column (classes, statuses, ISO currency codes): letters and ``_`` only, so
# that JSON and CSV write them as they are (quoted, in JSON). ``to_json`` looks up its argument's type and output
# function at every call: six such columns cost a sixth of the COPY of a million items to both files (measured
# 2026-12-06, alternated, the files discarded: 5.5-5.8 -> 4.8-5.1 s; BENCHMARKS.md). A value in its column's
# vocabulary is written without it, any other (a word an older version wrote, a provider's code we do not know)
# takes the general path, and the CSV quoting checks likewise. A list of nine words or more is looked up by hash.
_WORDS = {
    "class": tuple(sorted(c.value for c in ReconClass)),
    "status": tuple(sorted({s.value for s in PaymentStatus} | {"payout"})),  # payments' and statement lines'
    "currency": tuple(sorted(MINOR_UNIT_EXPONENT)),
}
if not all(word.replace("_", "").isalpha() and word.isascii() for words in _WORDS.values() for word in words):
    raise AssertionError("a vocabulary word needs escaping in JSON or CSV")  # pragma: no cover - constants


def _known(value: str, words: str) -> str:
    """SQL: true when ``value`` is one of the ``_WORDS[words]`` (NULL for NULL), byte for byte: under a column's
    nondeterministic collation a value with other bytes may compare equal to a word."""
    return f'({value}) COLLATE "C" IN ({", ".join(_literal(word) for word in _WORDS[words])})'


def _json_word(value: str, words: str) -> str:
    """``_json`` of a column of words (``_WORDS``): a word quoted as it is, other values through ``to_json``."""
    return f"CASE WHEN {_known(value, words)} THEN '\"' || {value} || '\"' ELSE {_json(value)} END"


def _csv_word(value: str, words: str) -> str:
    """``_csv_text`` of a column of words (``_WORDS``): a word as it is (no formula, nothing to quote)."""
    return f"CASE WHEN {_known(value, words)} THEN {value} ELSE {_csv_text(value)} END"


def _number(value: str) -> str:
    return f"coalesce({value}::text, 'null')"


# The keys and their order are ``reports.item_json``'s; separators are ``json.dumps``'s (", ", ": ").
_JSON_FIELDS = (
    ("id", _number("id")),
    ("class", _json_word("cls", "class")),
    ("healed", "CASE WHEN healed THEN 'true' ELSE 'false' END"),
    ("reference", _json("reference")),
    ("provider_txn_id", _json("provider_txn_id")),
    ("payment_id", _number("payment_id")),
    ("internal_status", _json_word("internal_status", "status")),
    ("provider_status", _json_word("provider_status", "status")),
    ("currency", _json_word(_CURRENCY, "currency")),
    ("internal_amount_minor", _number("internal_amount")),
    ("internal_currency", _json_word("internal_currency", "currency")),
    ("provider_amount_minor", _number("provider_amount")),
    ("provider_currency", _json_word("provider_currency", "currency")),
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
COPY ({_sorted([_JSON_LINE + " || '}'"])}) TO STDOUT WITH (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')
"""


def _csv_field(field: str, text: bool | str) -> str:
    """One field of ``_CSV_LINE`` (``_CSV_FIELDS``): a number as it is, text quoted as ``csv_row`` writes it."""
    if isinstance(text, str):
        return _csv_word(field, text)
    return _csv_text(field) if text else field


# Both files' lines from one sort: each COPY row is the JSON line, then (after the delimiter) the CSV
# line built here (COPY quotes it only when it holds CR, LF or one of the two control characters).
_CSV_LINE = "concat(" + ", ',', ".join(_csv_field(field, text) for field, text in _CSV_FIELDS) + ")"
_BOTH_ITEMS = f"""
COPY ({_sorted([_JSON_LINE + " || '}'", _CSV_LINE])}) TO STDOUT WITH (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')
"""


def usable(session: Session) -> bool:
    """True on PostgreSQL with UTF-8 as the client encoding (what the files are written in) and the
    server's (``ascii`` of a character beyond ASCII fails in EUC_JP and the other multibyte encodings)."""
    if session.get_bind().dialect.name != "postgresql":
        return False
    connection = session.connection()
    encodings = {connection.exec_driver_sql(f"SHOW {name}").scalar() for name in ("client_encoding", "server_encoding")}
    return encodings <= {"UTF8", "UNICODE"}


def copy_csv_items(session: Session, run_id: int, provider: str, business_date: str, out: BinaryIO) -> None:
    """The items CSV's rows (after its header), in ``reports.csv_row``'s bytes, to ``out``."""
    params = {"run_id": run_id, "provider": formula_safe(provider) or None, "business_date": business_date}
    _copy(session, _CSV_ITEMS, params, _CsvRows(out))


def copy_csv_and_json_items(
    session: Session, run_id: int, provider: str, business_date: str, *, csv_out: BinaryIO, json_out: BinaryIO
) -> None:
    """``copy_csv_items`` and ``copy_json_items`` from one COPY: the items sorted once, not twice."""
    line = io.StringIO()
    csv.writer(line, lineterminator="").writerow([formula_safe(provider)])
    params = {"run_id": run_id, "provider": line.getvalue() if provider else "", "business_date": business_date}
    _copy(session, _BOTH_ITEMS, params, _BothRows(csv_out, json_out))


def copy_json_items(session: Session, run_id: int, out: BinaryIO) -> None:
    """The JSON report's items array content (between ``[`` and ``]``), as ``reports._write_json``
    wrote it: ``\\n`` then the items separated by ``,\\n``, then ``\\n``."""
    _copy(session, _JSON_ITEMS, {"run_id": run_id}, _JsonLines(out))


def _copy(session: Session, sql: str, params: dict[str, Any], sink: _Block) -> None:
    connection = session.connection()
    with statement_settings(connection, {"work_mem": SORT_MEMORY, **PARALLEL}):  # the COPY's, not the transaction's
        raw: Any = connection.connection.dbapi_connection  # psycopg2's: copy_expert, mogrify
        cursor = raw.cursor()
        buffered = io.BufferedWriter(sink, buffer_size=BLOCK_BYTES)
        try:
            cursor.copy_expert(cursor.mogrify(sql, params).decode(), buffered)
            buffered.flush()
        finally:
            cursor.close()
    sink.close()


class _Block(io.RawIOBase):
    """The raw file under ``copy_expert``'s ``BufferedWriter``: each ``write`` is a block of COPY
    output, cut anywhere (within a row, even within a character), which ``put`` writes out."""

    def __init__(self, out: BinaryIO) -> None:
        super().__init__()
        self.out = out

    def writable(self) -> bool:
        return True

    def write(self, block: Any) -> int:
        data = bytes(block)
        self.put(data)
        return len(data)

    def put(self, block: bytes) -> None:
        raise NotImplementedError


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
            self.out.write(self.separator)
            self.out.write(head.replace(b"\n", b",\n"))
            self.separator = b",\n"

    def lines(self, lines: list[bytes]) -> None:
        """Whole lines (no LF in them), for a writer fed only so (``put`` keeps a partial line pending)."""
        if lines:
            self.out.write(self.separator)
            self.out.write(b",\n".join(lines))
            self.separator = b",\n"

    def close(self) -> None:
        if not self.closed:
            self.out.write(self.pending + b"\n")
        super().close()


class _BothRows(_Block):
    """Each row split at its delimiter: the JSON line to ``_JsonLines``, the CSV line (CRLF) to the CSV.

    A row holding the quote character (a CSV line with CR, LF or one of the two control characters
    inside) is read with the ``csv`` module; the others are split as bytes. The rows of a block are
    those it ends; the rest waits for the next block."""

    def __init__(self, csv_out: BinaryIO, json_out: BinaryIO) -> None:
        super().__init__(csv_out)
        self.json = _JsonLines(json_out)
        self.carry = b""

    def put(self, block: bytes) -> None:
        data = self.carry + block if self.carry else block
        quoted = b"\x01" in data
        end = _rows_end(data) if quoted else data.rfind(b"\n") + 1
        self.carry = data[end:]
        self._rows(data[:end] if end < len(data) else data, quoted=quoted)

    def _rows(self, block: bytes, *, quoted: bool = True) -> None:
        if quoted and b"\x01" in block:
            text = block.decode("utf-8")
            pairs = [(j.encode(), c.encode()) for j, c in csv.reader(io.StringIO(text, newline=""), _DIALECT)]
            if pairs:
                self.json.lines([j for j, _ in pairs])
                self.out.write(b"\r\n".join(c for _, c in pairs) + b"\r\n")
        elif block:  # every row is one JSON line, the delimiter, one CSV line, LF: split them all at once
            parts = block.replace(b"\n", b"\x02").split(b"\x02")  # ends with b"" (after the last LF)
            self.json.lines(parts[0:-1:2])
            self.out.write(b"\r\n".join(parts[1::2]))
            self.out.write(b"\r\n")

    def close(self) -> None:
        if not self.closed:
            self._rows(self.carry)  # nothing: COPY ends every row with LF
            self.carry = b""
            self.json.close()
        super().close()


def _rows_end(data: bytes) -> int:
    """Where the last whole row of ``data`` ends: after its last LF outside a quoted field (an even
    number of quote characters, doubled when escaped, before it)."""
    end = data.rfind(b"\n")
    while end >= 0 and data.count(b"\x01", 0, end) % 2:
        end = data.rfind(b"\n", 0, end)
    return end + 1


class _Dialect(csv.Dialect):
    delimiter = "\x02"
    quotechar = "\x01"
    doublequote = True
    lineterminator = "\n"
    quoting = csv.QUOTE_MINIMAL
    skipinitialspace = False
    strict = True


_DIALECT = _Dialect()
