"""The fast path of a statement import on PostgreSQL: COPY the file as text into a staging table,
validate every row with one query, convert and insert with one ``INSERT ... SELECT``.

The same rules as the streamed Python path (``statements._Parser``), written in SQL; a file
whose layout COPY itself refuses (a row with too many or too few fields) goes back to the
Python path, which lists every bad row.
"""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from schemas.currency import MINOR_UNIT_EXPONENT

if TYPE_CHECKING:
    from reconciliation.statements import Mapping

TIME = r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)?$"
NUMBER = r"^-?[0-9]+(\.[0-9]+)?$"


class LayoutError(Exception):
    """COPY refused the file's layout: let the Python path find every bad row."""


def _values(rows: list[tuple[Any, ...]]) -> str:
    return ", ".join("(" + ", ".join(_literal(v) for v in row) + ")" for row in rows)


def _literal(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def import_copy(
    session: Session, path: Path, mapping: Mapping, *, provider: str, import_id: int, business_tz: ZoneInfo
) -> tuple[int, list[tuple[int, str]], tuple[date, ...]]:
    """(rows inserted, errors, business days). Nothing is inserted when there are errors."""
    conn = session.connection().connection
    cursor = conn.cursor()
    with path.open(encoding="utf-8-sig", newline="") as handle:
        header = next(iter(handle.readline().splitlines()), "")
    names = [name.strip() for name in next(csv.reader([header]))]
    position = {name: f"c{i}" for i, name in enumerate(names)}
    missing = [name for name in mapping.required if name not in position]
    if missing:
        from reconciliation.statements import StatementError  # the module that imports this one

        raise StatementError(f"missing column(s) {', '.join(missing)}; expected at least {', '.join(mapping.required)}")
    columns = ", ".join(f"c{i} text" for i in range(len(names)))
    cursor.execute(f"CREATE TEMP TABLE stage (line_no bigserial, {columns}) ON COMMIT DROP")
    cursor.execute("SAVEPOINT before_copy")
    try:
        with path.open("rb") as handle:
            cursor.copy_expert(
                f"COPY stage ({', '.join(f'c{i}' for i in range(len(names)))}) "
                "FROM STDIN WITH (FORMAT csv, HEADER true, ENCODING 'UTF8')",
                handle,
            )
    except Exception as exc:  # psycopg2.errors.BadCopyFileFormat and kin
        cursor.execute("ROLLBACK TO SAVEPOINT before_copy")
        raise LayoutError(str(exc)) from exc
    col = {
        key: position[getattr(mapping, key)] for key in ("reference", "txn_id", "time", "amount", "currency", "status")
    }
    fee = position.get(mapping.fee) if mapping.fee else None
    payout = position.get(mapping.payout) if mapping.payout else None
    currencies = _values([(code, exp) for code, exp in MINOR_UNIT_EXPONENT.items()])
    statuses = _values([(word.lower(), status) for word, status in mapping.statuses.items()])
    fee_expr = f"nullif(trim({fee}), '')" if fee else "NULL"
    base = f"""
        FROM stage s
        LEFT JOIN (VALUES {currencies}) AS cur(code, exp) ON cur.code = upper(trim(s.{col["currency"]}))
        LEFT JOIN (VALUES {statuses}) AS st(word, status) ON st.word = lower(trim(s.{col["status"]}))
    """
    problem = f"""CASE
        WHEN cur.code IS NULL THEN 'unknown currency ' || quote_literal(left(upper(trim(s.{col["currency"]})), 10))
        WHEN trim(s.{col["amount"]}) !~ '{NUMBER}' THEN 'amount ' || quote_literal(left(s.{col["amount"]}, 30))
            || ': not a number'
        WHEN trim(s.{col["amount"]})::numeric * power(10::numeric, cur.exp)
             <> trunc(trim(s.{col["amount"]})::numeric * power(10::numeric, cur.exp))
            THEN 'amount ' || quote_literal(left(s.{col["amount"]}, 30)) || ': has more decimals than '
            || cur.code || ' allows'
        WHEN {fee_expr} IS NOT NULL AND trim({fee or "''"}) !~ '{NUMBER}'
            THEN 'fee ' || quote_literal(left({fee or "''"}, 30)) || ': not a number'
        WHEN st.word IS NULL THEN 'unknown status ' || quote_literal(left(trim(s.{col["status"]}), 30))
            || '; expected one of {", ".join(mapping.statuses).replace("'", "''")}'
        WHEN trim(s.{col["time"]}) !~ '{TIME}' THEN 'time ' || quote_literal(left(trim(s.{col["time"]}), 40))
            || ' is not YYYY-MM-DD HH:MM:SS or ISO 8601'
        WHEN nullif(trim(s.{col["reference"]}), '') IS NULL AND st.status = 'succeeded'
            THEN 'a paid row without a reference cannot be matched'
        WHEN st.status = 'payout' AND {f"nullif(trim(s.{payout}), '')" if payout else "NULL"} IS NULL
            THEN 'a payout row needs its payout id'
    END"""
    cursor.execute(
        f"SELECT line_no + 1, problem FROM (SELECT s.line_no, {problem} AS problem {base}) AS checked "  # noqa: S608
        "WHERE problem IS NOT NULL ORDER BY line_no LIMIT 1000"
    )
    errors = [(int(line), str(message)) for line, message in cursor.fetchall()]
    if errors:
        return 0, errors, ()
    raw = " || ',' || ".join(f"coalesce(s.c{i}, '')" for i in range(len(names)))
    occurred = (
        f"CASE WHEN trim(s.{col['time']}) ~ '(Z|[+-]\\d{{2}}(:?\\d{{2}})?)$' THEN trim(s.{col['time']})::timestamptz "
        f"ELSE trim(s.{col['time']})::timestamp AT TIME ZONE %(file_tz)s END"
    )
    cursor.execute(
        f"""
        INSERT INTO statement_lines (provider, business_date, source, import_id, line_no, provider_txn_id,
            reference, status, amount, currency, fee, occurred_at, payout_id, raw)
        SELECT %(provider)s, (occ AT TIME ZONE %(business_tz)s)::date, 'file', %(import_id)s, line_no + 1,
               txn, ref, status, amount, currency, fee, occ, payout, raw
        FROM (
            SELECT s.line_no, nullif(trim(s.{col["txn_id"]}), '') AS txn,
                   nullif(trim(s.{col["reference"]}), '') AS ref, st.status,
                   (trim(s.{col["amount"]})::numeric * power(10::numeric, cur.exp))::bigint AS amount,
                   cur.code AS currency,
                   ({fee_expr}::numeric * power(10::numeric, cur.exp))::bigint AS fee,
                   {occurred} AS occ,
                   {f"nullif(trim(s.{payout}), '')" if payout else "NULL"} AS payout,
                   left({raw}, 2000) AS raw
            {base}
        ) AS converted
        """,  # noqa: S608
        {"provider": provider, "business_tz": str(business_tz), "import_id": import_id, "file_tz": mapping.tz},
    )
    rows = cursor.rowcount
    cursor.execute(
        "SELECT DISTINCT business_date FROM statement_lines WHERE import_id = %(import_id)s ORDER BY 1",
        {"import_id": import_id},
    )
    days = tuple(row[0] for row in cursor.fetchall())
    return rows, errors, days
