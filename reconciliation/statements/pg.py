"""A statement import on PostgreSQL: COPY the file as text into staging tables (a part of the file each, side
by side, for a large file), then convert and insert every row with one ``INSERT ... SELECT`` per part.

Three tiers, fastest first, each falling back to the next; all apply the rules of the streamed
Python path (``statements._Parser``):

1. optimistic: casts and cheap checks only, no regular expression; any row that is not plainly
   good makes the statement fail (rolled back to a savepoint). A good 1,000,000-row file costs
   one pass.
2. strict: one query names every bad row with its line number (regular expressions), then the
   same conversion with those checks.
3. the Python path, when COPY refuses the file's layout (a row with too many or too few fields)
   or a value passes the SQL checks but not its cast (``25:00``): it lists every bad row.
"""

from __future__ import annotations

import csv
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import psycopg2
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from reconciliation.models import StatementLine
from reconciliation.progress import Progress, silent
from schemas.currency import MINOR_UNIT_EXPONENT

if TYPE_CHECKING:
    from reconciliation.statements.files import Mapping

#: The years a statement's times may have (as text), in every import path: wide enough for any
#: statement, narrow enough that a business day stays a date every driver can hold (0001 at UTC+1 is BC).
YEARS = ("1970", "2999")

#: What Python's ``str.strip()`` removes (the streamed path's rule), as an SQL literal for ``btrim``:
#: PostgreSQL's ``trim`` alone removes spaces only, and a reference ending in a tab or a no-break
#: space would not match its payment.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)  # every character whose isspace() is true (a test keeps it so)
WS = "E'" + "".join(f"\\u{ord(c):04X}" for c in WHITESPACE) + "'"
TIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?$"
#: ``TIME``'s shapes, every digit written 9: matching ``translate(time, digits, nines)`` against them
#: is the optimistic path's exact check, without a regular expression.
TIME_SHAPES = tuple(
    f"9999-99-99{sep}99:99{seconds}{offset}"
    for sep in (" ", "T")
    for seconds in ("", ":99", *(":99." + "9" * n for n in range(1, 7)))
    for offset in ("", "Z", "+99", "-99", "+9999", "-9999", "+99:99", "-99:99")
)
NUMBER = r"^-?[0-9]+(\.[0-9]+)?$"
#: What a bigint holds, for the strict path's checks (in minor units), as ``BETWEEN`` bounds.
BIGINT = f"{-(2**63)} AND {2**63 - 1}"
#: The identifiers a line keeps, what a file calls them, and how many characters ``statement_lines`` holds of
#: each: every import path names a longer one with its line (the database would refuse the whole file with no line).
IDENTIFIERS = {
    key: (what, int(getattr(StatementLine.__table__.c[column].type, "length", 0)))
    for key, what, column in (
        ("reference", "reference", "reference"),
        ("txn_id", "transaction id", "provider_txn_id"),
        ("payout", "payout id", "payout_id"),
    )
}


def too_long(key: str, value: str) -> str | None:
    """The error for the identifier ``key`` of ``IDENTIFIERS`` (trimmed) if it is longer than what is stored."""
    what, limit = IDENTIFIERS[key]
    if len(value) <= limit:
        return None
    return f"{what} {value[:30]!r}... has {len(value)} characters, more than the {limit} kept"


class LayoutError(Exception):
    """COPY refused the file's layout, or a value passed the SQL checks but not its cast: let the
    Python path find and name every bad row."""


def _values(rows: list[tuple[Any, ...]]) -> str:
    return ", ".join("(" + ", ".join(_literal(v) for v in row) + ")" for row in rows)


def _literal(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


#: Sessions that load a large file side by side on the optimistic path: each copies a part of the file (cut at
#: line ends) to a stage table of its own, then they convert the staged lines a range of pages at a time (``_chunks``).
WORKERS = 2
#: The smallest range of a stage table's pages one statement of a side-by-side load converts (about 5,000 lines of a
#: typical export): ranges start at a quarter of what is left for two sessions and shrink to this, so that neither
#: session waits long for the other at the end. With a half of the file each, the second of two sessions ended
#: 0.6 s after the first on a million lines (BENCHMARKS.md).
LAST_CHUNK_PAGES = 64
#: A ``tid`` past any page: the end of a stage table's last range.
_END_TID = "(4294967295,0)"
#: Below this many lines (rows, on a file staged whole) one session loads the file: the side sessions would cost
#: more than they save.
PARALLEL_FROM = 100_000
#: Advisory-lock namespace of statement loads: (LOCK_SPACE, import id) is held by the importing
#: transaction, so a load whose process died can be told from one still running (``_sweep``).
LOCK_SPACE = 0x5245434F
STAGE_PREFIX = "payrecon_stage_"


def _lock_key(import_id: int) -> int:
    return int(import_id) % 2_147_483_647


def import_copy(
    session: Session,
    path: Path,
    mapping: Mapping,
    *,
    provider: str,
    import_id: int,
    business_tz: ZoneInfo,
    workers: int | None = None,
    lines: int | None = None,
    progress: Progress = silent,
) -> tuple[int, list[tuple[int, str]], dict[date, int]]:
    """(rows inserted, errors, lines per business day). Nothing is inserted when there are errors.

    The file is staged in unlogged tables that side sessions can read (``payrecon_stage_<import
    id>``, and ``..._<k>`` for the k-th part of a large file). A large file (``lines``, the file's line count, from
    ``PARALLEL_FROM``) is cut into ``workers`` parts at line ends (default ``WORKERS``), each copied to its own stage
    table by its own session side by side; then ``workers`` sessions convert and insert the staged lines, taking
    ranges of the stage tables' pages in turn (``_chunks``), and all commit their lines once every range is done:
    those lines carry the import's id and stay invisible to every reader until the import row itself commits with the
    caller's transaction (``VISIBLE``). The stage tables are dropped in that same transaction, so a stage table left
    behind marks a load that never committed, whose lines the next import deletes (``_sweep``).
    """
    conn = session.connection().connection
    cursor = conn.cursor()
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            header = next(iter(handle.readline().splitlines()), "")
    except UnicodeDecodeError as exc:
        raise LayoutError(str(exc)) from exc  # the Python path names the line
    names = [name.strip() for name in next(csv.reader([header]))]
    position = {name: f"c{i}" for i, name in enumerate(names)}
    missing = [name for name in mapping.required if name not in position]
    if missing:
        from reconciliation.statements.files import StatementError  # the module that imports this one

        raise StatementError(f"missing column(s) {', '.join(missing)}; expected at least {', '.join(mapping.required)}")
    stage = f"{STAGE_PREFIX}{int(import_id)}"
    cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_SPACE, _lock_key(import_id)))
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    side = engine.raw_connection()
    try:
        _sweep(side, import_id)
    finally:
        side.close()
    workers = WORKERS if workers is None else workers
    end, whitespace = _scan(path, progress=progress)
    large = lines is not None and lines - 1 >= PARALLEL_FROM and workers > 1
    parts = _stage(engine, stage, len(names), path, _cuts(path, end, workers if large else 1), progress=progress)
    col = {
        key: position[getattr(mapping, key)] for key in ("reference", "txn_id", "time", "amount", "currency", "status")
    }
    fee = position.get(mapping.fee) if mapping.fee else None
    payout = position.get(mapping.payout) if mapping.payout else None
    currencies = _values([(code, exp) for code, exp in MINOR_UNIT_EXPONENT.items()])
    statuses = _values([(word.lower(), status) for word, status in mapping.statuses.items()])
    params = {"provider": provider, "business_tz": str(business_tz), "import_id": import_id, "file_tz": mapping.tz}
    raw = ", ".join(f"s.c{i}" for i in range(len(names)))
    # What to trim: every kind of whitespace, the only kinds there are, or nothing (no field starts or ends with any).
    spaces = {WIDE: WS, NARROW: "E' \\r\\n'", NONE: None}[whitespace]

    def sql(table: str) -> str:
        return _fast_sql(
            table, col=col, fee=fee, payout=payout, raw=raw, currencies=currencies, statuses=statuses, spaces=spaces
        )

    tables = ", ".join(table for table, _, _, _ in parts)
    fast = _load(engine, cursor, sql, params, parts, workers=workers, progress=progress)
    if fast is not None:
        cursor.execute(f"DROP TABLE {tables}")  # with the import: a stage table left behind marks a failed load
        return sum(fast.values()), [], fast
    staged = sum(rows for _, _, rows, _ in parts)
    progress("insert", staged, staged)  # refused: the stage ends, and the strict path converts every line or none
    # The strict path reads the parts as one table, each line numbered in the whole file.
    columns = ", ".join(f"c{i}" for i in range(len(names)))
    source = " UNION ALL ".join(
        f"SELECT line_no + {int(offset)} AS line_no, {columns} FROM {table}"  # noqa: S608
        for table, offset, _, _ in parts
    )
    try:
        return _strict(cursor, f"({source})", mapping, col=col, fee=fee, payout=payout, currencies=currencies,
                       statuses=statuses, params=params, width=len(names))  # fmt: skip
    finally:
        cursor.execute(f"DROP TABLE {tables}")


def _load(
    engine: Any,
    cursor: Any,
    sql: Callable[[str], str],
    params: dict[str, Any],
    parts: list[tuple[str, int, int, int]],
    *,
    workers: int,
    progress: Progress = silent,
) -> dict[date, int] | None:
    """The optimistic load of the staged ``parts`` (``_stage``; ``sql``: the statement for a stage table): by
    ``workers`` sessions side by side, a range of pages at a time (``_chunks``), for a file cut in parts or a large
    one; by the caller's own session for a small one. None if any line is not plainly good (nothing written)."""
    staged = sum(rows for _, _, rows, _ in parts)
    progress("insert", 0, staged)
    if len(parts) > 1 or (staged >= PARALLEL_FROM and workers > 1):
        return _load_side_by_side(
            engine, sql, params, _chunks(parts, workers), workers=workers, staged=staged, progress=progress
        )
    fast = _fast_insert(cursor, sql(parts[0][0]), params)
    if fast is not None:
        progress("insert", staged, staged)
    return fast


def _chunks(parts: list[tuple[str, int, int, int]], workers: int) -> list[tuple[str, int, str, str]]:
    """The staged ``parts``' pages in ranges, in order: [(stage table, lines before it in the file, first ``tid``,
    ``tid`` past the range)]. Each range is a ``2 * workers``-th of the pages left, at least ``LAST_CHUNK_PAGES``
    (the last ones the smallest), within one table; a table's last range runs to its end. A range of pages is read
    by a TID range scan (PostgreSQL 14 and later; earlier ones read the table and filter)."""
    left = sum(pages for _, _, _, pages in parts)
    chunks: list[tuple[str, int, str, str]] = []
    for table, offset, _, pages in parts:
        page = 0
        while True:
            size = max(LAST_CHUNK_PAGES, -(-left // (2 * max(workers, 1))))
            if page + size >= pages:
                chunks.append((table, offset, f"({page},0)", _END_TID))
                left -= max(pages - page, 0)
                break
            chunks.append((table, offset, f"({page},0)", f"({page + size},0)"))
            page, left = page + size, left - size
    return chunks


def _strict(
    cursor: Any,
    stage: str,
    mapping: Mapping,
    *,
    col: dict[str, str],
    fee: str | None,
    payout: str | None,
    currencies: str,
    statuses: str,
    params: dict[str, Any],
    width: int,
) -> tuple[int, list[tuple[int, str]], dict[date, int]]:
    """Name every bad row (line numbers), or convert and insert them all with the full checks."""
    v = {key: f"btrim(s.{column}, {WS})" for key, column in col.items()}  # each field, trimmed as Python does
    identifiers = {"reference": v["reference"], "txn_id": v["txn_id"]} | (
        {"payout": f"btrim(s.{payout}, {WS})"} if payout else {}
    )
    fee_expr = f"nullif(replace(btrim({fee}, {WS}), ' ', ''), '')" if fee else "NULL"
    base = f"""
        FROM {stage} s
        LEFT JOIN (VALUES {currencies}) AS cur(code, exp) ON cur.code = upper({v["currency"]})
        LEFT JOIN (VALUES {statuses}) AS st(word, status) ON st.word = lower({v["status"]})
    """
    problem = f"""CASE
        WHEN cur.code IS NULL THEN 'unknown currency ' || quote_literal(left(upper({v["currency"]}), 10))
        WHEN replace({v["amount"]}, ' ', '') !~ '{NUMBER}'
            THEN 'amount ' || quote_literal(left(s.{col["amount"]}, 30)) || ': not a number'
        WHEN replace({v["amount"]}, ' ', '')::numeric * power(10::numeric, cur.exp)
             <> trunc(replace({v["amount"]}, ' ', '')::numeric * power(10::numeric, cur.exp))
            THEN 'amount ' || quote_literal(left(s.{col["amount"]}, 30)) || ': has more decimals than '
            || cur.code || ' allows'
        WHEN trunc(replace({v["amount"]}, ' ', '')::numeric * power(10::numeric, cur.exp)) NOT BETWEEN {BIGINT}
            THEN 'amount ' || quote_literal(left(s.{col["amount"]}, 30)) || ': too large'
        WHEN {fee_expr} IS NOT NULL AND replace(btrim({fee or "''"}, {WS}), ' ', '') !~ '{NUMBER}'
            THEN 'fee ' || quote_literal(left({fee or "''"}, 30)) || ': not a number'
        WHEN {fee_expr}::numeric * power(10::numeric, cur.exp)
             <> trunc({fee_expr}::numeric * power(10::numeric, cur.exp))
            THEN 'fee ' || quote_literal(left({fee or "''"}, 30)) || ': has more decimals than '
            || cur.code || ' allows'
        WHEN trunc({fee_expr}::numeric * power(10::numeric, cur.exp)) NOT BETWEEN {BIGINT}
            THEN 'fee ' || quote_literal(left({fee or "''"}, 30)) || ': too large'
        WHEN st.word IS NULL THEN 'unknown status ' || quote_literal(left({v["status"]}, 30))
            || '; expected one of {", ".join(mapping.statuses).replace("'", "''")}'
        WHEN {v["time"]} !~ '{TIME}' THEN 'time ' || quote_literal(left({v["time"]}, 40))
            || ' is not YYYY-MM-DD HH:MM:SS or ISO 8601'
        WHEN NOT ({_clock(v["time"])} AND {_calendar(v["time"])})  -- after the shape: these read its digits
            THEN 'time ' || quote_literal(left({v["time"]}, 40))
            || ' is not YYYY-MM-DD HH:MM:SS or ISO 8601'
        WHEN nullif({v["reference"]}, '') IS NULL AND st.status = 'succeeded'
            THEN 'a paid row without a reference cannot be matched'
        WHEN st.status = 'payout' AND {f"nullif(btrim(s.{payout}, {WS}), '')" if payout else "NULL"} IS NULL
            THEN 'a payout row needs its payout id'
        {" ".join(_too_long(key, expr) for key, expr in identifiers.items())}
    END"""
    cursor.execute(
        f"SELECT line_no + 1, problem FROM (SELECT s.line_no, {problem} AS problem {base}) AS checked "  # noqa: S608
        "WHERE problem IS NOT NULL ORDER BY line_no LIMIT 1000"
    )
    errors = [(int(line), str(message)) for line, message in cursor.fetchall()]
    if errors:
        return 0, errors, {}
    raw_line = " || ',' || ".join(f"coalesce(s.c{i}, '')" for i in range(width))
    occurred = (
        f"CASE WHEN {v['time']} ~ '(Z|[+-]\\d{{2}}(:?\\d{{2}})?)$' THEN {v['time']}::timestamptz "
        f"ELSE {v['time']}::timestamp AT TIME ZONE %(file_tz)s END"
    )
    cursor.execute("SAVEPOINT strict_path")
    try:
        cursor.execute(
            f"""
        WITH inserted AS (
        INSERT INTO statement_lines (provider, business_date, source, import_id, line_no, provider_txn_id,
            reference, status, amount, currency, fee, occurred_at, payout_id, raw)
        SELECT %(provider)s, (occ AT TIME ZONE %(business_tz)s)::date, 'file', %(import_id)s, line_no + 1,
               txn, ref, status, amount, currency, fee, occ, payout, raw
        FROM (
            SELECT s.line_no, nullif({v["txn_id"]}, '') AS txn,
                   nullif({v["reference"]}, '') AS ref, st.status,
                   (replace({v["amount"]}, ' ', '')::numeric * power(10::numeric, cur.exp))::bigint AS amount,
                   cur.code AS currency,
                   ({fee_expr}::numeric * power(10::numeric, cur.exp))::bigint AS fee,
                   {occurred} AS occ,
                   {f"nullif(btrim(s.{payout}, {WS}), '')" if payout else "NULL"} AS payout,
                   left({raw_line}, 2000) AS raw
            {base}
        ) AS converted
        RETURNING business_date)
        SELECT business_date, count(*) FROM inserted GROUP BY business_date ORDER BY business_date
        """,  # noqa: S608
            params,
        )
    except psycopg2.DataError as exc:  # a value the checks let through and a cast refuses: 25:00, 31 Feb
        cursor.execute("ROLLBACK TO SAVEPOINT strict_path")
        raise LayoutError(str(exc)) from exc
    strict = {day: int(n) for day, n in cursor.fetchall()}
    return sum(strict.values()), errors, strict


def _too_long(key: str, text: str) -> str:
    """SQL: a ``CASE`` branch naming the trimmed identifier ``text`` as ``too_long`` does, when it is too long."""
    what, limit = IDENTIFIERS[key]
    return (
        f"WHEN char_length({text}) > {int(limit)} THEN '{what} ' || quote_literal(left({text}, 30)) || '... has ' "
        f"|| char_length({text}) || ' characters, more than the {int(limit)} kept'"
    )


def _stage(
    engine: Any, stage: str, width: int, path: Path, cuts: list[tuple[int, int]], *, progress: Progress = silent
) -> list[tuple[str, int, int, int]]:
    """COPY the file as text into unlogged tables the side sessions can read, one per part (``cuts``: byte ranges,
    side by side): [(table, lines before it in the file, its rows, its pages)]. The first table is ``stage``, the k-th
    ``stage_<k>``; each numbers its rows from 1 (``line_no``).

    A cut inside a quoted field (a line break in a value) leaves the part before it unterminated, which COPY
    refuses: the file is then staged whole, as one part. ``LayoutError`` when COPY refuses the file itself.
    """
    columns = ", ".join(f"c{i} text" for i in range(width))
    copied = ", ".join(f"c{i}" for i in range(width))
    tables = [stage] + [f"{stage}_{k}" for k in range(1, len(cuts))]
    copy = _CopyProgress(progress, cuts[-1][1])  # ``_cuts`` gives one range at least

    def load(table: str, start: int, stop: int) -> tuple[int, int]:
        side = engine.raw_connection()
        try:
            cursor = side.cursor()
            cursor.execute(f"CREATE UNLOGGED TABLE {table} (line_no bigint GENERATED ALWAYS AS IDENTITY, {columns})")
            with path.open("rb") as handle:
                handle.seek(start)
                cursor.copy_expert(
                    f"COPY {table} ({copied}) FROM STDIN WITH (FORMAT csv, HEADER {str(start == 0).lower()}, "
                    f"ENCODING 'UTF8', FORCE_NOT_NULL ({copied}))",
                    _Range(handle, stop - start, copy),
                )
            rows = int(cursor.rowcount)
            cursor.execute("SELECT pg_relation_size(%s) / current_setting('block_size')::int", (table,))
            pages = int(cursor.fetchone()[0])
            side.commit()
            return rows, pages
        except psycopg2.Error as exc:  # BadCopyFileFormat and kin: the table goes with the rollback
            side.rollback()
            raise LayoutError(str(exc)) from exc
        finally:
            side.close()

    if len(cuts) == 1:
        return [(stage, 0, *load(stage, *cuts[0]))]
    with ThreadPoolExecutor(len(cuts), thread_name_prefix="statement-stage") as pool:
        jobs = [pool.submit(load, table, start, stop) for table, (start, stop) in zip(tables, cuts, strict=True)]
        errors = [job.exception() for job in jobs]
    if not any(errors):
        sizes = [job.result() for job in jobs]
        rows = [n for n, _ in sizes]
        return [(table, sum(rows[:k]), *size) for k, (table, size) in enumerate(zip(tables, sizes, strict=True))]
    side = engine.raw_connection()
    try:  # drop the parts that were copied
        side.cursor().execute("DROP TABLE IF EXISTS " + ", ".join(tables))
        side.commit()
    finally:
        side.close()
    unexpected = next((error for error in errors if error is not None and not isinstance(error, LayoutError)), None)
    if unexpected is not None:
        raise unexpected
    copy.restart()  # COPY refused a part: the cut may be inside a quoted value; the whole file, as one part
    return [(stage, 0, *load(stage, 0, cuts[-1][1]))]


def _cuts(path: Path, end: int, parts: int) -> list[tuple[int, int]]:
    """The first ``end`` bytes of the file in up to ``parts`` byte ranges of about equal size, each but the
    last ending just after a line feed (a line break inside a quoted value is found out by COPY: ``_stage``)."""
    bounds = [0]
    with path.open("rb") as handle:
        header = len(handle.readline())
        for k in range(1, parts):
            at = max(end * k // parts, header, bounds[-1])
            handle.seek(at)
            found = handle.read(1 << 20).find(b"\n")
            if found < 0 or at + found + 1 >= end:
                break
            bounds.append(at + found + 1)
    return list(zip(bounds, [*bounds[1:], end], strict=True))


#: A line that is only ``\.``: COPY's end-of-data marker, even in CSV; what follows would be dropped.
_END_OF_DATA = re.compile(rb"(?:\A|\n)\\\.\r?\n")


#: Whitespace ``str.strip()`` removes besides space, CR and LF: ASCII bytes, and the others decoded.
_ASCII_SPACES = b"\t\x0b\x0c\x1c\x1d\x1e\x1f"
_WIDE_SPACES = re.compile("[" + "".join(c for c in WHITESPACE if ord(c) > 127) + "]")


#: What whitespace the fields of a file may start or end with (``_scan``), so what the optimistic path trims:
#: none at all (most exports), only spaces, CR and LF, or any whitespace ``str.strip()`` removes.
NONE, NARROW, WIDE = "none", "narrow", "wide"


def _scan(path: Path, *, progress: Progress = silent) -> tuple[int, str]:
    r"""(bytes COPY reads, ``NONE``, ``NARROW`` or ``WIDE``).

    COPY reads up to the last line with content: blank lines at the end (spreadsheets write them)
    would be rows COPY refuses, sending a good file down the Python path. ``LayoutError`` for a
    line that is only ``\.``, which COPY would take for the end of the data. A file with only
    spaces, CR and LF around its values (most are) lets the optimistic path trim them cheaply, and
    one where no field starts or ends with whitespace (``_whitespace``) needs no trim at all: trimming
    six fields is about a tenth of the conversion's CPU.
    """
    wide = edges = False
    size, done = path.stat().st_size, 0
    progress("check", 0, size)
    with path.open("rb") as handle:
        carry = b""  # the last, unfinished line of the blocks read so far
        first = True
        for block in iter(lambda: handle.read(1 << 20), b""):
            done += len(block)
            progress("check", done, max(size, done))
            if first:
                _line_ends(block)
                first = False
            data = carry + block
            cut = data.rfind(b"\n") + 1
            lines, carry = data[:cut], data[cut:]
            wide, edges = _whitespace(lines, wide, edges)
            if b"\\." in lines and _END_OF_DATA.search(lines):
                raise LayoutError("a line holds only '\\.'")
            if b'"' in lines and _STRAY_QUOTE.search(lines):
                raise LayoutError("a quote inside a field")
        if carry.rstrip(b"\r") == b"\\.":
            raise LayoutError("a line holds only '\\.'")
        wide, edges = _whitespace(carry, wide, edges)
        size = handle.tell()
        window = min(size, 1 << 20)
        handle.seek(size - window)
        tail = handle.read(window)
    end = len(tail)
    while end > 0:
        start = tail.rfind(b"\n", 0, end - 1) + 1
        if tail[start:end].strip():
            break
        end = start
    return (size - window + end if end or window == size else size), WIDE if wide else NARROW if edges else NONE


#: A quote inside a field (neither opening nor closing it): COPY and Python's csv read ``OP"9"X``,
#: `` "OP9"`` or ``TXN""9`` differently. An escaped quote inside a quoted field (``"a""b"``) looks
#: the same here: such a file takes the Python path, slower but read one way.
_STRAY_QUOTE = re.compile(rb'(?<=[^,\r\n"])"(?=[^,\r\n"])|[^,\r\n"]""[^,\r\n"]')


def _line_ends(first: bytes) -> None:
    """COPY takes the first line's ending for the whole file; a file whose lines end with a CR
    alone (old Mac exports) goes to the Python path, which reads any ending line by line."""
    cr, lf = first.find(b"\r"), first.find(b"\n")
    if cr != -1 and (lf == -1 or cr < lf) and first[cr + 1 : cr + 2] != b"\n":
        raise LayoutError("lines end with a CR alone")


#: For ``_whitespace``: a space stays, what a field ends at (a comma, a CR or LF, a quote) becomes a comma,
#: the ASCII whitespace ``str.strip()`` removes besides space, CR and LF a ``w``, the rest an ``x``: one
#: translation, then a search or two (a search costs about 1 ns a byte, whatever it seeks).
_MARKS = bytes(
    c if c == ord(" ") else ord(",") if c in b',\r\n"' else ord("w") if c in _ASCII_SPACES else ord("x")
    for c in range(256)
)
#: A CR or LF beside a quote: at a quoted field's edge (``"a\n"``), or a line's end after a quoted field.
_EDGE_BREAKS = (b'"\r', b'\r"', b'"\n', b'\n"')


def _whitespace(lines: bytes, wide: bool, edges: bool) -> tuple[bool, bool]:
    """(``wide``, ``edges``) updated with ``lines`` (whole lines, the first at a line's start): ``wide`` whether
    they hold whitespace other than space, CR and LF; ``edges`` whether a field may start or end with a space,
    CR or LF: a space beside a separator, a line break or a quote (`` "a"``, ``"a "``), or at the start.
    Unquoted fields hold no CR or LF (COPY refuses the line); quoted ones are judged by the quote."""
    if wide:
        return True, True
    marks = lines.translate(_MARKS)
    if b"w" in marks or (not lines.isascii() and _WIDE_SPACES.search(lines.decode("utf-8", "replace"))):
        return True, True
    if not edges:
        # (Whole lines end with an LF, a comma here: only the last line of a file without a final LF ends with a space.)
        edges = marks.startswith(b" ") or marks.endswith(b" ") or b" ," in marks or b", " in marks
        # A quote at the start: the line break before it, the end of the previous block, may close a quoted field.
        edges = edges or (b'"' in lines and (lines.startswith(b'"') or any(pair in lines for pair in _EDGE_BREAKS)))
    return False, edges


class _CopyProgress:
    """The ``copy`` stage (bytes) of parts copied side by side: one total, reported under a lock."""

    def __init__(self, progress: Progress, size: int) -> None:
        self.progress, self.size, self.done = progress, size, 0
        self.lock = threading.Lock()
        progress("copy", 0, size)

    def add(self, n: int) -> None:
        with self.lock:
            self.done += n
            self.progress("copy", min(self.done, self.size), self.size)

    def restart(self) -> None:
        """The file staged again, whole: count from what was reported (the stage never goes back)."""
        with self.lock:
            self.size += self.done  # the whole file again, after what was read of it


class _Range:
    """The next ``size`` bytes of a binary file, for COPY, counted in ``copy``."""

    def __init__(self, handle: Any, size: int, copy: _CopyProgress) -> None:
        self.handle, self.left, self.copy = handle, size, copy

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data: bytes = self.handle.read(n)
        self.left -= len(data)
        self.copy.add(len(data))
        return data


def _sweep(side: Any, current: int) -> None:
    """Delete the lines of loads that never committed: stage tables no live transaction holds."""
    cursor = side.cursor()
    cursor.execute(
        "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE %s AND pg_table_is_visible(oid)",
        (STAGE_PREFIX.replace("_", "\\_") + "%",),
    )
    loads: dict[int, list[str]] = {}  # import id -> its stage tables (``<id>``, ``<id>_<k>``)
    for (name,) in cursor.fetchall():
        head, _, part = name.removeprefix(STAGE_PREFIX).partition("_")
        if head.isdigit() and (part == "" or part.isdigit()):
            loads.setdefault(int(head), []).append(name)
    for import_id, tables in sorted(loads.items()):
        if import_id != current:  # ours is stale by definition: this import holds the lock on its id
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", (LOCK_SPACE, _lock_key(import_id)))
            if not cursor.fetchone()[0]:
                continue  # its import is still running
        cursor.execute(
            "DELETE FROM statement_lines WHERE import_id = %(id)s "
            "AND NOT EXISTS (SELECT 1 FROM statement_imports WHERE id = %(id)s)",
            {"id": import_id},
        )
        cursor.execute("DROP TABLE IF EXISTS " + ", ".join(tables))  # its import may have just committed
    side.commit()


def _load_side_by_side(
    engine: Any,
    sql: Callable[[str], str],
    params: dict[str, Any],
    chunks: list[tuple[str, int, str, str]],
    *,
    workers: int,
    staged: int,
    progress: Progress = silent,
) -> dict[date, int] | None:
    """The optimistic load of the ``chunks`` (``_chunks``) by ``workers`` sessions side by side, each taking the next
    range as it ends one; all commit, or none does (a range not plainly good stops them all). ``progress`` hears the
    ``insert`` stage in lines (of ``staged``) as each range is done."""
    statements: dict[str, str] = {}
    for table, _, _, _ in chunks:
        statements.setdefault(table, sql(table))
    pending = iter(chunks)
    lock = threading.Lock()
    refused = threading.Event()
    done = 0

    def work(connection: Any) -> dict[date, int] | None:
        nonlocal done
        cursor = connection.cursor()
        days: dict[date, int] = {}
        try:
            while not refused.is_set():
                with lock:
                    chunk = next(pending, None)
                if chunk is None:
                    return days
                table, offset, lo, hi = chunk
                result = _fast_insert(cursor, statements[table], {**params, "offset": offset, "lo": lo, "hi": hi})
                if result is None:
                    refused.set()
                    return None
                for day, n in result.items():
                    days[day] = days.get(day, 0) + n
                with lock:
                    done += sum(result.values())
                    progress("insert", min(done, staged), staged)
        except BaseException:
            refused.set()  # the other sessions stop at their next range; the error is raised below
            raise
        return None

    connections: list[Any] = []
    try:
        for _ in range(max(1, min(workers, len(chunks)))):
            connections.append(engine.raw_connection())  # one at a time: each is closed below, whatever fails
        with ThreadPoolExecutor(len(connections), thread_name_prefix="statement-load") as pool:
            results = list(pool.map(work, connections))
        if refused.is_set() or any(result is None for result in results):
            for connection in connections:
                connection.rollback()
            return None
        for connection in connections:
            connection.commit()  # invisible until the import row commits (VISIBLE)
        days: dict[date, int] = {}
        for result in results:
            for day, n in (result or {}).items():
                days[day] = days.get(day, 0) + n
        if done < staged:  # every range read: the lines the stage tables held
            progress("insert", staged, staged)
        return days
    finally:
        for connection in connections:
            connection.close()


def _fast_sql(
    stage: str,
    *,
    col: dict[str, str],
    fee: str | None,
    payout: str | None,
    raw: str,
    currencies: str,
    statuses: str,
    spaces: str | None,
) -> str:
    """The optimistic conversion and insert of the lines of the stage table ``stage`` on its pages from the ``tid``
    ``%(lo)s`` to before ``%(hi)s`` (``_chunks``), numbered ``%(offset)s`` on (the lines of the file's earlier parts).

    Casts instead of regular expressions (these cost more than the insert
    itself on a 1,000,000-row day). A row a cast refuses raises, a row a cheap check refuses
    gets a NULL status (a NOT NULL column): either way the statement fails, is rolled back to
    its savepoint, and the strict path names every bad row. Times without an offset are read
    in the file's zone: the session's, for the length of the statement. ``spaces``: what to trim
    from each field (an SQL literal), None when no field starts or ends with whitespace.

    PostgreSQL's ``translate`` and ``btrim`` cost about 40 ns a character in a UTF-8 database: the
    common cases take cheaper checks first (``_time``, ``_minor``), and the currency and status
    are compared in the C collation, whose ``upper`` and ``lower`` change ASCII letters only (a
    value with other letters fails to match and the strict path, which folds every letter, reads
    it).
    """

    def trim(column: str) -> str:
        return f"btrim(s.{column}, {spaces})" if spaces else f"s.{column}"

    # Each field trimmed as Python does (when any needs it), and the time read as a timestamp, once per line
    # (``per_line``): the conversion refers to each several times, and an expression is evaluated at every reference.
    fields = {key: trim(column) for key, column in col.items()}
    fields["amount"] = f"replace({fields['amount']}, ' ', '')"  # spaces inside a number: thousands ("5 000")
    fields["fee_text"] = f"nullif(replace({trim(fee)}, ' ', ''), '')" if fee else "NULL::text"
    fields["payout"] = f"nullif({trim(payout)}, '')" if payout else "NULL::text"
    # Read once for ``_time``; only a time with a space after its date can be of the common layout.
    fields["ts"] = f"CASE WHEN substr({fields['time']}, 11, 1) = ' ' THEN {fields['time']}::timestamp END"
    # The keys of the currency and status lookups, once per line: the stage is not analyzed, so the planner joins the
    # few statuses by a nested loop that folded each line's status once per word (a million lines, four words: four
    # million ``lower`` calls), where the join now compares ready values.
    fields["currency_key"] = f'upper({fields.pop("currency")} COLLATE "C")'
    fields["status_key"] = f'lower({fields.pop("status")} COLLATE "C")'
    per_line = ", ".join(f"{expr} AS f_{key}" for key, expr in fields.items())
    amount, fee_text = "t.f_amount", "t.f_fee_text"
    return f"""
            WITH inserted AS (
            INSERT INTO statement_lines (provider, business_date, source, import_id, line_no, provider_txn_id,
                reference, status, amount, currency, fee, occurred_at, payout_id, raw)
            SELECT %(provider)s, (occ AT TIME ZONE %(business_tz)s)::date, 'file', %(import_id)s,
                   line_no + 1 + %(offset)s, txn, ref,
                   CASE WHEN amount IS NOT NULL AND occ IS NOT NULL AND (fee IS NOT NULL OR fee_text IS NULL)
                             AND NOT (ref IS NULL AND status = 'succeeded')
                             AND NOT (status = 'payout' AND payout IS NULL) THEN status END,
                   amount, currency, fee, occ, payout, raw
            FROM (
                SELECT t.line_no, nullif(t.f_txn_id, '') AS txn,
                       nullif(t.f_reference, '') AS ref, st.status, cur.code AS currency,
                       {_minor(amount)} AS amount,
                       {fee_text} AS fee_text,
                       {_minor(fee_text)} AS fee,
                       {_time("t.f_time", "t.f_ts")} AS occ,
                       t.f_payout AS payout,
                       -- left() counts characters, walking the line: only a line of over 2,000 bytes needs it
                       CASE WHEN octet_length(t.raw) <= 2000 THEN t.raw ELSE left(t.raw, 2000) END AS raw
                FROM (
                    SELECT s.line_no, {per_line}, concat_ws(',', {raw}) AS raw
                      FROM {stage} s
                     WHERE s.ctid >= %(lo)s::tid AND s.ctid < %(hi)s::tid
                    OFFSET 0  -- each field computed once, not at each of its uses below
                ) AS t
                LEFT JOIN (SELECT code, power(10::numeric, exp) AS mult, (10 ^ exp)::bigint AS imult
                           FROM (VALUES {currencies}) AS c(code, exp))
                    AS cur ON cur.code = t.f_currency_key
                LEFT JOIN (VALUES {statuses}) AS st(word, status) ON st.word = t.f_status_key
                OFFSET 0  -- computed once: a pulled-up subquery would repeat each conversion per use
            ) AS converted
            RETURNING business_date)
            SELECT business_date, count(*) FROM inserted GROUP BY business_date
        """  # noqa: S608


def _time(text: str, timestamp: str) -> str:
    """SQL: the ``TIME`` ``text`` as a timestamptz (in the session's zone if it names none), NULL if it is not one;
    ``timestamp``: ``text::timestamp`` when a space follows the date, else NULL (``_fast_sql``'s ``ts``).

    The common layout (``YYYY-MM-DD HH:MM:SS``) is the one that reads back as itself from a
    timestamp in ISO ``DateStyle`` (psycopg2 reads dates in no other): a digit, a separator or a space out of
    place, a 24th hour or a 60th second (which PostgreSQL carries into the next day or minute) would
    not; its four-digit year compares as bytes. Other layouts take ``_time_shape``. A text with a space after
    its date that no timestamp reads makes the statement fail (the strict path then names its line); ``now``
    and kin read, but not back as themselves.
    """
    common = (  # a year of four digits (PostgreSQL reads five and more), in YEARS, of our era (``... BC`` reads back)
        f"{timestamp}::text = {text} AND {text} LIKE '____-%%' AND {text} NOT LIKE '%%C' "
        f"AND {text} COLLATE \"C\" >= '{YEARS[0]}' AND {text} COLLATE \"C\" < '{int(YEARS[1]) + 1}'"
    )
    years = f"substr({text}, 1, 4) BETWEEN '{YEARS[0]}' AND '{YEARS[1]}'"
    return (
        f"CASE WHEN {common} THEN {timestamp}::timestamptz "
        f"WHEN {_time_shape(text)} AND substr({text}, 12, 2) <> '24' AND substr({text}, 17, 3) <> ':60' "
        f"AND {years} THEN {text}::timestamptz END"
    )


def _time_shape(text: str) -> str:
    """SQL: ``text`` has one of ``TIME_SHAPES`` (a hashed IN list: no regular expression)."""
    shapes = ", ".join(f"'{shape}'" for shape in TIME_SHAPES)
    return f"translate({text}, '0123456789', '9999999999') IN ({shapes})"


def _clock(text: str) -> str:
    """SQL: the hour, minute and second of a ``TIME`` are in range. PostgreSQL also reads 24:00:00 and
    a 60th second (as the next day or minute); Python, and so this importer, refuses them."""
    return (
        f"(substr({text}, 12, 2) <= '23' AND substr({text}, 15, 2) <= '59' "
        f"AND (substr({text}, 17, 1) <> ':' OR substr({text}, 18, 2) <= '59'))"
    )


def _calendar(text: str) -> str:
    """SQL: the date of a ``TIME`` exists (a day the month has; ``YEARS``), checked without a cast,
    so that the strict path names the line instead of failing on it."""
    year, month, day = f"substr({text}, 1, 4)", f"substr({text}, 6, 2)", f"substr({text}, 9, 2)::int"
    leap = f"(({year}::int % 4 = 0 AND {year}::int % 100 <> 0) OR {year}::int % 400 = 0)"
    last = (
        f"CASE WHEN {month} = '02' THEN CASE WHEN {leap} THEN 29 ELSE 28 END "
        f"WHEN {month} IN ('04', '06', '09', '11') THEN 30 ELSE 31 END"
    )
    return (
        f"({year} BETWEEN '{YEARS[0]}' AND '{YEARS[1]}' AND {month} BETWEEN '01' AND '12' "
        f"AND {day} BETWEEN 1 AND {last})"
    )


def _minor(text: str) -> str:
    """SQL: ``text`` (a number in major units) in minor units, NULL if it is not a plain number.

    Whole numbers, the common case in zero-decimal currencies, take integer arithmetic; others
    numeric; NULL too when it has more decimals than the currency. A whole number written as
    PostgreSQL writes a bigint (no sign but a minus, no leading zero) is told by reading it back;
    others take the character checks. A text without a point that no bigint reads (``12abc``,
    or too large) makes the statement fail, as the character checks' cast would.
    """
    other = f"translate({text}, '0123456789', '')"
    integer = f"({other} = '' OR ({other} = '-' AND {text} LIKE '-_%%'))"
    decimal = (
        f"translate({text}, '0123456789.-', '') = '' "
        f"AND {text} NOT LIKE '.%%' AND {text} NOT LIKE '-.%%' AND {text} NOT LIKE '%%.'"
    )
    scaled = f"{text}::numeric * cur.mult"
    exact = f"CASE WHEN {scaled} = trunc({scaled}) THEN ({scaled})::bigint END"
    checked = f"CASE WHEN {integer} THEN {text}::bigint * cur.imult WHEN {decimal} THEN {exact} END"
    plain = f"CASE WHEN strpos({text}, '.') = 0 THEN {text}::bigint::text = {text} END"  # no cast of 12.50
    return f"CASE WHEN {plain} THEN {text}::bigint * cur.imult ELSE {checked} END"


def _fast_insert(cursor: Any, sql: str, params: dict[str, Any]) -> dict[date, int] | None:
    """Run the optimistic statement; None (and nothing written) if any row is not plainly good."""
    cursor.execute("SELECT current_setting('TimeZone')")
    session_tz = cursor.fetchone()[0]
    cursor.execute("SAVEPOINT fast_path")
    try:
        cursor.execute("SELECT set_config('TimeZone', %(file_tz)s, true)", params)
        cursor.execute(sql, {"lo": "(0,0)", "hi": _END_TID, "offset": 0, **params})
        days = {day: int(n) for day, n in cursor.fetchall()}
    except (psycopg2.Error, ValueError):  # ValueError: a date psycopg2 cannot hold (a year BC), had one passed
        cursor.execute("ROLLBACK TO SAVEPOINT fast_path")  # also puts the session's TimeZone back
        return None
    cursor.execute("SELECT set_config('TimeZone', %s, true)", (session_tz,))
    cursor.execute("RELEASE SAVEPOINT fast_path")
    return days
