"""Finance reports of a reconciliation run: CSV, XLSX, JSON and HTML files, and the terminal summary.

Every export reads one run (``recon_runs``), its classified items (``recon_items``) and its payouts
(``recon_payouts``, with their ledger posting from ``payout_postings``), and streams the items from a
server-side cursor, so memory does not grow with the size of the run (payouts are few: a handful a
day); on PostgreSQL the items of the CSV and JSON files come formatted from a ``COPY`` instead, the
same bytes (``reports_pg``; ``export_all`` sorts them once for both files). Files are written next
to their final name and renamed into place, so a reader never sees half a report. File names:
``recon_<provider>_<business_date>_run<id>.<csv|xlsx|json|html>``, and
``recon_<provider>_<business_date>_run<id>_payouts.csv`` for the payouts (the CSV format writes both
CSV files); ``export_all`` writes all five and ``manifest.json`` (each file with its size and SHA-256).
Items are listed exceptions first, most serious first (``reports_common.EXCEPTION_ORDER``), then by
reference in byte order (``reports_common.BYTE_ORDER``); payouts not matched first
(``reports_common.PAYOUT_ORDER``), then by payout id.

CSV (RFC 4180, UTF-8 without BOM, CRLF, header row always): ``CSV_COLUMNS`` and ``PAYOUT_CSV_COLUMNS``, each
column described for finance staff in docs/reports.md ("CSV columns"; a test holds the two together).

XLSX: sheets Summary (with payout counts and totals), Exceptions, Payouts, All lines (see
``reports_xlsx``). JSON: ``payrecon.recon-report/1``, schema ``schemas/recon-report.v1.schema.json``
(payouts under ``payouts``). HTML: one self-contained page (see ``reports_render``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, String, and_, case, func, literal, select
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool, QueuePool

from reconciliation.aside import replacing
from reconciliation.db import is_postgres, statement_settings
from reconciliation.models import PayoutPosting, ReconItem, ReconPayout, ReconRun
from reconciliation.progress import Progress, silent
from reconciliation.reports import pg as reports_pg
from reconciliation.reports.common import (
    BYTE_ORDER,
    EXCEPTION_ORDER,
    MATCHED,
    ItemRow,
    class_rank,
    formula_safe,
    iso_utc,
    payout_rank,
    plain_amount,
)
from reconciliation.reports.labels import Language

FORMATS = ("csv", "xlsx", "json", "html")
REPORT_SCHEMA = "payrecon.recon-report/1"
MANIFEST_SCHEMA = "payrecon.recon-manifest/1"
#: Rows per sheet Excel allows (header included). Tests lower it.
XLSX_MAX_ROWS = 1_048_576
#: Above this many items the XLSX has no All lines sheet (its note says so; the CSV has them all):
#: 1,000,000 rows took over two minutes to write, and a spreadsheet that size is barely usable.
XLSX_ALL_LINES = 100_000
#: Rows fetched per round trip from the server-side cursor.
STREAM_BATCH = 10_000
#: Exceptions shown in the HTML page and in the terminal.
HTML_EXCEPTIONS = 200
TERMINAL_EXCEPTIONS = 20
TERMINAL_CHANGES = 20

CSV_COLUMNS = (
    "run_id", "provider", "business_date", "class", "healed", "reference", "provider_txn_id",
    "internal_status", "provider_status", "currency", "internal_amount_minor", "provider_amount_minor",
    "difference_minor", "fee_minor", "expected_fee_minor", "internal_amount", "provider_amount", "detail",
    "provider_currency",
)  # fmt: skip
PAYOUT_CSV_COLUMNS = (
    "run_id", "provider", "business_date", "payout_id", "status", "currency", "payout_amount_minor",
    "settled_net_minor", "difference_minor", "payments", "payout_amount", "settled_net", "difference", "posted",
    "journal_id", "posted_run_id",
)  # fmt: skip
#: What ``export`` writes for each format: the CSV format is two files, the items and the payouts.
FORMAT_PARTS: dict[str, tuple[str, ...]] = {"csv": ("", "payouts"), "xlsx": ("",), "json": ("",), "html": ("",)}

ITEM_COLUMNS = (
    ReconItem.id, ReconItem.cls, ReconItem.healed, ReconItem.reference, ReconItem.payment_id,
    ReconItem.provider_txn_id, ReconItem.internal_status, ReconItem.provider_status, ReconItem.internal_amount,
    ReconItem.internal_currency, ReconItem.provider_amount, ReconItem.provider_currency, ReconItem.provider_lines,
    ReconItem.fee, ReconItem.expected_fee, ReconItem.difference, ReconItem.detail,
)  # fmt: skip

_RANK = case(
    {cls: rank for rank, cls in enumerate(EXCEPTION_ORDER)} | {MATCHED: len(EXCEPTION_ORDER) + 1},
    value=ReconItem.cls,
    else_=len(EXCEPTION_ORDER),
)


class Summarize:
    """What the formats of one export share, each computed once, when first asked for: the run's ``summary``
    (calling it), and its ``changes`` since the previous run (the JSON lists them all, the HTML the first ones and
    how many). A re-run of a 1,000,000-item day took 2.0-2.5 s a reading of its changes, and an export read them
    three times."""

    def __init__(self, session: Session | None, run_id: int) -> None:
        self._session, self._run_id = session, run_id
        self._summary: dict[str, Any] | None = None
        self._changes: list[dict[str, Any]] | None = None

    @classmethod
    def of(cls, summary_: dict[str, Any], changes_: list[dict[str, Any]]) -> Summarize:
        """Both read already (for a thread with a session of its own: this one reads nothing)."""
        ready = cls(None, int(summary_["run"]["id"]))
        ready._summary, ready._changes = summary_, changes_
        return ready

    def __call__(self) -> dict[str, Any]:
        if self._summary is None:
            assert self._session is not None  # noqa: S101 - ``of`` sets both
            self._summary = summary(self._session, self._run_id)
        return self._summary

    def changes(self) -> list[dict[str, Any]]:
        if self._changes is None:
            assert self._session is not None  # noqa: S101 - ``of`` sets both
            self._changes = changes(self._session, self._run_id)
        return self._changes

    def first_changes(self, limit: int) -> tuple[list[dict[str, Any]], int]:
        """The first ``limit`` changes and how many there are: from the changes read already, else only those read,
        with the count (``first_changes``: an HTML report written alone holds no whole day's restatements)."""
        if self._changes is None and self._session is not None:
            return first_changes(self._session, self._run_id, limit)
        restated = self.changes()
        return restated[:limit], len(restated)


class RunNotFoundError(LookupError):
    """No reconciliation run with that id."""


# --------------------------------------------------------------------------- reading


def _run(session: Session, run_id: int) -> ReconRun:
    run = session.get(ReconRun, run_id)
    if run is None:
        raise RunNotFoundError(f"no reconciliation run {run_id}")
    return run


def run_metadata(run: ReconRun) -> dict[str, Any]:
    """The run's fields as JSON-ready values (dates ISO 8601, timestamps UTC with ``Z``)."""
    return {
        "id": run.id,
        "provider": run.provider,
        "business_date": run.business_date.isoformat(),
        "timezone": run.timezone,
        "window_start": iso_utc(run.window_start),
        "window_end": iso_utc(run.window_end),
        "trigger": run.trigger,
        "status": run.status,
        "started_at": iso_utc(run.started_at),
        "finished_at": iso_utc(run.finished_at),
        "previous_run_id": run.previous_run_id,
        "error": run.error,
    }


def _groups(session: Session, run_id: int) -> list[Any]:
    """The run's items in one pass, grouped by class and both currencies: what ``summary`` needs of a
    million items (the counts per class, the totals per currency and class) is folded in Python from
    these few groups. Each sum covers the group's non-NULL values (NULL when there are none)."""
    stmt = (
        select(
            ReconItem.cls,
            ReconItem.internal_currency,
            ReconItem.provider_currency,
            func.count(),
            func.count().filter(ReconItem.healed),
            func.sum(ReconItem.internal_amount),
            func.sum(ReconItem.provider_amount),
            func.sum(ReconItem.fee),
        )
        .where(ReconItem.run_id == run_id)
        .group_by(ReconItem.cls, ReconItem.internal_currency, ReconItem.provider_currency)
    )
    if not is_postgres(session):
        return list(session.execute(stmt))
    # A handful of groups, hashed: a run just written has no statistics yet, and the planner, guessing 200 groups
    # or more, sorted a million items (on disk, in 4 MB of work_mem) to group them: 1.4-1.7 s, against 0.6-1.2 s.
    with statement_settings(session, _FEW_GROUPS):
        return list(session.execute(stmt))


#: The planner settings of ``_groups``'s statement (``SET LOCAL``).
_FEW_GROUPS = {"enable_sort": "off", "work_mem": "64MB"}


_TOTAL_KEYS = ("count", "healed", "internal_total_minor", "provider_total_minor", "fee_total_minor")


def _totals(groups: Iterable[Any]) -> list[dict[str, Any]]:
    # An item counts once, in its currency (ours, else the provider's). Amounts are totalled in their
    # own currency: on a currency_mismatch the provider amount and fee land in the provider's currency.
    totals: dict[tuple[str | None, str], dict[str, Any]] = {}

    def add(currency: str | None, cls: str, values: tuple[Any, ...]) -> None:
        row = totals.setdefault(
            (currency, cls),
            {"currency": currency, "class": cls, "count": 0, "healed": 0, "internal_total_minor": 0,
             "provider_total_minor": 0, "fee_total_minor": 0},
        )  # fmt: skip
        for key, value in zip(_TOTAL_KEYS, values, strict=True):
            row[key] += int(value or 0)

    for cls, internal_currency, provider_currency, n, healed, internal, provider, fee in groups:
        primary = internal_currency if internal_currency is not None else provider_currency
        if provider_currency is None or provider_currency == primary:
            add(primary, cls, (n, healed, internal, provider, fee))
        else:  # the provider's amount and fee in its own currency, the item counted in ours
            add(primary, cls, (n, healed, internal, None, None))
            add(provider_currency, cls, (0, 0, None, provider, fee))
    rows = list(totals.values())
    rows.sort(key=lambda r: (r["currency"] or "", class_rank(r["class"]), r["class"]))
    return rows


def summary(session: Session, run_id: int) -> dict[str, Any]:
    """Run metadata, totals per (currency, class), counts and payouts.

    Returns ``{"run": run_metadata, "counts": {...}, "totals": [...], "payouts": [...]}`` where
    ``counts`` holds ``items``, ``exceptions`` (every item not matched, healed ones included: they are
    to be read), ``healed`` and ``by_class``; each total is ``{currency, class, count, healed,
    internal_total_minor, provider_total_minor, fee_total_minor}``; ``payouts`` is ``payouts()``.
    """
    run = _run(session, run_id)
    groups = _groups(session, run_id)
    by_class: dict[str, int] = {}
    healed = 0
    for cls, _, _, n, n_healed, *_ in groups:
        by_class[cls] = by_class.get(cls, 0) + int(n)
        healed += int(n_healed)
    ordered = dict(sorted(by_class.items(), key=lambda kv: (class_rank(kv[0]), kv[0])))
    items = sum(ordered.values())
    return {
        "run": run_metadata(run),
        "counts": {
            "items": items,
            "exceptions": items - ordered.get(MATCHED, 0),
            "healed": healed,
            "by_class": ordered,
        },
        "totals": _totals(groups),
        "payouts": payouts(session, run_id),
    }


def payouts(session: Session, run_id: int) -> list[dict[str, Any]]:
    """The run's payouts, not matched first (``PAYOUT_ORDER``), then by payout id.

    Each is ``{payout_id, status, currency, payout_amount, settled_net, payments, difference, posted,
    journal_id, posted_run_id}``: its amount against the net of the payments it settles (integer
    minor units), and its ledger posting (``runs.post_payouts``: matched payouts only, once per
    provider and payout id, by whichever run of the provider first found it matched).
    """
    run = _run(session, run_id)
    posting = and_(PayoutPosting.provider == run.provider, PayoutPosting.payout_id == ReconPayout.payout_id)
    stmt = (
        select(ReconPayout, PayoutPosting.journal_id, PayoutPosting.run_id)
        .outerjoin(PayoutPosting, posting)
        .where(ReconPayout.run_id == run_id)
    )
    rows: list[dict[str, Any]] = [
        {
            "payout_id": p.payout_id, "status": p.status, "currency": p.currency, "payout_amount": p.payout_amount,
            "settled_net": p.settled_net, "payments": p.payments, "difference": p.difference,
            "posted": journal_id is not None, "journal_id": journal_id, "posted_run_id": posted_run_id,
        }
        for p, journal_id, posted_run_id in session.execute(stmt)
    ]  # fmt: skip
    rows.sort(key=lambda r: (payout_rank(r["status"]), r["payout_id"]))
    return rows


def _bytewise(session: Session, column: Any) -> Any:
    """``column`` compared as bytes (``BYTE_ORDER``) on PostgreSQL; SQLite compares bytes already (and has no "C")."""
    return column.collate(BYTE_ORDER) if is_postgres(session) else column


def _changes_select(run_id: int, previous_run_id: int) -> Any:
    def keyed(rid: int, name: str) -> Any:
        # One row per reference (or provider transaction id when the line has no reference).
        key = func.coalesce(ReconItem.reference, literal("txn:", String) + ReconItem.provider_txn_id)
        return (
            select(
                key.label("key"),
                func.min(ReconItem.reference).label("reference"),
                func.min(ReconItem.provider_txn_id).label("txn"),
                func.min(ReconItem.cls).label("cls"),
            )
            .where(ReconItem.run_id == rid, key.is_not(None))
            .group_by(key)
            .subquery(name)
        )

    cur, prev = keyed(run_id, "cur"), keyed(previous_run_id, "prev")
    return (
        select(
            func.coalesce(cur.c.reference, prev.c.reference).label("reference"),
            func.coalesce(cur.c.txn, prev.c.txn).label("provider_txn_id"),
            prev.c.cls.label("from_class"),
            cur.c.cls.label("to_class"),
            func.coalesce(cur.c.key, prev.c.key).label("key"),
        )
        .select_from(cur.join(prev, cur.c.key == prev.c.key, full=True))
        .where(cur.c.cls.is_distinct_from(prev.c.cls))
    )


def _change(reference: str | None, txn: str | None, from_cls: str | None, to_cls: str | None) -> dict[str, Any]:
    return {
        "reference": reference,
        "provider_txn_id": txn,
        "from_class": from_cls,
        "to_class": to_cls,
        "change": "appeared" if from_cls is None else "disappeared" if to_cls is None else "restated",
    }


def _ordered_changes(session: Session, run_id: int, *extra: Any) -> Any:
    """``changes``' statement, in their order, with the ``extra`` columns after theirs; None for a first run."""
    run = _run(session, run_id)
    if run.previous_run_id is None:
        return None
    sub = _changes_select(run.id, run.previous_run_id).subquery("changes")
    stmt = select(sub.c.reference, sub.c.provider_txn_id, sub.c.from_class, sub.c.to_class, *extra)
    return stmt.order_by(_bytewise(session, sub.c.key))


def first_changes(session: Session, run_id: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """The first ``limit`` of ``changes`` and how many there are, from one reading of them (the count a window over
    every change, beside the first rows): the HTML page and the terminal show the first ones."""
    stmt = _ordered_changes(session, run_id, func.count().over())
    if stmt is None:
        return [], 0
    rows = session.execute(stmt.limit(limit)).all()
    if not rows and limit == 0:
        return [], count_changes(session, run_id)
    return [_change(*row[:4]) for row in rows], int(rows[0][4]) if rows else 0


def changes(session: Session, run_id: int, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Items restated since the previous run of the same provider and business date.

    One set-based query (a full outer join of both runs on the reference). Each change is
    ``{reference, provider_txn_id, from_class, to_class, change}`` where ``change`` is
    ``restated``, ``appeared`` (``from_class`` null) or ``disappeared`` (``to_class`` null).
    Empty when the run has no previous run. Sorted by reference in byte order, as the items are;
    ``limit`` keeps the first ones.
    """
    stmt = _ordered_changes(session, run_id)
    if stmt is None:
        return []
    if limit is not None:
        stmt = stmt.limit(limit)
    return [_change(*row) for row in session.execute(stmt)]


def count_changes(session: Session, run_id: int) -> int:
    """How many references ``changes`` lists, without fetching them."""
    run = _run(session, run_id)
    if run.previous_run_id is None:
        return 0
    sub = _changes_select(run.id, run.previous_run_id).subquery("changes")
    return int(session.scalar(select(func.count()).select_from(sub)) or 0)


def iter_items(
    session: Session, run_id: int, *, exceptions_only: bool = False, limit: int | None = None
) -> Iterator[ItemRow]:
    """Stream the run's items, exceptions first, from a server-side cursor (``yield_per``)."""
    stmt = select(*ITEM_COLUMNS).where(ReconItem.run_id == run_id)
    if exceptions_only:
        stmt = stmt.where(ReconItem.cls != MATCHED)
    stmt = stmt.order_by(_RANK, ReconItem.healed, _bytewise(session, ReconItem.reference), ReconItem.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    result = session.execute(stmt.execution_options(yield_per=STREAM_BATCH))
    try:
        for row in result:
            yield ItemRow._make(row)
    finally:
        result.close()


# --------------------------------------------------------------------------- files


def file_name(run: ReconRun, ext: str, part: str = "") -> str:
    """``recon_<provider>_<business_date>_run<id>[_<part>].<ext>`` (provider reduced to ``[A-Za-z0-9_-]``)."""
    provider = re.sub(r"[^A-Za-z0-9_-]", "_", run.provider)
    suffix = f"_{part}" if part else ""
    return f"recon_{provider}_{run.business_date.isoformat()}_run{run.id}{suffix}.{ext}"


def csv_row(run: ReconRun, item: ItemRow) -> list[str | int]:
    """One CSV row in ``CSV_COLUMNS`` order: text escaped against formulas, numbers untouched."""
    return [
        run.id,
        formula_safe(run.provider),
        run.business_date.isoformat(),
        formula_safe(item.cls),
        "true" if item.healed else "false",
        formula_safe(item.reference),
        formula_safe(item.provider_txn_id),
        formula_safe(item.internal_status),
        formula_safe(item.provider_status),
        formula_safe(item.currency),
        "" if item.internal_amount is None else item.internal_amount,
        "" if item.provider_amount is None else item.provider_amount,
        "" if item.difference is None else item.difference,
        "" if item.fee is None else item.fee,
        "" if item.expected_fee is None else item.expected_fee,
        plain_amount(item.internal_amount, item.internal_currency),
        plain_amount(item.provider_amount, item.provider_currency),
        formula_safe(item.detail),
        formula_safe(item.provider_currency),
    ]


def _csv_file(path: Path, header: Sequence[str], rows: Iterable[Sequence[str | int]]) -> None:
    """RFC 4180: UTF-8 without BOM, CRLF, the header row always; rows are streamed."""
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\r\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_csv(session: Session, run: ReconRun, path: Path, _summary: Summarize) -> None:
    if not reports_pg.usable(session):
        _csv_file(path, CSV_COLUMNS, (csv_row(run, item) for item in iter_items(session, run.id)))
        return
    _csv_file(path, CSV_COLUMNS, [])  # the header
    with path.open("ab") as fh:  # the rows, formatted by PostgreSQL as csv_row does
        reports_pg.copy_csv_items(session, run.id, run.provider, run.business_date.isoformat(), fh)


def payout_csv_row(run: ReconRun, payout: dict[str, Any]) -> list[str | int]:
    """One payouts CSV row in ``PAYOUT_CSV_COLUMNS`` order (``payout`` as ``payouts`` returns it)."""

    def number(value: int | None) -> str | int:
        return "" if value is None else value

    currency = payout["currency"]
    return [
        run.id,
        formula_safe(run.provider),
        run.business_date.isoformat(),
        formula_safe(payout["payout_id"]),
        formula_safe(payout["status"]),
        formula_safe(currency),
        number(payout["payout_amount"]),
        number(payout["settled_net"]),
        number(payout["difference"]),
        payout["payments"],
        plain_amount(payout["payout_amount"], currency),
        plain_amount(payout["settled_net"], currency),
        plain_amount(payout["difference"], currency),
        "true" if payout["posted"] else "false",
        number(payout["journal_id"]),
        number(payout["posted_run_id"]),
    ]


def _write_payouts_csv(session: Session, run: ReconRun, path: Path, _summary: Summarize) -> None:
    _csv_file(path, PAYOUT_CSV_COLUMNS, (payout_csv_row(run, payout) for payout in payouts(session, run.id)))


def payout_json(payout: dict[str, Any]) -> dict[str, Any]:
    """One payout of the JSON report (amounts in integer minor units, named like the item amounts)."""
    return {
        "payout_id": payout["payout_id"],
        "status": payout["status"],
        "currency": payout["currency"],
        "payout_amount_minor": payout["payout_amount"],
        "settled_net_minor": payout["settled_net"],
        "difference_minor": payout["difference"],
        "payments": payout["payments"],
        "posted": payout["posted"],
        "journal_id": payout["journal_id"],
        "posted_run_id": payout["posted_run_id"],
    }


def item_json(item: ItemRow) -> dict[str, Any]:
    """One item of the JSON report (amounts in integer minor units, as stored)."""
    return {
        "id": item.id,
        "class": item.cls,
        "healed": item.healed,
        "reference": item.reference,
        "provider_txn_id": item.provider_txn_id,
        "payment_id": item.payment_id,
        "internal_status": item.internal_status,
        "provider_status": item.provider_status,
        "currency": item.currency,
        "internal_amount_minor": item.internal_amount,
        "internal_currency": item.internal_currency,
        "provider_amount_minor": item.provider_amount,
        "provider_currency": item.provider_currency,
        "provider_lines": item.provider_lines,
        "fee_minor": item.fee,
        "expected_fee_minor": item.expected_fee,
        "difference_minor": item.difference,
        "detail": item.detail,
    }


def _json_head(session: Session, run: ReconRun, summarize: Summarize) -> str:
    """The JSON report up to its items: the head without its closing brace, then ``, "items": [``."""
    summ = summarize()
    head = {
        "schema": REPORT_SCHEMA,
        "run": summ["run"],
        "counts": summ["counts"],
        "totals": summ["totals"],
        "payouts": [payout_json(p) for p in summ["payouts"]],
        "changes": summarize.changes(),
    }
    return json.dumps(head, ensure_ascii=False)[:-1] + ', "items": ['


def _write_json(session: Session, run: ReconRun, path: Path, summarize: Summarize) -> None:
    if reports_pg.usable(session):
        with path.open("wb") as out:  # the items formatted by PostgreSQL as item_json and json.dumps do
            out.write(_json_head(session, run, summarize).encode())
            reports_pg.copy_json_items(session, run.id, out)
            out.write(b"]}\n")
        return
    with path.open("w", encoding="utf-8") as fh:
        # The head, then the items array one element at a time.
        fh.write(_json_head(session, run, summarize))
        sep = "\n"
        for item in iter_items(session, run.id):
            fh.write(sep)
            fh.write(json.dumps(item_json(item), ensure_ascii=False))
            sep = ",\n"
        fh.write("\n]}\n")


def _write_xlsx(
    session: Session, run: ReconRun, path: Path, summarize: Summarize, *, language: Language = "en"
) -> None:
    from reconciliation.reports.xlsx import write_xlsx

    write_xlsx(
        path,
        summarize(),
        lambda limit: iter_items(session, run.id, exceptions_only=True, limit=limit),
        lambda limit: iter_items(session, run.id, limit=limit),
        max_rows=XLSX_MAX_ROWS,
        all_lines_max=XLSX_ALL_LINES,
        language=language,
    )


def _write_html(
    session: Session, run: ReconRun, path: Path, summarize: Summarize, *, language: Language = "en"
) -> None:
    from reconciliation.reports.render import render_html

    first, n_changes = summarize.first_changes(HTML_EXCEPTIONS)
    page = render_html(
        summarize(),
        first,
        n_changes,
        list(iter_items(session, run.id, exceptions_only=True, limit=HTML_EXCEPTIONS)),
        language,
    )
    path.write_text(page, encoding="utf-8")


def _write_csv_and_json(session: Session, run: ReconRun, csv_path: Path, json_path: Path, summarize: Summarize) -> None:
    """PostgreSQL: the items CSV and the JSON report as ``_write_csv`` and ``_write_json`` write them,
    from one sort of the run's items (``export_all``)."""
    _csv_file(csv_path, CSV_COLUMNS, [])  # the header
    with csv_path.open("ab") as csv_out, json_path.open("wb") as json_out:
        json_out.write(_json_head(session, run, summarize).encode())
        reports_pg.copy_csv_and_json_items(
            session, run.id, run.provider, run.business_date.isoformat(), csv_out=csv_out, json_out=json_out
        )
        json_out.write(b"]}\n")


#: The formats people read (their words follow ``language``).
FOR_PEOPLE = frozenset({"html", "xlsx"})

_WRITERS: dict[tuple[str, str], Any] = {
    ("csv", ""): _write_csv,
    ("csv", "payouts"): _write_payouts_csv,
    ("xlsx", ""): _write_xlsx,
    ("json", ""): _write_json,
    ("html", ""): _write_html,
}


def export_files(
    session: Session, run_id: int, fmt: str, out_dir: Path, *, progress: Progress = silent, language: Language = "en"
) -> list[Path]:
    """Write the run's report in ``fmt`` (one of ``FORMATS``) into ``out_dir``; return every file written.

    One file per format, except CSV: the items CSV, then the payouts CSV (``FORMAT_PARTS``).
    ``progress`` hears the ``reports`` stage, in files written. ``language``: of the words people read (the
    HTML page, the XLSX Detail column); CSV and JSON are for programs and keep code names.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; choose from {', '.join(FORMATS)}")
    run = _run(session, run_id)
    summarize = Summarize(session, run_id)
    return _export_files(session, run, fmt, out_dir, progress=progress, summarize=summarize, language=language)


def _export_files(
    session: Session,
    run: ReconRun,
    fmt: str,
    out_dir: Path,
    *,
    progress: Progress,
    summarize: Summarize,
    language: Language = "en",
    written: frozenset[tuple[str, str]] = frozenset(),
) -> list[Path]:
    """``export_files`` of ``run``; the (format, part) files in ``written`` are there already."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    parts = FORMAT_PARTS[fmt]
    progress("reports", 0, len(parts))
    for part in parts:
        path = out_dir / file_name(run, fmt, part)
        if (fmt, part) not in written:
            _write_file(session, run, fmt, part, path, summarize=summarize, language=language)
        paths.append(path)
        progress("reports", len(paths), len(parts))
    return paths


def _write_file(
    session: Session, run: ReconRun, fmt: str, part: str, path: Path, *, summarize: Summarize, language: Language
) -> None:
    """One report file, put in place whole (``aside.replacing``) by its writer (``_WRITERS``)."""
    with replacing(path) as tmp:
        if fmt in FOR_PEOPLE:
            _WRITERS[fmt, part](session, run, tmp, summarize, language=language)
        else:
            _WRITERS[fmt, part](session, run, tmp, summarize)


def export(session: Session, run_id: int, fmt: str, out_dir: Path) -> Path:
    """Write the run's report in ``fmt`` (one of ``FORMATS``) into ``out_dir``; return its main file's path.

    ``csv`` writes the payouts CSV too (next to the items CSV, named ``file_name(run, "csv", "payouts")``);
    ``export_files`` returns both paths.
    """
    return export_files(session, run_id, fmt, out_dir)[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


#: One export at a time per process writes its other files beside the items' COPY (``_export_items``), with a second
#: connection: the nightly job exports a run per provider and day at once, and each holding its connection while it
#: waits for another could drain the pool. The others write their files one after another, on one connection.
_BESIDE = threading.BoundedSemaphore(1)


def _export_items(
    session: Session,
    run: ReconRun,
    out_dir: Path,
    summarize: Summarize,
    *,
    language: Language,
    digests: dict[Path, str],
    copied: Callable[[int], None],
) -> dict[tuple[str, str], Path]:
    """PostgreSQL (``export_all``): the items CSV and the JSON from one sort of the items, and meanwhile, when it can,
    the other files in a thread with a session of its own; returns the files written, by (format, part), each
    file's SHA-256 in ``digests``. ``copied`` hears how many files are written when the COPY's two are.

    The COPY keeps PostgreSQL busy (its parallel workers format and sort the items) while this process only moves
    bytes to the files; the XLSX, HTML and payouts CSV files are this process's work, and the digests of the two
    large files are computed while the other thread still writes. The other session sees the run as committed: a
    finished run's items and payouts no longer change, and the summary is computed once, before the thread starts.
    A run it cannot see (the caller's, not committed yet), another export doing so already (``_BESIDE``), a pool
    with no connection to spare (``_spare_connection``) or a session bound to one connection: the COPY alone, and
    ``export_all`` writes the other files after it. When the COPY fails, the other thread stops at its next file and
    its own error, if any, is noted on the COPY's; when the other thread fails, its error is raised once the COPY
    is done. The summary and the changes since the previous run are read once, here, before the thread starts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    items = {("csv", ""): out_dir / file_name(run, "csv"), ("json", ""): out_dir / file_name(run, "json")}

    def copy_items() -> dict[tuple[str, str], Path]:
        with replacing(items["csv", ""]) as csv_tmp, replacing(items["json", ""]) as json_tmp:
            _write_csv_and_json(session, run, csv_tmp, json_tmp, summarize)
        for path in items.values():
            digests[path] = _sha256(path)
        copied(len(items))
        return items

    own = _second_session(session.get_bind(), run.id)
    if own is None:
        return copy_items()
    try:
        mine = _run(own, run.id)  # read already, by _second_session
        shared = Summarize.of(summarize(), summarize.changes())  # read here, before the thread: not by two sessions
        stop = threading.Event()  # the COPY failed: no more files

        def others() -> dict[tuple[str, str], Path]:
            files: dict[tuple[str, str], Path] = {}
            for fmt in FORMATS:
                for part in FORMAT_PARTS[fmt]:
                    if (fmt, part) in items or stop.is_set():
                        continue
                    path = out_dir / file_name(mine, fmt, part)
                    _write_file(own, mine, fmt, part, path, summarize=shared, language=language)
                    files[fmt, part] = path
                    digests[path] = _sha256(path)
            return files

        with ThreadPoolExecutor(1, thread_name_prefix="reports") as pool:
            beside = pool.submit(others)
            try:
                copy_items()
            except BaseException as exc:
                stop.set()
                wait([beside])
                if (theirs := beside.exception()) is not None:
                    exc.add_note(f"writing the other report files failed too: {theirs!r}")
                raise
            return items | beside.result()
    finally:
        own.close()
        _BESIDE.release()


def _second_session(bind: Engine | Connection, run_id: int) -> Session | None:
    """A session of its own for ``_export_items``'s other thread, its connection taken and the run read, holding
    ``_BESIDE``; None, and nothing held, when there is none to have: a session bound to one connection, another
    export beside its COPY already, a pool with no connection to spare (``_spare_connection``; should another
    thread take the last one first, the checkout waits for the pool's timeout and gives up), or a run the new
    session does not see (the caller's, not committed yet)."""
    if not (isinstance(bind, Engine) and _spare_connection(bind) and _BESIDE.acquire(blocking=False)):
        return None
    own = Session(bind=bind)
    try:
        if own.get(ReconRun, run_id) is not None:
            return own
    except PoolTimeout:
        pass
    except BaseException:
        own.close()
        _BESIDE.release()
        raise
    own.close()
    _BESIDE.release()
    return None


def _spare_connection(engine: Engine) -> bool:
    """True when ``engine``'s pool lends another connection without waiting: fewer out than its size (``make_engine``'s
    pools lend as many again), or a new connection each time; never a pool of one shared connection."""
    pool = engine.pool
    return isinstance(pool, NullPool) or (isinstance(pool, QueuePool) and pool.checkedout() < pool.size())


def export_all(
    session: Session, run_id: int, out_dir: Path, *, progress: Progress = silent, language: Language = "en"
) -> list[Path]:
    """Write every report file and ``manifest.json`` (name, format, content, size, SHA-256 of each) into ``out_dir``.

    Returns the report paths in ``FORMATS`` order (the items CSV, the payouts CSV, XLSX, JSON, HTML),
    then the manifest's. The payouts CSV is always written (header only when the run has no payout),
    so every run's manifest lists the same files. ``content`` is ``items`` or ``payouts`` for the two
    CSV files and ``run`` for the others (the whole run). One directory per run: the manifest's name
    is fixed.
    """
    run = _run(session, run_id)
    written: list[tuple[str, str, Path]] = []
    total = sum(len(FORMAT_PARTS[fmt]) for fmt in FORMATS) + 1  # and the manifest
    progress("reports", 0, total)
    summarize = Summarize(session, run_id)  # one summary, and one reading of the changes, for the formats
    digests: dict[Path, str] = {}
    together: frozenset[tuple[str, str]] = frozenset()
    if reports_pg.usable(session):
        together = frozenset(
            _export_items(
                session, run, out_dir, summarize, language=language, digests=digests,
                copied=lambda n: progress("reports", n, total),
            )
        )  # fmt: skip
    for fmt in FORMATS:
        files = _export_files(
            session, run, fmt, out_dir, progress=silent, summarize=summarize, language=language, written=together
        )
        written += [(fmt, part, path) for part, path in zip(FORMAT_PARTS[fmt], files, strict=True)]
        progress("reports", len(written), total)
    paths = [path for _, _, path in written]
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "run_id": run.id,
        "provider": run.provider,
        "business_date": run.business_date.isoformat(),
        "files": [
            {
                "name": p.name,
                "format": fmt,
                "content": part or ("items" if fmt == "csv" else "run"),
                "size": p.stat().st_size,
                "sha256": digests.get(p) or _sha256(p),
            }
            for fmt, part, p in written
        ],
    }
    manifest_path = out_dir / "manifest.json"
    with replacing(manifest_path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    progress("reports", total, total)
    return [*paths, manifest_path]


def render_terminal(session: Session, run_id: int) -> str:
    """The text of ``payrecon report show RUN``: metadata, counts and totals per class and currency,
    changes since the previous run, then the first exceptions."""
    from reconciliation.reports.render import render_text

    return render_text(
        summary(session, run_id),
        *first_changes(session, run_id, TERMINAL_CHANGES),
        list(iter_items(session, run_id, exceptions_only=True, limit=TERMINAL_EXCEPTIONS)),
    )
