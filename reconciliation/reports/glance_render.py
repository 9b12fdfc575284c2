"""The day at a glance as files people open: a self-contained HTML page and an XLSX workbook, in English or
French, from ``glance.day_glance``'s data. No database access here.

Charts: **pygal** draws them as SVG, inlined in the page (no script, no external asset: the page opens
without a network, and prints). It is small, pure Python, maintained, and writes SVG directly, where
matplotlib (tens of megabytes, a native build) would rasterise or need its SVG backend and a font cache
for four simple charts. The workbook's charts are the spreadsheet's own (openpyxl's bar and line charts
over the data sheet), so they stay live when finance filters or edits the numbers.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pygal
from pygal.style import Style

from reconciliation.aside import replacing
from reconciliation.reports.common import display_amount, formula_safe, spreadsheet_amount
from reconciliation.reports.labels import (
    ACTIONS,
    CASE_STATUSES,
    CLASSES,
    PAYOUT_STATUSES,
    PRIORITIES,
    PROVIDERS,
    WORDS,
    Language,
    label,
    plural,
)
from reconciliation.reports.render import escaped, html_table

# pygal appends a legacy import hook to sys.meta_path for its map plugins (``pygal.maps.*``, unused here). It
# has no ``find_spec``, so every failed import after pygal's (optional dependencies probing) warns on Python
# 3.11 and the hook does nothing on 3.12: it goes.
sys.meta_path[:] = [finder for finder in sys.meta_path if type(finder).__name__ != "PluginImportFixer"]


def w(key: str, language: Language) -> str:
    return WORDS[key][language]


def _money(amounts: dict[str, int]) -> str:
    return ", ".join(display_amount(v, c) for c, v in sorted(amounts.items())) or "—"


def _percent(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f} %"


def _payout_text(payouts: Sequence[dict[str, Any]], language: Language) -> str:
    if not payouts:
        return "—"
    by_status: dict[str, int] = {}
    for p in payouts:
        by_status[p["status"]] = by_status.get(p["status"], 0) + 1
    return ", ".join(f"{n} {label(PAYOUT_STATUSES, s, language)}" for s, n in sorted(by_status.items()))


# --------------------------------------------------------------------------- charts (pygal, SVG)

_STYLE = Style(
    background="white",
    plot_background="white",
    font_family="system-ui, sans-serif",
    colors=("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"),
)


def _chart(kind: Any, title: str, **config: Any) -> Any:
    # js=[]: no script at all (pygal links its tooltip script from the network by default).
    return kind(
        title=title, style=_STYLE, js=[], disable_xml_declaration=True, width=760, height=340,
        legend_at_bottom=True, truncate_legend=-1, **config,
    )  # fmt: skip


def charts_svg(data: dict[str, Any], language: Language) -> dict[str, str]:
    """The four charts as inline SVG documents, by name."""
    charts = data["charts"]
    days = [d[5:] for d in charts["days"]]  # MM-DD
    rate = _chart(pygal.Line, w("chart_rate", language), range=(0, 100), x_label_rotation=45, show_minor_x_labels=False)
    rate.x_labels = days
    rate.x_labels_major = days[::5]
    for provider, series in charts["success_rate"].items():
        rate.add(label(PROVIDERS, provider, language), [None if v is None else round(v * 100, 1) for v in series])
    classes = _chart(pygal.HorizontalBar, w("chart_classes", language), print_values=True)
    for row in charts["exceptions_by_class"]:
        classes.add(label(CLASSES, row["class"], language), [row["count"]])
    age = _chart(pygal.StackedBar, w("chart_age", language), print_values=True)
    age.x_labels = list(charts["open_by_age"])
    for level in ("high", "medium", "low"):
        age.add(label(PRIORITIES, level, language), [charts["open_by_age"][b].get(level, 0) for b in age.x_labels])
    main = _main_currency(charts["settled"])
    title = w("chart_settled", language) + (f" ({main})" if main else "")
    settled = _chart(pygal.Bar, title, x_label_rotation=45, show_minor_x_labels=False)
    settled.x_labels = days
    settled.x_labels_major = days[::5]
    if main is not None:
        for side in ("ours", "theirs"):  # major units, as the workbook shows them
            settled.add(
                w(side, language), [float(spreadsheet_amount(v, main)[0]) for v in charts["settled"][main][side]]
            )
    drawn = {"success_rate": rate, "exceptions_by_class": classes, "open_by_age": age, "settled": settled}
    return {name: _inline(c.render(is_unicode=True)) for name, c in drawn.items()}


def _inline(svg: str) -> str:
    """The SVG without pygal's configuration script (for its tooltip script, which is not loaded) and
    comments: the page runs no script."""
    return _COMMENT.sub("", _SCRIPT.sub("", svg))


_SCRIPT = re.compile(r"<script\b.*?</script>", re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


def _main_currency(settled: dict[str, dict[str, list[int]]]) -> str | None:
    """The currency with the most money over the period (the settled chart draws one currency)."""
    if not settled:
        return None
    return max(settled, key=lambda c: (sum(settled[c]["ours"]) + sum(settled[c]["theirs"]), c))


# --------------------------------------------------------------------------- HTML

PROVIDER_COLUMNS = ("provider", "payments", "paid", "success_rate", "matched", "exceptions", "fees", "payouts")
CASE_COLUMNS = (
    "case", "age", "priority", "provider", "day", "class", "at_stake", "status", "assignee", "reference", "todo",
)  # fmt: skip
LEVELS = ("high", "medium", "low")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;padding:12px;color:#1a1a1a;
background:#fff;line-height:1.4}h1{font-size:1.3em;margin:0 0 .4em}h2{font-size:1.1em;margin:1.4em 0 .4em}
.scroll{overflow-x:auto;max-width:100%}table{border-collapse:collapse;font-size:.9em;min-width:100%}
th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}th{background:#f3f3f3}
tr.high td{background:#fdecea}tr.overdue td:first-child{border-left:4px solid #8a1c12}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:12px}
.charts svg{width:100%;height:auto}.more{color:#555}
@media (max-width:600px){body{padding:6px}table{font-size:.8em}th,td{padding:3px 5px}}
"""


def provider_rows(data: dict[str, Any], language: Language) -> list[list[str]]:
    rows = []
    for provider, p in data["providers"].items():
        run = p["run"]
        exceptions = sum(e["count"] for e in p["exceptions"])
        if run is None:
            matched, exc = w("not_reconciled", language), "—"
        else:
            matched = _percent(p["matched_share"]) + (
                "" if run["status"] == "succeeded" else f" ({w('run_failed', language)})"
            )
            exc = str(exceptions)
        rows.append([
            label(PROVIDERS, provider, language), str(p["payments"]), _money(p["paid"]), _percent(p["success_rate"]),
            matched, exc, _money(p["fees"]), _payout_text(p["payouts"], language),
        ])  # fmt: skip
    return rows


def case_rows(data: dict[str, Any], language: Language) -> list[list[str]]:
    return [
        [
            f"#{c['id']}", str(c["age_days"]), label(PRIORITIES, c["priority"], language),
            label(PROVIDERS, c["provider"], language), c["business_date"], label(CLASSES, c["class"], language),
            display_amount(c["amount"], c["currency"]),
            label(CASE_STATUSES, c["status"], language) + (f" ({w('overdue', language)})" if c["overdue"] else ""),
            c["assignee"] or "—", c["reference"], label(ACTIONS, c["class"], language),
        ]
        for c in data["open_cases"]
    ]  # fmt: skip


def render_html(data: dict[str, Any], language: Language = "en") -> str:
    svgs = charts_svg(data, language)
    title = f"{w('title', language)} — {data['business_date']}"
    cases = data["open_cases"]
    class_rows = [
        [label(CLASSES, r["class"], language), str(r["count"]), str(r["open"]), _money(r["at_stake"])]
        for r in data["charts"]["exceptions_by_class"]
    ]
    parts = [
        f'<!DOCTYPE html>\n<html lang="{language}"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escaped(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escaped(title)}</h1>",
        f'<p class="more">{escaped(w("business_day", language))} {escaped(data["business_date"])} '
        f'({escaped(data["timezone"])}) · '
        f"{escaped(plural(len(cases), w('case_one', language), w('case_many', language), language))}</p>",
        f"<h2>{escaped(w('providers', language))}</h2>",
        html_table(
            [w(k, language) for k in PROVIDER_COLUMNS],
            provider_rows(data, language), frozenset({1, 2, 3, 4, 5, 6}),
        ),
        f"<h2>{escaped(w('by_class', language))}</h2>",
        html_table([w(k, language) for k in ("class", "count", "open", "at_stake")], class_rows, frozenset({1, 2, 3}))
        if class_rows else '<p class="more">—</p>',
        f"<h2>{escaped(w('charts', language))}</h2>",
        '<div class="charts">' + "".join(f"<figure>{svg}</figure>" for svg in svgs.values()) + "</div>",
        f"<h2>{escaped(w('open_cases', language))}</h2>",
    ]  # fmt: skip
    if cases:
        headers = [w(k, language) for k in CASE_COLUMNS]
        flags = ["high overdue" if c["priority"] == "high" and c["overdue"] else "high" if c["priority"] == "high"
                 else "overdue" if c["overdue"] else "" for c in cases]  # fmt: skip
        parts.append(html_table(headers, case_rows(data, language), frozenset({1, 6}), classes=flags))
    else:
        parts.append(f"<p>{escaped(w('none_open', language))}</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------- XLSX

PROVIDER_COLUMNS = ("provider", "payments", "paid", "success_rate", "matched", "exceptions", "fees", "payouts")
CASE_COLUMNS = (
    "case",
    "age",
    "priority",
    "provider",
    "day",
    "class",
    "at_stake",
    "status",
    "assignee",
    "reference",
    "todo",
)
LEVELS = ("high", "medium", "low")


def write_xlsx(data: dict[str, Any], path: Path, language: Language = "en") -> None:
    """Sheets: the day per provider, the charts (the spreadsheet's own), the open exceptions, the charts' data."""
    from openpyxl import Workbook  # type: ignore[import-untyped]

    wb = Workbook()
    _day_sheet(wb.active, data, language)
    charts = wb.create_sheet(w("charts", language)[:31])
    _cases_sheet(wb.create_sheet(w("open", language)[:31]), data, language)
    _charts(charts, wb.create_sheet(w("data", language)[:31]), data["charts"], language)
    wb.save(path)


def _day_sheet(ws: Any, data: dict[str, Any], language: Language) -> None:
    from openpyxl.styles import Font  # type: ignore[import-untyped]

    ws.title = w("providers", language)[:31]
    ws.append([f"{w('title', language)} — {data['business_date']} ({data['timezone']})"])
    ws.append([w(k, language) for k in PROVIDER_COLUMNS])
    for row in provider_rows(data, language):
        ws.append([formula_safe(v) for v in row])
    ws.append([])
    ws.append([w(k, language) for k in ("class", "count", "open", "at_stake")])
    for r in data["charts"]["exceptions_by_class"]:
        ws.append([label(CLASSES, r["class"], language), r["count"], r["open"], _money(r["at_stake"])])
    for cell in (ws["A1"], *ws[2]):
        cell.font = Font(bold=True)


def _cases_sheet(ws: Any, data: dict[str, Any], language: Language) -> None:
    from openpyxl.styles import Font

    ws.append([w(k, language) for k in CASE_COLUMNS])
    for c, row in zip(data["open_cases"], case_rows(data, language), strict=True):
        values: list[Any] = [formula_safe(v) for v in row]
        values[0], values[1] = c["id"], c["age_days"]
        number_format = None
        if c["amount"] is not None:
            values[6], number_format = spreadsheet_amount(c["amount"], c["currency"])
        ws.append(values)
        if number_format is not None:
            ws.cell(ws.max_row, 7).number_format = number_format
    for cell in ws[1]:
        cell.font = Font(bold=True)
    ws.freeze_panes = "A2"


def _column(ws: Any, col: int, header: str, values: Sequence[Any], number_format: str | None = None) -> None:
    ws.cell(1, col, header)
    for n, value in enumerate(values):
        cell = ws.cell(n + 2, col, value)
        if number_format is not None:
            cell.number_format = number_format


def _charts(ws: Any, data_ws: Any, charts: dict[str, Any], language: Language) -> None:
    """The charts' data side by side on ``data_ws`` (one block each), and the charts over it on ``ws``."""
    from openpyxl.chart import BarChart, LineChart, Reference  # type: ignore[import-untyped]

    def chart(kind: Any, title: str, block: tuple[int, int, int], anchor: str, **options: Any) -> None:
        first, series, rows = block
        made = kind()
        made.title, made.height, made.width = title, 8, 18
        for name, value in options.items():
            setattr(made, name, value)
        data_ref = Reference(data_ws, min_col=first + 1, max_col=first + series, min_row=1, max_row=rows + 1)
        made.add_data(data_ref, titles_from_data=True)
        made.set_categories(Reference(data_ws, min_col=first, min_row=2, max_row=rows + 1))
        ws.add_chart(made, anchor)

    days, col = charts["days"], 1
    providers = list(charts["success_rate"])
    _column(data_ws, col, w("day", language), days)
    for k, p in enumerate(providers):
        rates = [None if v is None else round(v * 100, 1) for v in charts["success_rate"][p]]
        _column(data_ws, col + 1 + k, label(PROVIDERS, p, language), rates)
    if providers:
        chart(LineChart, w("chart_rate", language), (col, len(providers), len(days)), "A1")
    col += len(providers) + 2
    main = _main_currency(charts["settled"])
    if main is not None:
        fmt = spreadsheet_amount(0, main)[1]
        _column(data_ws, col, w("day", language), days)
        for k, side in enumerate(("ours", "theirs")):
            amounts = [spreadsheet_amount(v, main)[0] for v in charts["settled"][main][side]]
            _column(data_ws, col + 1 + k, f"{w(side, language)} ({main})", amounts, fmt)
        chart(BarChart, f"{w('chart_settled', language)} ({main})", (col, 2, len(days)), "A18")
        col += 4
    by_class = charts["exceptions_by_class"]
    _column(data_ws, col, w("class", language), [label(CLASSES, r["class"], language) for r in by_class])
    _column(data_ws, col + 1, w("count", language), [r["count"] for r in by_class])
    if by_class:
        chart(BarChart, w("chart_classes", language), (col, 1, len(by_class)), "L1", type="bar")
    col += 3
    buckets = list(charts["open_by_age"])
    _column(data_ws, col, w("age", language), buckets)
    for k, level in enumerate(LEVELS):
        counts = [charts["open_by_age"][b].get(level, 0) for b in buckets]
        _column(data_ws, col + 1 + k, label(PRIORITIES, level, language), counts)
    chart(BarChart, w("chart_age", language), (col, len(LEVELS), len(buckets)), "L18", grouping="stacked", overlap=100)


# --------------------------------------------------------------------------- files

FORMATS = ("html", "xlsx")


def write_files(data: dict[str, Any], out_dir: Path, fmt: str = "all", language: Language = "en") -> list[Path]:
    """``day_<date>.html`` and/or ``day_<date>.xlsx`` in ``out_dir``, each replaced whole (written aside under a
    name of its own, then renamed over the old one: a reader never sees half a file, two writers never share
    one). The nightly job writes it under a lock (``worker.nightly.write_reports``), newest data last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in FORMATS if fmt == "all" else (fmt,):
        path = out_dir / f"day_{data['business_date']}.{kind}"
        with replacing(path) as aside:  # a name of this writer's own: two providers' runs of the day may write at once
            if kind == "html":
                aside.write_text(render_html(data, language), encoding="utf-8")
            else:
                write_xlsx(data, aside, language)
        written.append(path)
    return written
