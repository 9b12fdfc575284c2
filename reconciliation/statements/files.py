"""Statement files finance staff download from provider portals: ``payrecon statements import``.

Each provider's export has its own columns; ``MAPPINGS`` says which column holds what (read
by header name, never by position), and ``docs/statements/<provider>.csv`` is a sample of each.
A file is imported whole or not at all: every bad row is reported with its line number, and
nothing is written unless every row is good. The same file (same SHA-256) is never imported
twice; a file that gives again transactions another file gave (the day exported again, overlapping date ranges)
replaces that file's lines of them (``import_file``). Rows are streamed: memory does not grow with the file; on
PostgreSQL they go in with COPY.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Date, bindparam, delete, exists, func, insert, or_, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from reconciliation.db import advisory_lock, is_postgres, statement_settings
from reconciliation.models import StatementImport, StatementImportDay, StatementLine
from reconciliation.progress import Progress, silent
from reconciliation.statements.pg import YEARS, too_long
from schemas.currency import MINOR_UNIT_EXPONENT

MAX_ERRORS = 50
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")
#: YYYY-MM-DD HH:MM[:SS[.ffffff]] with a space or T, then Z, ±HH, ±HHMM or ±HH:MM, or nothing.
_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?"
)
CHUNK = 20_000

#: The statement lines a reader may use: those of no import (a listing, the status API) and those of
#: a committed import. A large file's lines are written by side sessions just before their import
#: row commits (``statements_pg``); until it does, they are not the provider's word yet.
VISIBLE_SQL = "(import_id IS NULL OR import_id IN (SELECT id FROM statement_imports))"


def visible() -> ColumnElement[bool]:
    """``VISIBLE_SQL`` for ORM queries on ``StatementLine``."""
    return or_(StatementLine.import_id.is_(None), StatementLine.import_id.in_(select(StatementImport.id)))


@dataclass(frozen=True, slots=True)
class Mapping:
    """Where each field is in a provider's statement export (column names)."""

    reference: str
    txn_id: str
    time: str  # ISO 8601 or "YYYY-MM-DD HH:MM:SS"; without an offset it is read in ``tz``
    amount: str  # gross, in major units ("15000", "12.50")
    currency: str
    status: str
    statuses: dict[str, str]  # provider word -> succeeded | failed | pending | refunded
    fee: str | None = None
    payout: str | None = None
    tz: str = "UTC"

    @property
    def required(self) -> list[str]:
        return [self.reference, self.txn_id, self.time, self.amount, self.currency, self.status]


MAPPINGS: dict[str, Mapping] = {
    "cinetpay": Mapping(
        reference="transaction_id", txn_id="operator_id", time="payment_date", amount="amount",
        currency="currency", status="status", fee="fees",
        statuses={"ACCEPTED": "succeeded", "REFUSED": "failed", "WAITING_FOR_CUSTOMER": "pending",
                  "REFUNDED": "refunded"},
        tz="Africa/Abidjan",
    ),
    "mtn_momo": Mapping(
        reference="reference_id", txn_id="financial_transaction_id", time="date", amount="amount",
        currency="currency", status="status", fee="fee",
        statuses={"SUCCESSFUL": "succeeded", "FAILED": "failed", "PENDING": "pending", "REFUNDED": "refunded"},
    ),
    "orange_money": Mapping(
        reference="order_id", txn_id="txnid", time="date", amount="amount", currency="currency",
        status="status", fee="fee",
        statuses={"SUCCESS": "succeeded", "FAILED": "failed", "EXPIRED": "failed", "INITIATED": "pending",
                  "PENDING": "pending"},
    ),
    "wave": Mapping(
        reference="client_reference", txn_id="transaction_id", time="timestamp", amount="amount",
        currency="currency", status="payment_status", fee="fee", payout="payout_id",
        statuses={"succeeded": "succeeded", "cancelled": "failed", "expired": "failed",
                  "processing": "pending", "refunded": "refunded", "payout": "payout"},
    ),
}  # fmt: skip


@dataclass
class StatementError(Exception):
    """The file was not imported; ``errors`` are (line number, message), line 1 being the header."""

    message: str
    errors: list[tuple[int, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [self.message, *(f"  line {n}: {msg}" for n, msg in self.errors[:MAX_ERRORS])]
        if len(self.errors) > MAX_ERRORS:
            lines.append(f"  ... and {len(self.errors) - MAX_ERRORS} more")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Imported:
    import_id: int
    rows: int
    days: tuple[date, ...]  # every business day with a line of the file
    replaced: int = 0  # lines earlier files gave of the same transactions, which its own replace
    restated: tuple[date, ...] = ()  # the days of those lines: to reconcile again


def lines_from_file(session: Session, provider: str, day: date) -> int:
    """How many of ``provider``'s payments on ``day`` an imported statement file gives (visible lines): none when the
    files have only payout rows on that day. A payout is often paid the morning after the payments it settles (Wave's
    sample file: the 21st's payments, their payout on the 22nd at 06:00): that row does not make the file the
    provider's word for the 22nd's payments, which come from the listing or the status API."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(StatementLine)
            .where(
                StatementLine.provider == provider,
                StatementLine.source == "file",
                StatementLine.business_date == day,
                StatementLine.status != "payout",
                visible(),
            )
        )
        or 0
    )


def replace_lines(
    session: Session, provider: str, day: date, sources: tuple[str, ...], lines: list[dict[str, Any]]
) -> None:
    """The provider's lines of ``day`` from ``sources`` (``listing``, ``status_api``) become ``lines`` (none:
    they are dropped)."""
    session.execute(
        delete(StatementLine).where(
            StatementLine.provider == provider,
            StatementLine.business_date == day,
            StatementLine.source.in_(sources),
        )
    )
    if lines:
        session.execute(insert(StatementLine), lines)


def import_file(
    session: Session,
    provider: str,
    path: Path,
    *,
    business_tz: ZoneInfo,
    sessions: int | None = None,
    progress: Progress = silent,
) -> Imported:
    """Import a statement file in the caller's transaction (roll back on ``StatementError``).

    A transaction another file gave already (the day exported again with a late row, two overlapping date ranges)
    is the provider's word once: the lines earlier files gave of the transactions this file gives (``_replace``)
    go, and this file's stay (``Imported.replaced``, ``restated``). ``sessions``: on PostgreSQL, how many sessions
    load a large file side by side (default
    ``statements_pg.WORKERS``). ``progress`` hears each stage: ``checksum`` (bytes), then on
    PostgreSQL ``check`` and ``copy`` (bytes) and ``insert`` (rows), else ``rows``."""
    mapping = MAPPINGS.get(provider)
    if mapping is None:
        raise StatementError(f"no statement mapping for provider {provider!r}; known: {', '.join(MAPPINGS)}")
    digest, lines = _sha256(path, progress=progress)
    record = StatementImport(provider=provider, filename=path.name, sha256=digest, rows=0)
    try:
        with session.begin_nested():  # the (provider, sha256) key refuses a file imported before, or meanwhile
            session.add(record)
            session.flush()
    except IntegrityError:
        raise StatementError(f"{path.name} was already imported for {provider} (same SHA-256)") from None
    if session.get_bind().dialect.name == "postgresql":
        from reconciliation.statements.pg import LayoutError, import_copy

        try:
            rows, errors, days = import_copy(
                session, path, mapping, provider=provider, import_id=record.id, business_tz=business_tz,
                workers=sessions, lines=lines, progress=progress,
            )  # fmt: skip
        except LayoutError:
            pass  # a row COPY cannot even split: the streamed path below lists every bad row
        else:
            if errors:
                raise StatementError(f"{path.name}: {len(errors)} bad row(s); nothing imported", errors)
            if rows == 0:
                raise StatementError(f"{path.name} has no rows")
            record.rows = rows
            return _replace(session, record, days)
    parser = _Parser(mapping, provider, record.id, business_tz)
    rows = 0
    writer = _Writer(session)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            progress("rows", 0, max(lines - 1, 0))
            for chunk in _chunks(parser.rows(handle)):
                rows += len(chunk)
                progress("rows", rows, max(lines - 1, rows))
                if not parser.errors:  # after the first bad row: validate on, write no more
                    writer.write(chunk)
    except UnicodeDecodeError:
        raise StatementError(f"{path.name} is not UTF-8 text; nothing imported", [_not_utf8(path)]) from None
    if parser.errors:
        raise StatementError(f"{path.name}: {len(parser.errors)} bad row(s); nothing imported", parser.errors)
    if rows == 0:
        raise StatementError(f"{path.name} has no rows")
    record.rows = rows
    return _replace(session, record, parser.days)


#: The lines of other (committed) imports, on the days given, that are the same transaction as a line of this import,
#: one DELETE per kind of line (each a semi-join, hashed, never a subquery run per line): a payout row, the same
#: payout id; a line with a transaction id, the same id, reference and sign of amount (a refund row that shares its
#: payment's id, MTN's, is not that payment; the payment's status, amount or time may have changed since); a line
#: without one, the same reference, status, amount, currency and time (``_BARE``). Only other imports' lines go:
#: a line a file lists twice is the provider's duplicate.
_OTHERS = """
DELETE FROM statement_lines AS o
 WHERE o.provider = :provider AND o.source = 'file' AND o.business_date IN :days
   AND o.import_id <> :import_id AND o.import_id IN (SELECT id FROM statement_imports)
   AND {same}
RETURNING business_date
"""
_MINE = (
    "SELECT {columns} FROM statement_lines n WHERE n.provider = :provider AND n.business_date IN :days "
    "AND n.import_id = :import_id AND {kind}"
)
#: A line without a transaction id, as a row of hashable values (a missing reference or time as an empty text).
_BARE = (
    "(coalesce({t}.reference, ''), {t}.status, {t}.amount, {t}.currency, coalesce(CAST({t}.occurred_at AS TEXT), ''))"
)
_REPLACED = tuple(
    _OTHERS.format(same=same)
    for same in (
        "o.status = 'payout' AND o.payout_id IN ("
        + _MINE.format(columns="n.payout_id", kind="n.status = 'payout'")
        + ")",
        "o.status <> 'payout' AND o.provider_txn_id IS NOT NULL "
        "AND (o.provider_txn_id, coalesce(o.reference, ''), o.amount < 0) IN ("
        + _MINE.format(
            columns="n.provider_txn_id, coalesce(n.reference, ''), n.amount < 0",
            kind="n.status <> 'payout' AND n.provider_txn_id IS NOT NULL",
        )
        + ")",
        "o.status <> 'payout' AND o.provider_txn_id IS NULL AND "
        + _BARE.format(t="o")
        + " IN ("
        + _MINE.format(columns=_BARE.format(t="n")[1:-1], kind="n.status <> 'payout' AND n.provider_txn_id IS NULL")
        + ")",
    )
)


def _replace(session: Session, record: StatementImport, lines: dict[date, int]) -> Imported:
    """``record``'s import (its ``lines`` per business day written): the lines earlier (committed) imports gave of
    the same transactions (``_REPLACED``) on its days go, and its days are recorded (``StatementImportDay``; an
    earlier import left with no line on one of them loses it). Imports of a provider take turns here (an advisory
    lock until commit): the second sees the lines of the first."""
    provider, days = record.provider, sorted(lines)
    advisory_lock(session, f"statement-import:{provider}")
    shared = list(
        session.scalars(
            select(StatementImportDay.business_date)
            .where(
                StatementImportDay.provider == provider,
                StatementImportDay.business_date.in_(days),
                StatementImportDay.import_id != record.id,
            )
            .distinct()
            .order_by(StatementImportDay.business_date)
        )
    )
    gone: list[date] = []
    if shared:  # only then: a day no other file has lines on needs no look at them
        params = {"provider": provider, "days": shared, "import_id": record.id}
        # Joined by hash (or merge), never a loop over one side per line of the other: lines just loaded have no
        # statistics, and a planner that guesses few of them would loop (quadratic in a day's lines).
        planner = statement_settings(session, {"enable_nestloop": "off"}) if is_postgres(session) else nullcontext()
        with planner:
            for sql in _REPLACED:
                statement = text(sql).bindparams(bindparam("days", expanding=True, type_=Date))
                gone += session.scalars(statement.columns(business_date=Date), params)
    restated = sorted(set(gone))
    if restated:
        session.execute(
            delete(StatementImportDay).where(
                StatementImportDay.provider == provider,
                StatementImportDay.business_date.in_(restated),
                StatementImportDay.import_id != record.id,
                ~exists().where(
                    StatementLine.provider == provider,
                    StatementLine.business_date == StatementImportDay.business_date,
                    StatementLine.import_id == StatementImportDay.import_id,
                ),
            )
        )
    session.add_all(StatementImportDay(provider=provider, business_date=day, import_id=record.id) for day in days)
    session.flush()
    return Imported(record.id, record.rows, tuple(days), len(gone), tuple(restated))


class _Parser:
    """Reads a statement's rows into statement_lines tuples, collecting errors with line numbers."""

    def __init__(self, mapping: Mapping, provider: str, import_id: int, business_tz: ZoneInfo) -> None:
        self.mapping = mapping
        self.provider = provider
        self.import_id = import_id
        self.business_tz = business_tz
        self.file_tz = ZoneInfo(mapping.tz)
        self.errors: list[tuple[int, str]] = []
        self.days: Counter[date] = Counter()  # lines per business day
        self.col: dict[str, int] = {}
        self.fee_col: int | None = None
        self.payout_col: int | None = None

    def rows(self, handle: IO[str]) -> Iterator[tuple[Any, ...]]:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise StatementError("the file is empty")
        index = {name.strip(): i for i, name in enumerate(header)}
        m = self.mapping
        missing = [name for name in m.required if name not in index]
        if missing:
            raise StatementError(f"missing column(s) {', '.join(missing)}; expected at least {', '.join(m.required)}")
        self.col = {
            key: index[getattr(m, key)] for key in ("reference", "txn_id", "time", "amount", "currency", "status")
        }
        self.fee_col = index.get(m.fee) if m.fee else None
        self.payout_col = index.get(m.payout) if m.payout else None
        width = len(header)
        for line_no, row in enumerate(reader, start=2):
            if len(row) != width:
                if any(cell.strip() for cell in row):  # a blank line is no error
                    self.errors.append((line_no, f"{len(row)} fields, the header has {width}"))
                continue
            try:
                yield self.line(row, line_no)
            except ValueError as exc:
                self.errors.append((line_no, str(exc)))

    def line(self, row: list[str], line_no: int) -> tuple[Any, ...]:
        col, m = self.col, self.mapping
        if any("\0" in cell for cell in row):  # PostgreSQL keeps no NUL in text (COPY refused the file for it)
            raise ValueError("a NUL character (byte 0), which no text column can hold")
        currency = row[col["currency"]].strip().upper()
        if currency not in MINOR_UNIT_EXPONENT:
            raise ValueError(f"unknown currency {currency[:10]!r}")
        amount = _minor(row[col["amount"]], currency, "amount")
        fee_text = row[self.fee_col].strip() if self.fee_col is not None else ""
        fee = _minor(fee_text, currency, "fee") if fee_text else None
        word = row[col["status"]].strip()
        status = m.statuses.get(word) or m.statuses.get(word.upper()) or m.statuses.get(word.lower())
        if status is None:
            raise ValueError(f"unknown status {word[:30]!r}; expected one of {', '.join(m.statuses)}")
        raw_time = row[col["time"]].strip()
        try:
            if not _TIME.fullmatch(raw_time) or not YEARS[0] <= raw_time[:4] <= YEARS[1]:
                raise ValueError(raw_time)  # the SQL paths' shapes: fromisoformat alone takes more
            occurred = datetime.fromisoformat(raw_time)
        except ValueError:
            raise ValueError(f"time {raw_time[:40]!r} is not YYYY-MM-DD HH:MM:SS or ISO 8601") from None
        occurred = (occurred if occurred.tzinfo else occurred.replace(tzinfo=self.file_tz)).astimezone(UTC)
        day = occurred.astimezone(self.business_tz).date()
        self.days[day] += 1
        reference = row[col["reference"]].strip() or None
        if reference is None and status == "succeeded":
            raise ValueError("a paid row without a reference cannot be matched")
        payout = (row[self.payout_col].strip() or None) if self.payout_col is not None else None
        if status == "payout" and payout is None:
            raise ValueError("a payout row needs its payout id")
        txn_id = row[col["txn_id"]].strip() or None
        for key, value in (("reference", reference), ("txn_id", txn_id), ("payout", payout)):
            if value is not None and (error := too_long(key, value)):
                raise ValueError(error)
        return (
            self.provider, day, "file", self.import_id, line_no, txn_id, reference,
            status, amount, currency, fee, occurred, payout, ",".join(row)[:2000],
        )  # fmt: skip


def _not_utf8(path: Path) -> tuple[int, str]:
    """(line, message) of the first byte sequence that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line, offset = 1, 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                at = max(exc.start, 0)
                line += block.count(b"\n", 0, at)
                return line, f"not UTF-8 text (byte {offset + at + 1} of the file); export the statement as UTF-8"
            line += block.count(b"\n")
            offset += len(block)
    return line, "not UTF-8 text; export the statement as UTF-8"


def _sha256(path: Path, *, progress: Progress = silent) -> tuple[str, int]:
    """(SHA-256 of the file, its number of lines)."""
    digest = hashlib.sha256()
    size, done, lines, last = path.stat().st_size, 0, 0, b"\n"
    progress("checksum", 0, size)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            lines += block.count(b"\n")
            last = block[-1:]
            done += len(block)
            progress("checksum", done, max(size, done))
    return digest.hexdigest(), lines + (last != b"\n")


def _minor(text: str, currency: str, what: str) -> int:
    value = text.strip().replace(" ", "")  # "5 000": a space inside a number separates thousands
    if not _NUMBER.fullmatch(value):  # the SQL paths' rule: no exponent, no "+", no bare point
        raise ValueError(f"{what} {text[:30]!r}: not a number")
    exponent = MINOR_UNIT_EXPONENT[currency]
    whole, _, fraction = value.partition(".")
    if len(fraction.rstrip("0")) > exponent:
        raise ValueError(f"{what} {text[:30]!r}: has more decimals than {currency} allows")
    digits = whole.lstrip("-") + fraction.ljust(exponent, "0")[:exponent]  # exact: no float, no rounding
    minor = -int(digits) if whole.startswith("-") else int(digits)
    if not -(2**63) <= minor < 2**63:  # what the database holds (bigint)
        raise ValueError(f"{what} {text[:30]!r}: too large")
    return minor


def _chunks(rows: Iterator[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


COLUMNS = (
    "provider", "business_date", "source", "import_id", "line_no", "provider_txn_id", "reference", "status",
    "amount", "currency", "fee", "occurred_at", "payout_id", "raw",
)  # fmt: skip


class _Writer:
    """COPY on PostgreSQL (the fast path for a 1,000,000-row day), executemany elsewhere."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.postgres = session.get_bind().dialect.name == "postgresql"

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        if not self.postgres:
            self.session.execute(insert(StatementLine), [dict(zip(COLUMNS, row, strict=True)) for row in rows])
            return
        buffer = io.StringIO()
        out = csv.writer(buffer)
        for row in rows:
            out.writerow(["" if v is None else (v.isoformat() if isinstance(v, date) else v) for v in row])
        buffer.seek(0)
        cursor = self.session.connection().connection.cursor()
        cursor.copy_expert(f"COPY statement_lines ({', '.join(COLUMNS)}) FROM STDIN WITH (FORMAT csv, NULL '')", buffer)
