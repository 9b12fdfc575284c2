"""The XLSX report (openpyxl, write-only workbook: rows stream to disk).

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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from openpyxl import Workbook  # type: ignore[import-untyped]
from openpyxl.cell import WriteOnlyCell  # type: ignore[import-untyped]
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE  # type: ignore[import-untyped]
from openpyxl.styles import Font  # type: ignore[import-untyped]
from openpyxl.utils import get_column_letter  # type: ignore[import-untyped]

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
_BOLD = Font(bold=True)

ItemSource = Callable[[int | None], Iterator[ItemRow]]


def _text(ws: Any, value: str | None) -> Any:
    """A string cell: escaped against formulas, XML-illegal characters removed, forced to type ``s``."""
    if value is None:
        return None
    cell = WriteOnlyCell(ws, value=ILLEGAL_CHARACTERS_RE.sub("", formula_safe(value))[:CELL_MAX_CHARS])
    cell.data_type = "s"
    return cell


def _money(ws: Any, minor: int | None, currency: str | None) -> Any:
    if minor is None:
        return None
    value, number_format = spreadsheet_amount(minor, currency)
    cell = WriteOnlyCell(ws, value=value)
    cell.number_format = number_format
    return cell


def _int(ws: Any, value: int) -> Any:
    cell = WriteOnlyCell(ws, value=value)
    cell.number_format = "#,##0"
    return cell


def header_sheet(wb: Any, title: str, columns: Sequence[tuple[str, int]]) -> Any:
    """A sheet with its column widths, a frozen bold header row (set before any row: write-only)."""
    ws = wb.create_sheet(title)
    for index, (_, width) in enumerate(columns, start=1):
        ws.column_dimensions[get_column_letter(index)].width = width
    ws.freeze_panes = "A2"
    header = []
    for name, _ in columns:
        cell = WriteOnlyCell(ws, value=name)
        cell.font = _BOLD
        header.append(cell)
    ws.append(header)
    return ws


def _filter(ws: Any, columns: int, rows: int) -> None:
    ws.auto_filter.ref = f"A1:{get_column_letter(columns)}{max(rows, 1)}"


def _item_cells(ws: Any, item: ItemRow, language: Language = "en") -> list[Any]:
    return [
        _text(ws, item.cls),
        item.healed,
        _text(ws, item.reference),
        _text(ws, item.provider_txn_id),
        _text(ws, item.internal_status),
        _text(ws, item.provider_status),
        _text(ws, item.currency),
        _money(ws, item.internal_amount, item.internal_currency),
        _money(ws, item.provider_amount, item.provider_currency),
        _money(ws, item.difference, item.currency),
        _money(ws, item.fee, item.fee_currency),
        _money(ws, item.expected_fee, item.fee_currency),
        _text(ws, item.provider_currency),
        _text(ws, why(item, language)),
    ]


def _write_items(ws: Any, items: Iterable[ItemRow], language: Language = "en") -> int:
    rows = 1
    for item in items:
        ws.append(_item_cells(ws, item, language))
        rows += 1
    return rows


def _write_payouts(ws: Any, payouts: Iterable[dict[str, Any]]) -> int:
    rows = 1
    for p in payouts:
        currency = p["currency"]
        ws.append(
            [
                _text(ws, p["payout_id"]),
                _text(ws, p["status"]),
                _text(ws, currency),
                _int(ws, p["payments"]),
                _money(ws, p["payout_amount"], currency),
                _money(ws, p["settled_net"], currency),
                _money(ws, p["difference"], currency),
                p["posted"],
                p["journal_id"],
                p["posted_run_id"],
            ]
        )
        rows += 1
    return rows


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

    wb = Workbook(write_only=True)
    wb.properties.creator = "payrecon"
    wb.properties.title = f"Reconciliation run {summ['run']['id']}"
    _write_summary(wb, summ, notes)

    ws = header_sheet(wb, "Exceptions", ITEM_SHEET_COLUMNS)
    rows = _write_items(ws, exceptions(exception_limit), language)
    if exception_limit is not None:
        left_out = counts["exceptions"] - exception_limit
        ws.append([_text(ws, f"… {left_out:,} more exceptions not shown (Excel row limit): see the CSV report")])
        rows += 1
    _filter(ws, len(ITEM_SHEET_COLUMNS), rows)

    ws = header_sheet(wb, "Payouts", PAYOUT_SHEET_COLUMNS)
    rows = _write_payouts(ws, summ["payouts"])
    _filter(ws, len(PAYOUT_SHEET_COLUMNS), rows)

    if write_all:
        ws = header_sheet(wb, "All lines", ITEM_SHEET_COLUMNS)
        # The limit guards the sheet should items be added after the summary was read.
        rows = _write_items(ws, all_items(data_rows), language)
        _filter(ws, len(ITEM_SHEET_COLUMNS), rows)
    wb.save(path)


def _total_row(ws: Any, total: dict[str, Any], keys: tuple[str, str, str], amounts: tuple[str, ...]) -> list[Any]:
    """A Summary row: currency, a label, two counts, then ``<amount>_total_minor`` money cells."""
    label, first, second = keys
    currency = total["currency"]
    return [
        _text(ws, currency),
        _text(ws, total[label]),
        _int(ws, total[first]),
        _int(ws, total[second]),
        *(_money(ws, total[f"{name}_total_minor"], currency) for name in amounts),
    ]


def _write_summary(wb: Any, summ: dict[str, Any], notes: list[str]) -> None:
    ws = header_sheet(wb, "Summary", SUMMARY_COLUMNS)
    totals = summ["totals"]
    for total in totals:
        ws.append(_total_row(ws, total, ("class", "count", "healed"), ("internal", "provider", "fee")))
    _filter(ws, len(SUMMARY_COLUMNS), len(totals) + 1)
    ws.append([])
    header = []
    for name in SUMMARY_PAYOUT_HEADER:
        cell = _text(ws, name)
        cell.font = _BOLD
        header.append(cell)
    ws.append(header)
    for total in payout_totals(summ["payouts"]):
        ws.append(_total_row(ws, total, ("status", "count", "posted"), ("payout", "settled_net", "difference")))
    if not summ["payouts"]:
        ws.append([_text(ws, "no payout reported for this day")])
    ws.append([])
    for note in notes:
        cell = _text(ws, f"Note: {note}")
        cell.font = _BOLD
        ws.append([cell])
    if notes:
        ws.append([])
    counts = summ["counts"]
    for key in ("items", "exceptions", "healed"):
        ws.append([_text(ws, key), None, _int(ws, counts[key])])
    ws.append([])
    for key, value in summ["run"].items():
        ws.append([_text(ws, key), value if isinstance(value, int) else _text(ws, value)])
