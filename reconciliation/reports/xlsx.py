"""The XLSX report (XlsxWriter in its constant-memory mode: each row goes to disk as it is written).

Sheets:

- **Summary**: totals per currency and class (header frozen, autofilter), then the payouts counted
  and totalled per currency and status (how many posted to the ledger), the run's metadata, the
  counts and any notes (e.g. a sheet left out for Excel's row limit).
- **Exceptions**: items not matched, most serious first (healed missing_in_ledger last).
- **Payouts**: every payout the day touches, not matched first: paid out against the net of the
  payments it settles, and its ledger posting (always written, header only when there is none).
- **All lines**: every item, exceptions first.

Amounts are numeric cells in major units (``Decimal``) with ``#,##0`` for zero-decimal currencies
(XOF) and ``#,##0.00`` for two-decimal ones (USD). Text from providers and merchants is written as
string cells (never formulas), with a leading ``'`` when it starts with ``= + - @`` tab or CR, and
without the control characters XML cannot hold.

Excel allows ``max_rows`` rows per sheet (1,048,576, header included). When All lines would
exceed it, or more than ``all_lines_max`` items (``reports.XLSX_ALL_LINES``, 100,000: a
million-row sheet takes minutes to write and is barely usable), the sheet is left out and
Summary says so; if Exceptions alone exceeds it, it is cut
with a last row saying how many were left out.

Why XlsxWriter and not openpyxl (which writes the day-at-a-glance workbook and the general journal):
its cells are written straight out as XML, where openpyxl's write-only sheets build a cell object per
value; the Exceptions sheet of a million-payment day (16,500 rows) took 2.9-4.0 s of CPU with openpyxl
and takes 1.4 s (BENCHMARKS.md). The item sheets' rows skip even XlsxWriter's per-cell calls: ``_Sheet.extend``
renders each row as the XML XlsxWriter would write (a test compares the sheets byte for byte), which took a
90,500-item run's reports from 6.6 to 2.9 s, most of it the All lines sheet.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import xlsxwriter  # type: ignore[import-untyped]
from xlsxwriter.utility import xl_col_to_name  # type: ignore[import-untyped]
from xlsxwriter.xmlwriter import XMLwriter  # type: ignore[import-untyped]

from reconciliation.reports.common import ItemRow, formula_safe, payout_totals, spreadsheet_amount, why
from reconciliation.reports.labels import Language

#: Item columns of the Exceptions and All lines sheets, with their widths.
ITEM_SHEET_COLUMNS: tuple[tuple[str, int], ...] = (
    ("class", 20), ("healed", 8), ("reference", 24), ("provider_txn_id", 24), ("internal_status", 12),
    ("provider_status", 12), ("currency", 9), ("internal_amount", 16), ("provider_amount", 16),
    ("difference", 14), ("fee", 12), ("expected_fee", 12), ("provider_currency", 9), ("detail", 60),
)  # fmt: skip
SUMMARY_COLUMNS: tuple[tuple[str, int], ...] = (
    ("currency", 10), ("class", 22), ("count", 10), ("healed", 8),
    ("internal_total", 18), ("provider_total", 18), ("fee_total", 16),
)  # fmt: skip
PAYOUT_SHEET_COLUMNS: tuple[tuple[str, int], ...] = (
    ("payout_id", 28), ("status", 12), ("currency", 9), ("payments", 10), ("payout_amount", 16),
    ("settled_net", 16), ("difference", 14), ("posted", 8), ("journal_id", 10), ("posted_run_id", 13),
)  # fmt: skip
#: The payout block of the Summary sheet, under the class totals (same column widths).
SUMMARY_PAYOUT_HEADER = ("currency", "payout status", "count", "posted", "paid out", "net of payments", "difference")
#: Excel's limit of characters in one cell.
CELL_MAX_CHARS = 32_767
#: The control characters XML 1.0 cannot hold (tab, LF and CR it can): removed from text cells.
ILLEGAL_CHARACTERS_RE = re.compile(r"[\000-\010]|[\013-\014]|[\016-\037]")

ItemSource = Callable[[int | None], Iterator[ItemRow]]


class _Sheet:
    """A worksheet written row after row (constant memory: a row cannot be gone back to)."""

    def __init__(self, book: _Book, title: str, columns: Sequence[tuple[str, int]]) -> None:
        self.book = book
        self.ws = book.wb.add_worksheet(title)
        for index, (_, width) in enumerate(columns):
            self.ws.set_column(index, index, width)
        self.ws.freeze_panes(1, 0)
        self.row = 0
        self.append([(name, "bold") for name, _ in columns])

    def append(self, cells: Sequence[Any]) -> None:
        """One row. Each cell is ``None`` (empty), a bool, an int, ``(text, "text" | "bold")`` or
        ``(number, number_format)``."""
        ws, row, formats = self.ws, self.row, self.book.formats
        for col, cell in enumerate(cells):
            if cell is None:
                continue
            if isinstance(cell, bool):
                ws.write_boolean(row, col, cell)
            elif isinstance(cell, int):
                ws.write_number(row, col, cell)
            elif cell[1] in ("text", "bold"):
                self._string(row, col, cell[0], formats[cell[1]])
            else:
                ws.write_number(row, col, cell[0], formats[cell[1]])
        self.row += 1

    def _string(self, row: int, col: int, value: str, fmt: Any) -> None:
        if value.startswith("<r>") and value.endswith("</r>"):
            # XlsxWriter takes such a string for its own rich-text XML and writes it unescaped (text from a
            # statement could then break the file or inject a formula): as two runs of one format, escaped.
            run = self.book.formats["plain"] if fmt is None else fmt
            self.ws.write_rich_string(row, col, run, value[:1], run, value[1:])
        else:
            self.ws.write_string(row, col, value, fmt)

    def extend(self, rows: Iterable[Sequence[Any]]) -> None:
        """Rows as ``append`` writes them, byte for byte the XML XlsxWriter would write (a test compares them), but
        each row rendered here at once: XlsxWriter's per-cell path (checks, a cell object, then an XML writer call per
        cell) costs about 5 µs a cell, and a 90,500-item run's All lines sheet (1.2 million cells) was most of its
        reports' 6.6 s (py-spy: ~85 %). A row with a cell only XlsxWriter writes right (an ``<r>`` string, a string
        near Excel's length limit) goes through ``append``."""
        ws, formats, letters = self.ws, self.book.formats, self.book.letters
        batch: list[str] = []
        size = first = last = low = high = 0  # the batch's characters, rows and columns

        def flush() -> None:
            nonlocal size
            if batch:
                ws._check_dimensions(first, low)
                ws._check_dimensions(last, high)
                ws.fh.write("".join(batch))
                ws.previous_row = last
                batch.clear()
                size = 0

        ws._write_single_row(self.row)  # the rows XlsxWriter holds (the header) go first, their formats numbered
        for cells in rows:
            xml = None if self.row >= ws.xls_rowmax else _row_xml(self.row, cells, formats, letters)
            if xml is None:  # XlsxWriter's own path (which drops a row past Excel's limit)
                flush()
                self.append(cells)
                ws._write_single_row(self.row)  # out at once, as the cell-by-cell path numbers its formats
                continue
            if xml:
                used = [col for col, cell in enumerate(cells) if cell is not None]
                if not batch:
                    first, low, high = self.row, used[0], used[-1]
                batch.append(xml)
                size += len(xml)
                last, low, high = self.row, min(low, used[0]), max(high, used[-1])
            self.row += 1
            if len(batch) >= _XML_BATCH or size >= _XML_BATCH_CHARS:
                flush()
        flush()

    def filter(self, columns: int) -> None:
        """An autofilter over the header and the rows written so far."""
        self.ws.autofilter(0, 0, max(self.row, 1) - 1, columns - 1)


class _Book:
    def __init__(self, path: Path, title: str) -> None:
        self.wb = xlsxwriter.Workbook(str(path), {"constant_memory": True})
        self.wb.set_properties({"title": title, "author": "payrecon"})
        self.formats = _Formats(self.wb)
        self.letters = [xl_col_to_name(col) for col in range(64)]  # the sheets' widest is 14 columns

    def sheet(self, title: str, columns: Sequence[tuple[str, int]]) -> _Sheet:
        return _Sheet(self, title, columns)


class _Formats(dict[str, Any]):
    """The workbook's cell formats by name (``bold``) or number format (``#,##0``), made once each."""

    def __init__(self, wb: Any) -> None:
        super().__init__()
        self.wb = wb
        self["text"] = None  # the default
        self["plain"] = wb.add_format({})
        self["bold"] = wb.add_format({"bold": True})

    def __missing__(self, number_format: str) -> Any:
        made = self[number_format] = self.wb.add_format({"num_format": number_format})
        return made


#: Rows ``_Sheet.extend`` renders before writing them out together, and how many characters at most.
_XML_BATCH = 1_000
_XML_BATCH_CHARS = 4_000_000
#: What XlsxWriter's ``_escape_control_characters`` changes (a control character, an ``_xHHHH_`` look-alike, a
#: non-character), and what its ``_escape_data`` changes: a string with neither is written as it is.
_CONTROL = re.compile("_x[0-9a-fA-F]{4}_|[\x00-\x08\x0b-\x1f\ufffe\uffff]")
_XML_SPECIAL = re.compile("[&<>]")


def _row_xml(row: int, cells: Sequence[Any], formats: _Formats, letters: list[str]) -> str | None:
    """The ``<row>`` XlsxWriter writes for ``cells`` (``_Sheet.append``'s) at ``row`` in constant-memory mode (inline
    strings, no spans); "" when every cell is empty (XlsxWriter writes no row), None when a cell needs its own path."""
    r = row + 1
    out = [f'<row r="{r}">']
    for col, cell in enumerate(cells):
        if cell is None:
            continue
        ref = f"{letters[col]}{r}"
        if isinstance(cell, bool):
            out.append(f'<c r="{ref}" t="b"><v>{int(cell)}</v></c>')
        elif isinstance(cell, int):
            out.append(f'<c r="{ref}"><v>{cell:.16G}</v></c>')
        elif cell[1] in ("text", "bold"):
            value = cell[0]
            if len(value) > CELL_MAX_CHARS // 2 or (value.startswith("<r>") and value.endswith("</r>")):
                return None  # Excel's limit is in UTF-16 units; a rich-string look-alike: see _Sheet._string
            fmt = formats[cell[1]]
            style = "" if fmt is None else f' s="{fmt._get_xf_index()}"'
            if _CONTROL.search(value):
                value = XMLwriter._escape_control_characters(value)
            # XlsxWriter's _preserve_whitespace: ``^\s`` or ``\s$`` (also before a last "\n", itself a space)
            space = ' xml:space="preserve"' if value[:1].isspace() or value[-1:].isspace() else ""
            if _XML_SPECIAL.search(value):
                value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            out.append(f'<c r="{ref}"{style} t="inlineStr"><is><t{space}>{value}</t></is></c>')
        else:
            out.append(f'<c r="{ref}" s="{formats[cell[1]]._get_xf_index()}"><v>{cell[0]:.16G}</v></c>')
    if len(out) == 1:
        return ""
    out.append("</row>")
    return "".join(out)


def _text(value: str | None, style: str = "text") -> tuple[str, str] | None:
    """A string cell: escaped against formulas, XML-illegal characters removed (never a formula or a
    number); an empty string is an empty cell, as ``None`` is."""
    clean = ILLEGAL_CHARACTERS_RE.sub("", formula_safe(value))[:CELL_MAX_CHARS] if value else ""
    return (clean, style) if clean else None


def _bold(value: str) -> tuple[str, str] | None:
    return _text(value, "bold")


def _money(minor: int | None, currency: str | None) -> tuple[Any, str] | None:
    if minor is None:
        return None
    return spreadsheet_amount(minor, currency)


def _int(value: int) -> tuple[int, str]:
    return value, "#,##0"


def _item_cells(item: ItemRow, language: Language = "en") -> list[Any]:
    return [
        _text(item.cls),
        item.healed,
        _text(item.reference),
        _text(item.provider_txn_id),
        _text(item.internal_status),
        _text(item.provider_status),
        _text(item.currency),
        _money(item.internal_amount, item.internal_currency),
        _money(item.provider_amount, item.provider_currency),
        _money(item.difference, item.currency),
        _money(item.fee, item.fee_currency),
        _money(item.expected_fee, item.fee_currency),
        _text(item.provider_currency),
        _text(why(item, language)),
    ]


def _write_items(ws: _Sheet, items: Iterable[ItemRow], language: Language = "en") -> None:
    ws.extend(_item_cells(item, language) for item in items)


def _write_payouts(ws: _Sheet, payouts: Iterable[dict[str, Any]]) -> None:
    for p in payouts:
        currency = p["currency"]
        ws.append(
            [
                _text(p["payout_id"]),
                _text(p["status"]),
                _text(currency),
                _int(p["payments"]),
                _money(p["payout_amount"], currency),
                _money(p["settled_net"], currency),
                _money(p["difference"], currency),
                p["posted"],
                p["journal_id"],
                p["posted_run_id"],
            ]
        )


def write_xlsx(
    path: Path,
    summ: dict[str, Any],
    exceptions: ItemSource,
    all_items: ItemSource,
    *,
    max_rows: int,
    all_lines_max: int | None = None,
    language: Language = "en",
) -> None:
    """Write the workbook to ``path``. ``summ`` is ``reports.summary()``; ``exceptions`` and
    ``all_items`` stream items, at most the number given (``None``: all). ``all_lines_max``: above
    this many items the All lines sheet is left out (with a note), though Excel could hold it.
    ``language``: of the Detail column's words (the columns keep code names, for filters and programs)."""
    counts = summ["counts"]
    data_rows = max_rows - 1  # the header takes one
    notes: list[str] = []
    write_all = counts["items"] <= data_rows
    if not write_all:
        notes.append(
            f"Sheet 'All lines' left out: {counts['items']:,} items exceed Excel's {max_rows:,} rows per sheet. "
            "Every item is in the CSV and JSON reports."
        )
    elif all_lines_max is not None and counts["items"] > all_lines_max:
        write_all = False
        notes.append(
            f"Sheet 'All lines' left out: {counts['items']:,} items, more than the {all_lines_max:,} a workbook "
            "stays quick to write and to open with. Every item is in the CSV and JSON reports."
        )
    exception_limit: int | None = None
    if counts["exceptions"] > data_rows:
        exception_limit = data_rows - 1  # and a last row saying so
        notes.append(
            f"Sheet 'Exceptions' truncated: first {exception_limit:,} of {counts['exceptions']:,} exceptions. "
            "Every item is in the CSV and JSON reports."
        )

    book = _Book(path, f"Reconciliation run {summ['run']['id']}")
    try:
        _write_summary(book, summ, notes)

        ws = book.sheet("Exceptions", ITEM_SHEET_COLUMNS)
        _write_items(ws, exceptions(exception_limit), language)
        if exception_limit is not None:
            left_out = counts["exceptions"] - exception_limit
            ws.append([_text(f"… {left_out:,} more exceptions not shown (Excel row limit): see the CSV report")])
        ws.filter(len(ITEM_SHEET_COLUMNS))

        ws = book.sheet("Payouts", PAYOUT_SHEET_COLUMNS)
        _write_payouts(ws, summ["payouts"])
        ws.filter(len(PAYOUT_SHEET_COLUMNS))

        if write_all:
            ws = book.sheet("All lines", ITEM_SHEET_COLUMNS)
            # The limit guards the sheet should items be added after the summary was read.
            _write_items(ws, all_items(data_rows), language)
            ws.filter(len(ITEM_SHEET_COLUMNS))
    except BaseException:
        with contextlib.suppress(Exception):  # its temporary files go; the caller drops the partial file
            book.wb.close()
        raise
    book.wb.close()


def _total_row(total: dict[str, Any], keys: tuple[str, str, str], amounts: tuple[str, ...]) -> list[Any]:
    """A Summary row: currency, a label, two counts, then ``<amount>_total_minor`` money cells."""
    label, first, second = keys
    currency = total["currency"]
    return [
        _text(currency),
        _text(total[label]),
        _int(total[first]),
        _int(total[second]),
        *(_money(total[f"{name}_total_minor"], currency) for name in amounts),
    ]


def _write_summary(book: _Book, summ: dict[str, Any], notes: list[str]) -> None:
    ws = book.sheet("Summary", SUMMARY_COLUMNS)
    for total in summ["totals"]:
        ws.append(_total_row(total, ("class", "count", "healed"), ("internal", "provider", "fee")))
    ws.filter(len(SUMMARY_COLUMNS))
    ws.append([])
    ws.append([_bold(name) for name in SUMMARY_PAYOUT_HEADER])
    for total in payout_totals(summ["payouts"]):
        ws.append(_total_row(total, ("status", "count", "posted"), ("payout", "settled_net", "difference")))
    if not summ["payouts"]:
        ws.append([_text("no payout reported for this day")])
    ws.append([])
    for note in notes:
        ws.append([_bold(f"Note: {note}")])
    if notes:
        ws.append([])
    counts = summ["counts"]
    for key in ("items", "exceptions", "healed"):
        ws.append([_text(key), None, _int(counts[key])])
    ws.append([])
    for key, value in summ["run"].items():
        ws.append([_text(key), value if isinstance(value, int) else _text(value)])
