"""The HTML page and the terminal text of a reconciliation run, rendered from data already read
(``reports.summary``, ``reports.changes``, the first exceptions). No database access here.

The HTML page is self-contained: inline CSS, no script, no external asset or link; a viewport
meta tag and scrolling table wrappers make it readable on a phone. Every value goes through
``html.escape``. The terminal text replaces control characters so that provider text cannot
send escape sequences to the terminal.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from reconciliation.reports.common import PAYOUT_MATCHED, ItemRow, display_amount, local_time, printable, why
from reconciliation.reports.labels import CLASSES, PAYOUT_STATUSES, PROVIDERS, RUN_WORDS, Language, label, plural

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;padding:12px;color:#1a1a1a;
background:#fff;line-height:1.4}
h1{font-size:1.3em;margin:0 0 .4em}h2{font-size:1.1em;margin:1.4em 0 .4em}
.banner{padding:8px 12px;border-radius:6px;margin:.6em 0;font-weight:600}
.ok{background:#e6f4ea;color:#1e6b34}.bad{background:#fdecea;color:#8a1c12}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;max-width:100%}
table{border-collapse:collapse;font-size:.9em;min-width:100%}
th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.wrap{white-space:normal;min-width:12em}
th{background:#f3f3f3}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0}dt{color:#555}dd{margin:0}
.more{color:#555;font-style:italic}
tr.bad td{background:#fdecea}
@media (max-width:600px){body{padding:6px}table{font-size:.8em}th,td{padding:3px 5px}}
"""


def escaped(value: Any) -> str:
    return "" if value is None else html.escape(str(value), quote=True)


def html_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    numeric: frozenset[int] = frozenset(),
    flagged: Sequence[bool] = (),
    *,
    detail: int | None = None,
    classes: Sequence[str] = (),
) -> str:
    """An escaped table in a horizontally scrolling wrapper; ``numeric`` columns align right, the
    ``detail`` column wraps, rows whose ``flagged`` entry is true are highlighted (``tr.bad``), or each row
    gets its entry of ``classes`` as its CSS class (the day at a glance: ``high``, ``overdue``)."""

    def cell(tag: str, index: int, value: Any) -> str:
        cls = ' class="num"' if index in numeric else ' class="wrap"' if index == detail else ""
        return f"<{tag}{cls}>{escaped(value)}</{tag}>"

    def tr(n: int) -> str:
        cls = classes[n] if n < len(classes) else "bad" if n < len(flagged) and flagged[n] else ""
        return f'<tr class="{cls}">' if cls else "<tr>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = "\n".join(
        tr(n) + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for n, row in enumerate(rows)
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>'


def _t(key: str, language: Language, **fields: Any) -> str:
    text = RUN_WORDS[key][language]
    return text.format(**fields) if fields else text


def _n(count: int, one: str, many: str, language: Language = "en") -> str:
    """``labels.plural`` of the page's words ``one`` and ``many``."""
    return plural(count, _t(one, language), _t(many, language), language)


def _totals_rows(summ: dict[str, Any], *, words: bool = True, language: Language = "en") -> list[list[Any]]:
    """Totals per currency and class; ``words``: labels for people (the HTML page), else code names (the
    terminal, whose columns programs and operators read)."""
    provider = label(PROVIDERS, summ["run"]["provider"], language) if words else summ["run"]["provider"]
    return [
        [
            provider,
            t["currency"] or "",
            # count 0: the provider's side of a currency mismatch, totalled in the provider's currency
            (label(CLASSES, t["class"], language) + (_t("their_currency", language) if t["count"] == 0 else ""))
            if words
            else t["class"],
            (t["count"] or "—") if words else t["count"],
            t["healed"],
            display_amount(t["internal_total_minor"], t["currency"]),
            display_amount(t["provider_total_minor"], t["currency"]),
            display_amount(t["fee_total_minor"], t["currency"]),
        ]
        for t in summ["totals"]
    ]


def _posting(payout: dict[str, Any], language: Language = "en") -> str:
    if not payout["posted"]:
        return _t("not_posted", language)
    return _t("posted", language, journal=payout["journal_id"], run=payout["posted_run_id"])


def _payouts_html(payouts: Sequence[dict[str, Any]], language: Language = "en") -> list[str]:
    """The payouts section: not matched first (``reports.payouts`` order), highlighted like exceptions."""
    unmatched = sum(1 for p in payouts if p["status"] != PAYOUT_MATCHED)
    parts = [f"<h2>{escaped(_t('payouts', language, n=f'{len(payouts):,}', unmatched=f'{unmatched:,}'))}</h2>"]
    if not payouts:
        return [*parts, f"<p>{escaped(_t('no_payouts', language))}</p>"]
    rows = [
        [
            p["payout_id"],
            label(PAYOUT_STATUSES, p["status"], language) if language != "en" else p["status"],
            p["payments"],
            display_amount(p["payout_amount"], p["currency"]),
            display_amount(p["settled_net"], p["currency"]),
            "" if p["difference"] is None else display_amount(p["difference"], p["currency"]),
            _posting(p, language),
        ]
        for p in payouts
    ]
    keys = ("h_payout", "h_status", "h_payments", "h_paid_out", "h_net", "h_difference", "h_bank")
    flagged = [p["status"] != PAYOUT_MATCHED for p in payouts]
    parts.append(html_table([_t(k, language) for k in keys], rows, frozenset({2, 3, 4, 5}), flagged))
    parts.append(f'<p class="more">{escaped(_t("payouts_note", language))}</p>')
    return parts


def _change_label(change: dict[str, Any], language: Language = "en") -> tuple[str, str]:
    return change["from_class"] or _t("not_before", language), change["to_class"] or _t("not_now", language)


def _headline(summ: dict[str, Any], language: Language = "en") -> str:
    counts = summ["counts"]
    items = _n(counts["items"], "item", "items", language)
    if counts["exceptions"] == 0:
        return _t("balanced", language, items=items)
    healed = counts["healed"]
    return _t(
        "headline", language, exceptions=_n(counts["exceptions"], "exception", "exceptions", language), items=items,
        healed=_n(healed, "healed_one", "healed_many", language), act=f"{counts['exceptions'] - healed:,}",
    )  # fmt: skip


def render_html(
    summ: dict[str, Any],
    changes: Sequence[dict[str, Any]],
    n_changes: int,
    exceptions: Sequence[ItemRow],
    language: Language = "en",
) -> str:
    """The page, in ``language``: headline, exceptions first (those given, with a count of the rest), payouts
    (not matched first, highlighted), totals per provider/currency/class, changes since the previous run
    (likewise), run metadata."""
    run, counts = summ["run"], summ["counts"]
    title = _t(
        "title", language, provider=label(PROVIDERS, run["provider"], language), day=run["business_date"], run=run["id"]
    )
    parts = [
        f'<!DOCTYPE html>\n<html lang="{language}">\n<head>\n<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escaped(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>",
        f"<h1>{escaped(title)}</h1>",
        f'<p class="banner {"ok" if counts["exceptions"] == 0 else "bad"}">{escaped(_headline(summ, language))}</p>',
    ]

    parts.append(f"<h2>{escaped(_t('Exceptions', language))} ({counts['exceptions']:,})</h2>")
    if exceptions:
        rows = [
            [
                label(CLASSES, it.cls, language) + (_t("healed", language) if it.healed else ""),
                it.reference or "",
                it.provider_txn_id or "",
                display_amount(it.internal_amount, it.internal_currency),
                display_amount(it.provider_amount, it.provider_currency),
                "" if it.difference is None else display_amount(it.difference, it.currency),
                f"{it.internal_status or '—'} / {it.provider_status or '—'}",
                why(it, language),
            ]
            for it in exceptions
        ]
        keys = ("h_class", "h_reference", "h_txn", "h_internal", "h_provider", "h_difference", "h_statuses")
        headers = [*(_t(k, language) for k in keys), _t("h_detail", language)]
        parts.append(html_table(headers, rows, frozenset({3, 4, 5}), detail=len(headers) - 1))
        if counts["exceptions"] > len(exceptions):
            rest = counts["exceptions"] - len(exceptions)
            more = _t("more_exceptions", language, n=_n(rest, "exception", "exceptions", language))
            parts.append(f'<p class="more">{escaped(more)}</p>')
    else:
        parts.append(f"<p>{escaped(_t('none', language))}</p>")

    parts.extend(_payouts_html(summ.get("payouts", []), language))

    parts.append(f"<h2>{escaped(_t('totals', language))}</h2>")
    total_keys = ("h_provider", "h_currency", "h_class", "h_count", "h_healed", "h_internal_total",
                  "h_provider_total", "h_fees")  # fmt: skip
    parts.append(
        html_table(
            [_t(k, language) for k in total_keys], _totals_rows(summ, language=language), frozenset({3, 4, 5, 6, 7})
        )
    )

    previous = run["previous_run_id"]
    if previous is None:
        parts.append(f"<h2>{escaped(_t('changes_first', language))}</h2>\n<p>{escaped(_t('first_run', language))}</p>")
    else:
        parts.append(f"<h2>{escaped(_t('changes', language, previous=previous, n=f'{n_changes:,}'))}</h2>")
        if changes:
            rows = [[c["reference"] or c["provider_txn_id"] or "", *_change_label(c, language)] for c in changes]
            parts.append(html_table([_t(k, language) for k in ("h_reference", "h_was", "h_now")], rows))
            if n_changes > len(changes):
                more = _t("more_changes", language, n=f"{n_changes - len(changes):,}")
                parts.append(f'<p class="more">{escaped(more)}</p>')
        else:
            parts.append(f"<p>{escaped(_t('no_change', language))}</p>")

    parts.append(f"<h2>{escaped(_t('run', language))}</h2>\n<dl>")
    shown = {
        key: local_time(value, run["timezone"]) + f" ({run['timezone']})" if key.endswith("_at") and value else value
        for key, value in run.items()
    }
    parts.extend(f"<dt>{escaped(key)}</dt><dd>{escaped(value) or '—'}</dd>" for key, value in shown.items())
    parts.append(f'</dl>\n<p class="more">{escaped(_t("generated", language))}</p>\n</body>\n</html>\n')
    return "\n".join(parts)


# --------------------------------------------------------------------------- terminal


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: frozenset[int]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        cells = [
            v.rjust(w) if i in numeric else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _clip(value: str | None, width: int) -> str:
    text = printable(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def render_text(
    summ: dict[str, Any], changes: Sequence[dict[str, Any]], n_changes: int, exceptions: Sequence[ItemRow]
) -> str:
    """The terminal summary: metadata, a table of counts and totals per class and currency,
    the changes since the previous run and the exceptions given (with a count of the rest)."""
    run, counts = summ["run"], summ["counts"]
    lines = [
        f"Reconciliation run {run['id']}: {printable(run['provider'])}, business day {run['business_date']}"
        f" ({printable(run['timezone'])})",
        f"  window    {run['window_start']} .. {run['window_end']}",
        f"  trigger   {printable(run['trigger'])}, status {printable(run['status'])}",
        f"  started   {run['started_at']}, finished {run['finished_at'] or '-'}",
        f"  previous  {'run ' + str(run['previous_run_id']) if run['previous_run_id'] else '-'}",
    ]
    if run["error"]:
        lines.append(f"  error     {_clip(run['error'], 200)}")
    lines += ["", _headline(summ), ""]

    rows = [
        [printable(r) if isinstance(r, str) else f"{r:,}" for r in row[1:]] for row in _totals_rows(summ, words=False)
    ]
    headers = ("CURRENCY", "CLASS", "COUNT", "HEALED", "INTERNAL TOTAL", "PROVIDER TOTAL", "FEES")
    lines += _text_table(headers, rows, frozenset({2, 3, 4, 5, 6})) if rows else ["(no items)"]

    lines.append("")
    if summ.get("payouts"):
        lines.append("Payouts (amount paid out against the net of the payments it settles):")
        for p in summ["payouts"]:
            posted = f", posted (journal {p['journal_id']})" if p["posted"] else ""
            lines.append(
                f"  {_clip(p['payout_id'], 40)}: {printable(p['status'])}, {p['payments']} payment(s), "
                f"paid {p['payout_amount']} vs net {p['settled_net']} {printable(p['currency'])}{posted}"
            )
        lines.append("")
    if run["previous_run_id"] is None:
        lines.append("Changes: first run of this business day.")
    else:
        lines.append(f"Changes since run {run['previous_run_id']}: {n_changes:,}")
        for change in changes:
            was, now = _change_label(change)
            lines.append(f"  {_clip(change['reference'] or change['provider_txn_id'], 40)}: {was} -> {now}")
        if n_changes > len(changes):
            lines.append(f"  … and {n_changes - len(changes):,} more")

    lines.append("")
    if not exceptions:
        lines.append("Exceptions: none.")
    else:
        lines.append(f"Exceptions (first {len(exceptions)} of {counts['exceptions']:,}):")
        rows = [
            [
                it.cls + (" (healed)" if it.healed else ""),
                _clip(it.reference or it.provider_txn_id, 30),
                display_amount(it.internal_amount, it.internal_currency),
                display_amount(it.provider_amount, it.provider_currency),
                _clip(why(it), 60),
            ]
            for it in exceptions
        ]
        exception_headers = ("CLASS", "REFERENCE", "INTERNAL", "PROVIDER", "DETAIL")
        lines += ["  " + line for line in _text_table(exception_headers, rows, frozenset({2, 3}))]
    return "\n".join(lines) + "\n"
