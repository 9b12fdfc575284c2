"""The ledger into accounting: business days, the account-to-chart mapping, the general journal.

A journal belongs to the business day (``PAYRECON_TIMEZONE``) in which it was **posted**: its
``created_at``, the day the ledger learnt of it, not the day the customer paid (a payment healed
by the nightly reconciliation is in the books of the day it was healed). ``ledger balances
--as-of D`` sums the journals posted before the end of D; ``ledger export --from A --to B`` writes
those posted from the start of A to the end of B. Both windows are computed here, once, from the
zone's own rules, so a day's balances and a day's export always agree.

The chart mapping (``PAYRECON_LEDGER_CHART``) is a small CSV file, edited by finance staff::

    # comment lines and blank lines are skipped
    payrecon_account,currency,code,name
    provider_clearing:orange_money,,5521,Orange Money - compte marchand
    revenue:subscriptions,XOF,706100,Abonnements

``currency`` may be empty (any currency) or name one (then it wins over the empty one for that
currency). Every problem is reported with its line number when the file is loaded.

The general journal is streamed: one server-side cursor (``yield_per``), one row at a time into
the CSV writer or openpyxl's write-only workbook, and written to a temporary file renamed into
place at the end, so a failed export never leaves half a file behind. Each journal is checked
while it streams: an export never writes a journal whose debits and credits differ.
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections import defaultdict
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from reconciliation.aside import replacing
from reconciliation.ledger import CREDIT, DEBIT
from reconciliation.models import Account, Entry, Journal, Payment, PayoutPosting
from reconciliation.progress import Progress, silent
from reconciliation.reports.common import formula_safe
from schemas.currency import MINOR_UNIT_EXPONENT, exponent, to_major

#: Rows fetched per round trip from the server-side cursor of an export.
STREAM_BATCH = 2_000
#: Excel's rows per sheet (the header takes one).
XLSX_MAX_ROWS = 1_048_576


def day_start(day: date, tz: ZoneInfo) -> datetime:
    """The instant (UTC) the business day ``day`` begins in ``tz``."""
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def day_end(day: date, tz: ZoneInfo) -> datetime:
    """The instant (UTC) the business day ``day`` ends in ``tz`` (the next day's start, excluded)."""
    return day_start(day + timedelta(days=1), tz)


def major(minor: int, currency: str) -> str:
    """Exact major units as a plain decimal string: ``5000`` XOF, ``12.50`` USD (never a float)."""
    return f"{to_major(minor, currency):.{exponent(currency)}f}"


# --------------------------------------------------------------------------- the chart mapping

CHART_COLUMNS = ("payrecon_account", "code", "name")
CHART_OPTIONAL = ("currency",)


class ChartError(ValueError):
    """The mapping file cannot be used; the message names the file and each bad line."""

    def __init__(self, path: Path, problems: Sequence[str]) -> None:
        shown = list(problems[:20]) + ([f"... {len(problems) - 20} more"] if len(problems) > 20 else [])
        super().__init__(f"chart mapping {path}:\n  " + "\n  ".join(shown))
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class ChartAccount:
    code: str
    name: str


@dataclass(frozen=True, slots=True)
class Chart:
    """payrecon account (and currency, or ``None`` for any) -> the merchant's chart account."""

    accounts: dict[tuple[str, str | None], ChartAccount]
    path: Path | None = None

    def lookup(self, account: str, currency: str) -> ChartAccount | None:
        return self.accounts.get((account, currency)) or self.accounts.get((account, None))


EMPTY_CHART = Chart({})


def load_chart(path: Path) -> Chart:
    """Read and check a mapping file; ``ChartError`` lists every problem with its line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ChartError(path, [f"cannot read it: {exc}"]) from None
    problems: list[str] = []
    accounts: dict[tuple[str, str | None], ChartAccount] = {}
    first_line: dict[tuple[str, str | None], int] = {}
    header: list[str] | None = None
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [value.strip() for value in next(csv.reader([line]))]
        if header is None:
            header = [name.lower() for name in fields]
            missing = [name for name in CHART_COLUMNS if name not in header]
            unknown = [name for name in header if name not in CHART_COLUMNS + CHART_OPTIONAL]
            if missing or unknown or len(set(header)) != len(header):
                raise ChartError(
                    path,
                    [
                        f"line {line_no}: the header must name the columns {', '.join(CHART_COLUMNS)} "
                        f"(and optionally currency), each once; got {', '.join(fields)}"
                    ],
                )
            continue
        if len(fields) != len(header):
            problems.append(f"line {line_no}: {len(fields)} fields, the header has {len(header)}")
            continue
        row = dict(zip(header, fields, strict=True))
        account, code, name = row["payrecon_account"], row["code"], row["name"]
        currency = row.get("currency", "").upper() or None
        bad = [f"{column} is empty" for column in CHART_COLUMNS if not row[column]]
        if account and (len(account) > 100 or any(c.isspace() for c in account)):
            bad.append(f"payrecon_account {account!r} is not an account code (no spaces, at most 100 characters)")
        if currency is not None and currency not in MINOR_UNIT_EXPONENT:
            bad.append(f"currency {row['currency']!r} is not one payrecon knows ({', '.join(MINOR_UNIT_EXPONENT)})")
        if bad:
            problems.extend(f"line {line_no}: {problem}" for problem in bad)
            continue
        key = (account, currency)
        if key in first_line:
            problems.append(
                f"line {line_no}: {account} ({currency or 'any currency'}) is already mapped on line {first_line[key]}"
            )
            continue
        first_line[key] = line_no
        accounts[key] = ChartAccount(code, name)
    if header is None:
        problems.append(f"no header line: expected {','.join(CHART_COLUMNS)} (and optionally currency)")
    elif not accounts and not problems:
        problems.append("it maps no account")
    if problems:
        raise ChartError(path, problems)
    return Chart(accounts, path)


class UnmappedAccounts(LookupError):
    """Accounts with entries in the period that the chart does not map."""

    def __init__(self, accounts: Sequence[tuple[str, str]]) -> None:
        self.accounts = list(accounts)
        listed = ", ".join(f"{code} ({currency})" for code, currency in self.accounts)
        super().__init__(f"{len(self.accounts)} account(s) with entries in the period are not in the chart: {listed}")


def accounts_in_window(session: Session, start: datetime, end: datetime) -> list[tuple[str, str]]:
    """The (account, currency) pairs with an entry in a journal posted in [start, end)."""
    rows = session.execute(
        select(Account.code, Account.currency)
        .distinct()
        .join(Entry, Entry.account_id == Account.id)
        .join(Journal, Journal.id == Entry.journal_id)
        .where(Journal.created_at >= start, Journal.created_at < end)
        .order_by(Account.code, Account.currency)
    ).all()
    return [(code, currency) for code, currency in rows]


def unmapped(session: Session, chart: Chart, start: datetime, end: datetime) -> list[tuple[str, str]]:
    return [pair for pair in accounts_in_window(session, start, end) if chart.lookup(*pair) is None]


# --------------------------------------------------------------------------- the general journal


@dataclass(frozen=True, slots=True)
class JournalLine:
    """One entry of the general journal: its side's amount in ``debit`` or ``credit``, the other 0."""

    day: date  # business day of the journal's posting
    journal_id: int
    kind: str
    memo: str
    account_code: str  # the merchant's chart (or the payrecon account, when kept unmapped)
    account_name: str
    payrecon_account: str
    debit: int  # minor units
    credit: int
    currency: str
    reference: str  # the payment's reference, or the provider's payout id; "" otherwise
    reverses_journal_id: int | None

    @property
    def debit_major(self) -> str:
        return major(self.debit, self.currency)

    @property
    def credit_major(self) -> str:
        return major(self.credit, self.currency)


def iter_journal(
    session: Session, start: datetime, end: datetime, tz: ZoneInfo, chart: Chart, *, keep_unmapped: bool = False
) -> Iterator[JournalLine]:
    """Stream every entry of the journals posted in [start, end), by posting time, journal and entry.

    One server-side cursor (``yield_per``): rows reach the caller as they come, memory stays flat.
    An account the chart does not map raises ``UnmappedAccounts`` unless ``keep_unmapped`` (then its
    payrecon code is the account code, and its name is empty).
    """
    stmt = (
        select(
            Journal.id, Journal.created_at, Journal.kind, Journal.memo, Journal.reverses_id, Account.code,
            Entry.side, Entry.amount, Entry.currency, Payment.reference, PayoutPosting.payout_id,
        )
        .join(Entry, Entry.journal_id == Journal.id)
        .join(Account, Account.id == Entry.account_id)
        .outerjoin(Payment, Payment.id == Journal.payment_id)
        .outerjoin(PayoutPosting, PayoutPosting.journal_id == Journal.id)
        .where(Journal.created_at >= start, Journal.created_at < end)
        .order_by(Journal.created_at, Journal.id, Entry.id)
        .execution_options(yield_per=STREAM_BATCH)
    )  # fmt: skip
    result = session.execute(stmt)
    try:
        for jid, created_at, kind, memo, reverses_id, code, side, amount, currency, reference, payout_id in result:
            mapped = chart.lookup(code, currency)
            if mapped is None:
                if not keep_unmapped:
                    raise UnmappedAccounts([(code, currency)])
                mapped = ChartAccount(code, "")
            yield JournalLine(
                day=created_at.astimezone(tz).date(),
                journal_id=jid,
                kind=kind,
                memo=memo or "",
                account_code=mapped.code,
                account_name=mapped.name,
                payrecon_account=code,
                debit=amount if side == DEBIT else 0,
                credit=amount if side == CREDIT else 0,
                currency=currency,
                reference=reference or payout_id or "",
                reverses_journal_id=reverses_id,
            )
    finally:
        result.close()


class ExportError(ValueError):
    """The export cannot be written; nothing was (its temporary file is removed)."""


class UnbalancedExport(ExportError):
    """A journal read for the export does not balance (rows written around the ledger's guards)."""


class TooManyRows(ExportError):
    """More entries than one XLSX sheet holds."""


@dataclass(slots=True)
class Totals:
    """What an export wrote: entries, journals, debits and credits per currency (minor units)."""

    entries: int = 0
    journals: int = 0
    debit: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    credit: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def checked(lines: Iterator[JournalLine], totals: Totals) -> Generator[JournalLine]:
    """Pass the lines through, counting them, and refuse a journal whose debits and credits differ
    in a currency (checked when its last line has passed: a journal's lines come together)."""
    current: int | None = None
    open_sums: dict[str, int] = defaultdict(int)

    def close() -> None:
        bad = {cur: diff for cur, diff in open_sums.items() if diff}
        if bad:
            raise UnbalancedExport(
                f"journal {current} does not balance: debit - credit = {bad}; run payrecon ledger check"
            )
        open_sums.clear()

    for line in lines:
        if line.journal_id != current:
            close()
            current = line.journal_id
            totals.journals += 1
        open_sums[line.currency] += line.debit - line.credit
        totals.entries += 1
        totals.debit[line.currency] += line.debit
        totals.credit[line.currency] += line.credit
        yield line
    close()


GENERAL_JOURNAL_COLUMNS: tuple[tuple[str, int], ...] = (
    ("date", 12), ("journal_id", 11), ("kind", 18), ("memo", 40), ("account_code", 14), ("account_name", 32),
    ("payrecon_account", 28), ("debit", 16), ("credit", 16), ("debit_minor", 14), ("credit_minor", 14),
    ("currency", 9), ("reference", 24), ("reverses_journal_id", 12),
)  # fmt: skip


def write_csv(out: TextIO, lines: Iterator[JournalLine]) -> None:
    """UTF-8 CSV, CRLF, a header row; amounts as exact decimal strings, text made formula-safe."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([name for name, _ in GENERAL_JOURNAL_COLUMNS])
    for line in lines:
        writer.writerow(
            [
                line.day.isoformat(),
                line.journal_id,
                formula_safe(line.kind),
                formula_safe(line.memo),
                formula_safe(line.account_code),
                formula_safe(line.account_name),
                formula_safe(line.payrecon_account),
                line.debit_major,
                line.credit_major,
                line.debit,
                line.credit,
                line.currency,
                formula_safe(line.reference),
                "" if line.reverses_journal_id is None else line.reverses_journal_id,
            ]
        )


def _amount_format(currency: str) -> str:
    exp = exponent(currency)
    return "#,##0" if exp == 0 else "#,##0." + "0" * exp


def _journal_rows(ws: Any, lines: Iterator[JournalLine], cell: Any) -> int:
    """Append the general journal's rows; returns the sheet's rows, header included."""
    rows = 1
    for line in lines:
        rows += 1
        if rows > XLSX_MAX_ROWS:
            raise TooManyRows(
                f"more than {XLSX_MAX_ROWS - 1} entries, Excel's limit for one sheet: export a shorter period "
                "or use --format csv"
            )
        money = _amount_format(line.currency)
        ws.append(
            [
                cell(ws, line.day, "yyyy-mm-dd"),
                cell(ws, line.journal_id, "0"),
                cell(ws, line.kind, text=True),
                cell(ws, line.memo, text=True),
                cell(ws, line.account_code, text=True),
                cell(ws, line.account_name, text=True),
                cell(ws, line.payrecon_account, text=True),
                cell(ws, to_major(line.debit, line.currency), money),
                cell(ws, to_major(line.credit, line.currency), money),
                cell(ws, line.debit, "0"),
                cell(ws, line.credit, "0"),
                cell(ws, line.currency, text=True),
                cell(ws, line.reference, text=True),
                None if line.reverses_journal_id is None else cell(ws, line.reverses_journal_id, "0"),
            ]
        )
    return rows


def _discard(ws: Any) -> None:
    """Close a write-only sheet whose workbook will not be saved, and remove its temporary file."""
    with contextlib.suppress(Exception):
        ws.close()
    with contextlib.suppress(Exception):
        os.remove(ws._writer.out)  # openpyxl removes it only when it saves the workbook


def write_xlsx(path: Path, lines: Iterator[JournalLine], totals: Totals, about: dict[str, str]) -> None:
    """A write-only workbook (rows stream to disk): sheet "General journal" (dates as dates, amounts
    as numbers in major units with the currency's decimals, codes and references as text), then a
    "Totals" sheet per currency and what was exported."""
    from openpyxl import Workbook  # type: ignore[import-untyped]
    from openpyxl.cell import WriteOnlyCell  # type: ignore[import-untyped]
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE  # type: ignore[import-untyped]
    from openpyxl.styles import Font  # type: ignore[import-untyped]
    from openpyxl.utils import get_column_letter  # type: ignore[import-untyped]

    wb = Workbook(write_only=True)
    bold = Font(bold=True)

    def sheet(title: str, columns: Sequence[tuple[str, int]]) -> Any:
        """A sheet with its column widths, a frozen bold header row (set before any row: write-only)."""
        ws = wb.create_sheet(title)
        for index, (_, width) in enumerate(columns, start=1):
            ws.column_dimensions[get_column_letter(index)].width = width
        ws.freeze_panes = "A2"
        header = []
        for name, _ in columns:
            head = WriteOnlyCell(ws, value=name)
            head.font = bold
            header.append(head)
        ws.append(header)
        return ws

    def cell(ws: Any, value: Any, number_format: str | None = None, *, text: bool = False) -> Any:
        if text:
            value = ILLEGAL_CHARACTERS_RE.sub("", formula_safe(value))
        c = WriteOnlyCell(ws, value=value)
        if text:
            c.data_type = "s"
        if number_format is not None:
            c.number_format = number_format
        return c

    ws = sheet("General journal", GENERAL_JOURNAL_COLUMNS)
    try:
        rows = _journal_rows(ws, lines, cell)
    except BaseException:
        _discard(ws)
        raise
    ws.auto_filter.ref = f"A1:{get_column_letter(len(GENERAL_JOURNAL_COLUMNS))}{rows}"

    summary = sheet("Totals", (("currency", 10), ("debit", 18), ("credit", 18), ("debit_minor", 16),
                               ("credit_minor", 16)))  # fmt: skip
    for currency in sorted(totals.debit):
        money = _amount_format(currency)
        summary.append(
            [
                cell(summary, currency, text=True),
                cell(summary, to_major(totals.debit[currency], currency), money),
                cell(summary, to_major(totals.credit[currency], currency), money),
                cell(summary, totals.debit[currency], "0"),
                cell(summary, totals.credit[currency], "0"),
            ]
        )
    summary.append([])
    for key, value in [("entries", str(totals.entries)), ("journals", str(totals.journals)), *about.items()]:
        summary.append([cell(summary, key, text=True), cell(summary, value, text=True)])
    wb.save(path)


@dataclass(frozen=True, slots=True)
class Period:
    first: date
    last: date
    tz: ZoneInfo

    @property
    def start(self) -> datetime:
        return day_start(self.first, self.tz)

    @property
    def end(self) -> datetime:
        return day_end(self.last, self.tz)


def count_entries(session: Session, start: datetime, end: datetime) -> int:
    """How many entries the journals posted in [start, end) have (the general journal's rows)."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Entry)
            .join(Journal, Journal.id == Entry.journal_id)
            .where(Journal.created_at >= start, Journal.created_at < end)
        )
        or 0
    )


#: Entries between two reports to ``progress``.
PROGRESS_EVERY = 1_000


def _counted(lines: Iterator[JournalLine], total: int, progress: Progress) -> Generator[JournalLine]:
    done = 0
    progress("entries", 0, total)
    for line in lines:
        yield line
        done += 1
        if done % PROGRESS_EVERY == 0:
            progress("entries", done, max(total, done))
    progress("entries", done, max(total, done))


def export(
    session: Session,
    path: Path,
    fmt: str,
    period: Period,
    chart: Chart,
    *,
    keep_unmapped: bool = False,
    progress: Progress = silent,
) -> tuple[Totals, list[tuple[str, str]]]:
    """Write the general journal of ``period`` to ``path`` (``csv`` or ``xlsx``); returns what was
    written and the accounts kept unmapped. Refuses (``UnmappedAccounts``, nothing written) when an
    account with entries in the period is not in the chart, unless ``keep_unmapped``. ``progress``
    hears the ``entries`` stage, in entries written (counted first when someone listens)."""
    if fmt not in ("csv", "xlsx"):
        raise ValueError(f"format must be csv or xlsx, got {fmt!r}")
    missing = unmapped(session, chart, period.start, period.end)
    if missing and not keep_unmapped:
        raise UnmappedAccounts(missing)
    totals = Totals()
    journal = iter_journal(session, period.start, period.end, period.tz, chart, keep_unmapped=keep_unmapped)
    if progress is not silent:
        journal = _counted(journal, count_entries(session, period.start, period.end), progress)
    lines = checked(journal, totals)
    try:
        with replacing(path) as aside:  # written whole or not at all
            if fmt == "csv":
                with aside.open("w", encoding="utf-8", newline="") as out:
                    write_csv(out, lines)
            else:
                about = {
                    "from": period.first.isoformat(),
                    "to": period.last.isoformat(),
                    "timezone": period.tz.key,
                    "chart": str(chart.path) if chart.path else "(none)",
                    "unmapped kept": ", ".join(f"{code} ({cur})" for code, cur in missing) or "none",
                }
                write_xlsx(aside, lines, totals, about)
    finally:
        lines.close()  # the cursor, at once, when the export stopped early
    return totals, missing
