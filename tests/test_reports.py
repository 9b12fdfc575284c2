"""Finance reports of a reconciliation run, on real PostgreSQL: every format parsed back."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
from datetime import UTC, date, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import openpyxl
import pytest
from sqlalchemy import delete, event, insert, text

from reconciliation.db import transaction
from reconciliation.models import PayoutPosting, ReconItem, ReconPayout, ReconRun
from reconciliation.nightly import runs
from reconciliation.reports import run as reports
from tests.helpers import plan_nodes
from worker.runtime import Runtime

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "recon-report.v1.schema.json"
DAY = date(2026, 11, 20)
T0 = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
T1 = datetime(2026, 11, 21, 0, 0, tzinfo=UTC)


def item(
    cls: str, reference: str | None, currency: str, internal: int | None, provider: int | None, **kw: Any
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "cls": cls,
        "reference": reference,
        "internal_amount": internal,
        "internal_currency": currency if internal is not None else None,
        "provider_amount": provider,
        "provider_currency": currency if provider is not None else None,
        "provider_lines": 0 if provider is None else 1,
        "internal_status": "succeeded" if internal is not None else None,
        "provider_status": "succeeded" if provider is not None else None,
        "provider_txn_id": None if provider is None else f"TX-{reference}",
        "healed": False,
        "detail": "",
    }
    row.update(kw)
    return row


# The current run: every class, XOF and USD.
CURRENT = [
    item("matched", "REF-M1", "XOF", 15000, 15000, fee=300, expected_fee=300),
    item("matched", "REF-M2", "USD", 1250, 1250, fee=50, expected_fee=50),
    item("missing_in_ledger", "REF-L1", "XOF", 5000, 5000, healed=True, detail="recorded from the provider"),
    item("missing_at_provider", "REF-P1", "XOF", 7000, None, detail="no such transaction at the provider"),
    item("amount_mismatch", "REF-A1", "XOF", 10000, 9500, difference=-500, detail="provider paid 500 less"),
    item(
        "currency_mismatch", "REF-C1", "XOF", 1000, None, provider_amount=200, provider_currency="USD",
        provider_lines=1, provider_txn_id="TX-REF-C1",
    ),
    item("status_mismatch", "REF-S1", "USD", 2000, 2000, provider_status="failed"),
    item("duplicate", "=cmd", "XOF", 3000, 6000, provider_lines=2, detail="+SUM(A1:A9)"),
    item("fee_variance", "REF-F1", "USD", 10000, 10000, fee=150, expected_fee=100, difference=50),
    item("missing_after_sla", "REF-T1", "XOF", 2500, None, internal_status="pending", detail="@still pending"),
    item("duplicate", None, "XOF", None, 800, provider_txn_id="TX-NOREF", provider_lines=2),
]  # fmt: skip
# The earlier run of the same day: REF-A1 and REF-S1 were matched, REF-P1 was not there, REF-GONE was.
PREVIOUS = [
    item("matched", "REF-M1", "XOF", 15000, 15000),
    item("matched", "REF-M2", "USD", 1250, 1250),
    item("missing_in_ledger", "REF-L1", "XOF", None, 5000),
    item("matched", "REF-A1", "XOF", 10000, 10000),
    item("currency_mismatch", "REF-C1", "XOF", 1000, None, provider_amount=200, provider_currency="USD"),
    item("matched", "REF-S1", "USD", 2000, 2000),
    item("duplicate", "=cmd", "XOF", 3000, 6000),
    item("fee_variance", "REF-F1", "USD", 10000, 10000),
    item("missing_after_sla", "REF-T1", "XOF", 2500, None),
    item("duplicate", None, "XOF", None, 800, provider_txn_id="TX-NOREF"),
    item("matched", "REF-GONE", "XOF", 4000, 4000),
]
# The current run's payouts: one of each status; the matched one is posted to the ledger by the fixture.
PAYOUTS: list[dict[str, Any]] = [
    {"payout_id": "PO-OK", "status": "matched", "currency": "XOF", "payout_amount": 70785, "settled_net": 70785,
     "payments": 2, "difference": 0},
    {"payout_id": "PO-WAIT", "status": "pending", "currency": "XOF", "payout_amount": None, "settled_net": 12870,
     "payments": 1, "difference": None},
    {"payout_id": "=PO-EVIL", "status": "unexplained", "currency": "USD", "payout_amount": 1250, "settled_net": None,
     "payments": 0, "difference": None},
    {"payout_id": "PO-SHORT", "status": "mismatch", "currency": "XOF", "payout_amount": 6000, "settled_net": 6435,
     "payments": 1, "difference": -435},
]  # fmt: skip
#: Not matched first (mismatch, unexplained, pending), then matched.
PAYOUT_ORDER = ["PO-SHORT", "=PO-EVIL", "PO-WAIT", "PO-OK"]
EXPECTED_CHANGES = [
    {"reference": "REF-A1", "from_class": "matched", "to_class": "amount_mismatch", "change": "restated"},
    {"reference": "REF-GONE", "from_class": "matched", "to_class": None, "change": "disappeared"},
    {"reference": "REF-P1", "from_class": None, "to_class": "missing_at_provider", "change": "appeared"},
    {"reference": "REF-S1", "from_class": "matched", "to_class": "status_mismatch", "change": "restated"},
]


def clean(rt: Runtime) -> None:
    # Before a second set of runs in one test (conftest empties every table before each test).
    with rt.sessions.begin() as session:
        session.execute(delete(ReconItem))
        session.execute(delete(PayoutPosting))
        session.execute(delete(ReconPayout))
        session.execute(delete(ReconRun))  # one statement: the previous_run_id references go with it


def make_run(
    rt: Runtime,
    items: list[dict[str, Any]],
    previous: int | None = None,
    trigger: str = "scheduled",
    payouts: list[dict[str, Any]] | None = None,
) -> int:
    with rt.sessions.begin() as session:
        run = ReconRun(
            provider="cinetpay", business_date=DAY, timezone="Africa/Abidjan", window_start=T0, window_end=T1,
            trigger=trigger, status="succeeded", started_at=T1, finished_at=T1, counts={}, previous_run_id=previous,
        )  # fmt: skip
        session.add(run)
        session.flush()
        if items:
            session.execute(insert(ReconItem), [{"run_id": run.id, **row} for row in items])
        if payouts:
            session.execute(insert(ReconPayout), [{"run_id": run.id, **row} for row in payouts])
        return run.id


def post(rt: Runtime, run_id: int, payout_id: str, amount: int) -> int:
    """Post a payout as ``runs.post_payouts`` does; returns the journal id."""
    with transaction(rt.sessions) as session:
        journal = runs.post_payout(session, run_id, "cinetpay", payout_id, amount=amount, currency="XOF")
        assert journal is not None
        return journal.id


@pytest.fixture
def two_runs(rt: Runtime) -> tuple[int, int]:
    clean(rt)
    previous = make_run(rt, PREVIOUS)
    current = make_run(rt, CURRENT, previous=previous, trigger="rerun", payouts=PAYOUTS)
    post(rt, current, "PO-OK", 70785)
    return previous, current


def journal_of(rt: Runtime, payout_id: str) -> int:
    with rt.sessions() as session:
        posting = session.get(PayoutPosting, ("cinetpay", payout_id))
        assert posting is not None
        return posting.journal_id


def test_the_summary_hashes_its_few_groups_rather_than_sort_the_run(rt: Runtime, two_runs: tuple[int, int]) -> None:
    """The summary's one pass over the run's items (``_groups``) groups them by hashing, whatever the planner guesses
    of a run just written (no statistics yet): sorting a million items to find five groups took 1.4-1.7 s, on disk in
    the default work_mem; hashed, 0.6-1.2 s. Its plan, in its own settings, has no Sort; after it, the defaults."""
    _, run_id = two_runs
    seen: list[tuple[str, Any]] = []

    def explain(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if "GROUP BY recon_items.cls" in statement:
            cursor.execute("SHOW enable_sort")
            sorting = cursor.fetchone()[0]
            cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
            seen.append((sorting, cursor.fetchone()[0][0]["Plan"]))

    engine = rt.sessions.kw["bind"]
    event.listen(engine, "before_cursor_execute", explain)
    try:
        with rt.sessions() as session:
            summ = reports.summary(session, run_id)
            after = session.execute(text("SHOW enable_sort")).scalar()
    finally:
        event.remove(engine, "before_cursor_execute", explain)
    assert summ["counts"]["items"] == 11
    ((sorting, plan),) = seen
    nodes = [node["Node Type"] for node in plan_nodes(plan)]
    assert sorting == "off" and "Sort" not in nodes and plan["Strategy"] == "Hashed", nodes
    assert after == "on"


def test_summary_totals_and_counts(rt: Runtime, two_runs: tuple[int, int]) -> None:
    previous, run_id = two_runs
    with rt.sessions() as session:
        summ = reports.summary(session, run_id)
    assert summ["run"]["provider"] == "cinetpay"
    assert summ["run"]["business_date"] == "2026-11-20"
    assert summ["run"]["previous_run_id"] == previous
    assert summ["run"]["window_start"] == "2026-11-20T00:00:00Z"
    assert summ["counts"] == {
        "items": 11,
        "exceptions": 9,
        "healed": 1,
        "by_class": {
            "missing_at_provider": 1, "amount_mismatch": 1, "currency_mismatch": 1, "status_mismatch": 1,
            "missing_after_sla": 1, "duplicate": 2, "fee_variance": 1, "missing_in_ledger": 1, "matched": 2,
        },
    }  # fmt: skip
    totals = {(t["currency"], t["class"]): t for t in summ["totals"]}
    assert totals["XOF", "amount_mismatch"] == {
        "currency": "XOF", "class": "amount_mismatch", "count": 1, "healed": 0,
        "internal_total_minor": 10000, "provider_total_minor": 9500, "fee_total_minor": 0,
    }  # fmt: skip
    assert totals["XOF", "duplicate"]["count"] == 2
    assert totals["XOF", "duplicate"]["provider_total_minor"] == 6800
    assert totals["XOF", "missing_in_ledger"]["healed"] == 1
    assert totals["USD", "fee_variance"]["fee_total_minor"] == 150
    # A currency mismatch counts once, in our currency; the provider's amount is totalled in its own.
    assert totals["XOF", "currency_mismatch"]["count"] == 1
    assert totals["XOF", "currency_mismatch"]["provider_total_minor"] == 0
    assert totals["USD", "currency_mismatch"]["count"] == 0
    assert totals["USD", "currency_mismatch"]["provider_total_minor"] == 200
    assert sum(t["count"] for t in summ["totals"]) == 11
    assert [p["payout_id"] for p in summ["payouts"]] == PAYOUT_ORDER
    found = {p["payout_id"]: p for p in summ["payouts"]}
    assert found["PO-OK"] == {
        "payout_id": "PO-OK", "status": "matched", "currency": "XOF", "payout_amount": 70785, "settled_net": 70785,
        "payments": 2, "difference": 0, "posted": True, "journal_id": journal_of(rt, "PO-OK"), "posted_run_id": run_id,
    }  # fmt: skip
    assert [p["posted"] for p in summ["payouts"]] == [False, False, False, True]
    assert found["PO-SHORT"]["journal_id"] is None and found["PO-SHORT"]["posted_run_id"] is None


def test_changes_lists_exactly_the_restated_references(rt: Runtime, two_runs: tuple[int, int]) -> None:
    previous, run_id = two_runs
    with rt.sessions() as session:
        found = reports.changes(session, run_id)
        assert [{k: c[k] for k in ("reference", "from_class", "to_class", "change")} for c in found] == EXPECTED_CHANGES
        assert reports.count_changes(session, run_id) == 4
        assert reports.changes(session, run_id, limit=2) == found[:2]
        assert reports.changes(session, previous) == []  # the first run of the day


def test_csv(rt: Runtime, two_runs: tuple[int, int], tmp_path: Path) -> None:
    _, run_id = two_runs
    with rt.sessions() as session:
        path = reports.export(session, run_id, "csv", tmp_path)
    assert path.name == f"recon_cinetpay_2026-11-20_run{run_id}.csv"
    raw = path.read_bytes()
    assert raw.count(b"\r\n") == 12 and not raw.startswith(b"\xef\xbb\xbf")
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == reports.CSV_COLUMNS
    assert len(rows) == 11
    assert rows[0]["class"] == "missing_at_provider"  # exceptions first
    assert [r["class"] for r in rows][-3:] == ["missing_in_ledger", "matched", "matched"]
    by_ref = {r["reference"]: r for r in rows}
    mismatch = by_ref["REF-A1"]
    assert mismatch["difference_minor"] == "-500"  # numeric: never escaped
    assert mismatch["internal_amount_minor"] == "10000" and mismatch["internal_amount"] == "10000"
    assert mismatch["run_id"] == str(run_id) and mismatch["business_date"] == "2026-11-20"
    assert by_ref["REF-M2"]["internal_amount"] == "12.50" and by_ref["REF-M2"]["currency"] == "USD"
    assert by_ref["REF-M1"]["internal_amount"] == "15000" and by_ref["REF-M1"]["fee_minor"] == "300"
    assert by_ref["REF-L1"]["healed"] == "true" and by_ref["REF-A1"]["healed"] == "false"
    assert by_ref["REF-P1"]["provider_amount_minor"] == "" and by_ref["REF-P1"]["provider_amount"] == ""
    # Formula injection: text cells escaped.
    evil = by_ref["'=cmd"]
    assert evil["detail"] == "'+SUM(A1:A9)"
    assert by_ref["REF-T1"]["detail"] == "'@still pending"
    currency_mismatch = by_ref["REF-C1"]
    assert (currency_mismatch["currency"], currency_mismatch["provider_currency"]) == ("XOF", "USD")
    assert currency_mismatch["provider_amount"] == "2.00"
    assert by_ref[""]["provider_txn_id"] == "TX-NOREF"


def test_payouts_csv(rt: Runtime, two_runs: tuple[int, int], tmp_path: Path) -> None:
    _, run_id = two_runs
    with rt.sessions() as session:
        items_path = reports.export(session, run_id, "csv", tmp_path)  # the CSV format writes both files
        both = reports.export_files(session, run_id, "csv", tmp_path)
    path = tmp_path / f"recon_cinetpay_2026-11-20_run{run_id}_payouts.csv"
    assert both == [items_path, path]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([items_path.name, path.name])  # no leftovers
    raw = path.read_bytes()
    assert raw.count(b"\r\n") == 5 and b"\n" not in raw.replace(b"\r\n", b"") and not raw.startswith(b"\xef\xbb\xbf")
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == reports.PAYOUT_CSV_COLUMNS
    assert reports.PAYOUT_CSV_COLUMNS[:10] == (
        "run_id", "provider", "business_date", "payout_id", "status", "currency", "payout_amount_minor",
        "settled_net_minor", "difference_minor", "payments",
    )  # fmt: skip
    assert [r["payout_id"] for r in rows] == ["PO-SHORT", "'=PO-EVIL", "PO-WAIT", "PO-OK"]  # not matched first
    by_id = {r["payout_id"]: r for r in rows}
    short = by_id["PO-SHORT"]
    assert (short["run_id"], short["provider"], short["business_date"]) == (str(run_id), "cinetpay", "2026-11-20")
    assert (short["status"], short["currency"], short["payments"]) == ("mismatch", "XOF", "1")
    assert (short["payout_amount_minor"], short["settled_net_minor"], short["difference_minor"]) == (
        "6000",
        "6435",
        "-435",
    )
    assert (short["payout_amount"], short["settled_net"], short["difference"]) == ("6000", "6435", "-435")
    assert (short["posted"], short["journal_id"], short["posted_run_id"]) == ("false", "", "")
    evil = by_id["'=PO-EVIL"]  # formula injection: escaped
    assert (evil["payout_amount_minor"], evil["payout_amount"], evil["currency"]) == ("1250", "12.50", "USD")
    assert evil["settled_net_minor"] == "" and evil["difference"] == ""
    assert by_id["PO-WAIT"]["payout_amount_minor"] == "" and by_id["PO-WAIT"]["settled_net"] == "12870"
    ok = by_id["PO-OK"]
    assert (ok["status"], ok["posted"], ok["posted_run_id"]) == ("matched", "true", str(run_id))
    assert ok["journal_id"] == str(journal_of(rt, "PO-OK")) and ok["difference_minor"] == "0"


def test_payouts_csv_has_its_header_when_the_run_has_no_payout(rt: Runtime, tmp_path: Path) -> None:
    clean(rt)
    run_id = make_run(rt, [item("matched", "REF-X", "XOF", 1, 1)])
    with rt.sessions() as session:
        _, path = reports.export_files(session, run_id, "csv", tmp_path)
    assert path.read_bytes() == (",".join(reports.PAYOUT_CSV_COLUMNS) + "\r\n").encode()


def test_xlsx(rt: Runtime, two_runs: tuple[int, int], tmp_path: Path) -> None:
    _, run_id = two_runs
    with rt.sessions() as session:
        path = reports.export(session, run_id, "xlsx", tmp_path)
    assert path.suffix == ".xlsx"
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["Summary", "Exceptions", "Payouts", "All lines"]
    all_lines, exceptions = wb["All lines"], wb["Exceptions"]
    header = [c.value for c in all_lines[1]]
    assert header[:3] == ["class", "healed", "reference"]
    assert all_lines.freeze_panes == "A2" and exceptions.freeze_panes == "A2"
    assert all_lines.auto_filter.ref == "A1:N12"
    assert all_lines.max_row == 12 and exceptions.max_row == 10
    col = {name: i for i, name in enumerate(header)}
    rows = {r[col["reference"]].value: r for r in all_lines.iter_rows(min_row=2)}
    xof = rows["REF-M1"][col["internal_amount"]]
    assert xof.data_type == "n" and xof.value == 15000 and xof.number_format == "#,##0"
    usd = rows["REF-M2"][col["internal_amount"]]
    assert usd.data_type == "n" and usd.value == pytest.approx(12.5) and usd.number_format == "#,##0.00"
    diff = rows["REF-A1"][col["difference"]]
    assert diff.data_type == "n" and diff.value == -500
    assert (
        rows["REF-C1"][col["provider_amount"]].value == 2
        and rows["REF-C1"][col["provider_amount"]].number_format == "#,##0.00"
    )
    # Untrusted text: strings, escaped, never formulas.
    evil = rows["'=cmd"]
    assert evil[col["reference"]].data_type == "s"
    assert evil[col["detail"]].value == "'+SUM(A1:A9)"
    assert all(c.data_type != "f" for row in all_lines.iter_rows() for c in row)
    assert next(r[0].value for r in exceptions.iter_rows(min_row=2)) == "missing_at_provider"
    # The Detail column always says why (the run's own detail, else in words).
    details = {r[col["reference"]].value: r[col["detail"]].value for r in exceptions.iter_rows(min_row=2)}
    assert all(details.values()) and details["REF-S1"] == "we say succeeded, the provider says failed"
    assert "matched" not in [r[0].value for r in exceptions.iter_rows(min_row=2)]
    summary_rows = [[c.value for c in r] for r in wb["Summary"].iter_rows()]
    assert summary_rows[0] == ["currency", "class", "count", "healed", "internal_total", "provider_total", "fee_total"]
    xof_matched = next(r for r in summary_rows if r[:2] == ["XOF", "matched"])
    assert xof_matched[2:5] == [1, 0, 15000]
    assert ["exceptions", None, 9] in [r[:3] for r in summary_rows]
    # Payout counts and totals per currency and status, under the class totals.
    block = summary_rows.index(["currency", "payout status", "count", "posted", "paid out", "net of payments",
                                "difference"])  # fmt: skip
    assert summary_rows[block + 1 : block + 5] == [
        ["USD", "unexplained", 1, 0, 12.5, 0, 0],
        ["XOF", "mismatch", 1, 0, 6000, 6435, -435],
        ["XOF", "pending", 1, 0, 0, 12870, 0],
        ["XOF", "matched", 1, 1, 70785, 70785, 0],
    ]

    payouts = wb["Payouts"]
    assert payouts.freeze_panes == "A2" and payouts.auto_filter.ref == "A1:J5"
    header = [c.value for c in payouts[1]]
    assert header == [
        "payout_id", "status", "currency", "payments", "payout_amount", "settled_net", "difference", "posted",
        "journal_id", "posted_run_id",
    ]  # fmt: skip
    col = {name: i for i, name in enumerate(header)}
    payout_rows = list(payouts.iter_rows(min_row=2))
    assert [r[0].value for r in payout_rows] == ["PO-SHORT", "'=PO-EVIL", "PO-WAIT", "PO-OK"]  # not matched first
    short, evil, wait, ok = payout_rows
    amount = short[col["payout_amount"]]
    assert amount.data_type == "n" and amount.value == 6000 and amount.number_format == "#,##0"
    assert short[col["difference"]].data_type == "n" and short[col["difference"]].value == -435
    assert short[col["payments"]].value == 1 and short[col["posted"]].value is False
    usd = evil[col["payout_amount"]]
    assert usd.data_type == "n" and usd.value == pytest.approx(12.5) and usd.number_format == "#,##0.00"
    assert evil[0].data_type == "s" and evil[col["settled_net"]].value is None
    assert wait[col["payout_amount"]].value is None and wait[col["settled_net"]].value == 12870
    assert ok[col["posted"]].value is True and ok[col["posted_run_id"]].value == run_id
    assert ok[col["journal_id"]].value == journal_of(rt, "PO-OK")
    assert all(c.data_type != "f" for row in payouts.iter_rows() for c in row)


def test_xlsx_row_limit(rt: Runtime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean(rt)
    many = [item("amount_mismatch", f"REF-{i:02d}", "XOF", 100, 90, difference=-10) for i in range(11)]
    run_id = make_run(rt, [*many, item("matched", "REF-OK", "XOF", 5, 5)])
    monkeypatch.setattr(reports, "XLSX_MAX_ROWS", 10)
    with rt.sessions() as session:
        path = reports.export(session, run_id, "xlsx", tmp_path)
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["Summary", "Exceptions", "Payouts"]  # All lines left out
    assert wb["Payouts"].max_row == 1  # the header: no payout that day
    assert ["no payout reported for this day"] in [[c.value for c in r][:1] for r in wb["Summary"].iter_rows()]
    exceptions = wb["Exceptions"]
    assert exceptions.max_row == 10  # header, 8 exceptions, the note
    assert [r[2].value for r in exceptions.iter_rows(min_row=2, max_row=9)] == [f"REF-{i:02d}" for i in range(8)]
    assert "3 more exceptions not shown" in str(exceptions.cell(row=10, column=1).value)
    notes = [str(r[0].value) for r in wb["Summary"].iter_rows() if str(r[0].value).startswith("Note:")]
    assert len(notes) == 2
    assert "'All lines' left out" in notes[0] and "12 items" in notes[0]
    assert "first 8 of 11 exceptions" in notes[1]


def test_json_validates_against_schema(rt: Runtime, two_runs: tuple[int, int], tmp_path: Path) -> None:
    _, run_id = two_runs
    with rt.sessions() as session:
        path = reports.export(session, run_id, "json", tmp_path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(doc)
    assert doc["schema"] == "payrecon.recon-report/1"
    assert doc["run"]["id"] == run_id and doc["counts"]["exceptions"] == 9
    assert len(doc["items"]) == 11
    assert [c["reference"] for c in doc["changes"]] == ["REF-A1", "REF-GONE", "REF-P1", "REF-S1"]
    evil = next(i for i in doc["items"] if i["reference"] == "=cmd")  # JSON is for machines: not escaped
    assert evil["provider_lines"] == 2 and evil["detail"] == "+SUM(A1:A9)"
    assert "payouts" in schema["properties"] and "payouts" in doc
    assert [p["payout_id"] for p in doc["payouts"]] == ["PO-SHORT", "=PO-EVIL", "PO-WAIT", "PO-OK"]  # not escaped
    assert doc["payouts"][0] == {
        "payout_id": "PO-SHORT", "status": "mismatch", "currency": "XOF", "payout_amount_minor": 6000,
        "settled_net_minor": 6435, "difference_minor": -435, "payments": 1, "posted": False, "journal_id": None,
        "posted_run_id": None,
    }  # fmt: skip
    ok = doc["payouts"][-1]
    assert (ok["posted"], ok["journal_id"], ok["posted_run_id"]) == (True, journal_of(rt, "PO-OK"), run_id)
    assert doc["payouts"][2]["payout_amount_minor"] is None  # pending: not paid out yet
    # The schema rejects what it should.
    validator = jsonschema.Draft202012Validator(schema)
    for path_, value in (
        (("items", 0, "class"), "bogus"),
        (("payouts", 0, "status"), "bogus"),
        (("payouts", 0, "payout_amount_minor"), 6000.5),
        (("payouts", 0, "posted"), True),  # posted, yet no journal
        (("payouts", 3, "journal_id"), None),
        (("payouts", 1, "surprise"), 1),
    ):
        bad = json.loads(json.dumps(doc))
        target: Any = bad
        for key in path_[:-1]:
            target = target[key]
        target[path_[-1]] = value
        assert not validator.is_valid(bad), path_
    # Reports written before payouts were reported (no "payouts") stay valid.
    del doc["payouts"]
    validator.validate(doc)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.cells: list[str] = []
        self.attrs_seen: list[tuple[str, str | None]] = []
        self.rows: list[tuple[str | None, list[str]]] = []  # (class of the <tr>, the text of each cell)
        self.in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs_seen += attrs
        if tag == "tr":
            self.rows.append((dict(attrs).get("class"), []))
        elif tag in {"td", "th"}:
            self.rows[-1][1].append("")
            self.in_cell = True

    def handle_endtag(self, tag: str) -> None:
        if tag in {"td", "th"}:
            self.in_cell = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self.tags and self.tags[-1] in {"td", "th"}:
            self.cells.append(data)
        if self.in_cell:
            self.rows[-1][1][-1] += data


def test_html(rt: Runtime, two_runs: tuple[int, int], tmp_path: Path) -> None:
    _, run_id = two_runs
    with rt.sessions() as session:
        path = reports.export(session, run_id, "html", tmp_path)
    page = path.read_text(encoding="utf-8")
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert "<script" not in page.lower() and "http" not in page.lower()
    assert "link" not in parser.tags and "img" not in parser.tags
    assert ("name", "viewport") in parser.attrs_seen
    text = "".join(parser.text)
    assert "9 exceptions of 11 items (1 healed by the run, 8 to act on)" in text
    assert "15 000 XOF" in parser.cells and "12.50 USD" in parser.cells  # totals
    assert "missing_at_provider" in parser.cells and "REF-P1" in parser.cells  # exceptions
    assert "=cmd" in parser.cells and "+SUM(A1:A9)" in parser.cells
    assert "REF-GONE" in parser.cells and "(not in this run)" in parser.cells  # changes
    assert text.index("Exceptions") < text.index("Totals")
    assert "REF-M1" not in parser.cells  # matched items are not listed
    # Payouts: after the exceptions, not matched first and highlighted, the matched one with its journal.
    assert "Payouts (4, 3 not matched)" in text
    assert text.index("Exceptions") < text.index("Payouts (4") < text.index("Totals")
    start = next(n for n, (_, cells) in enumerate(parser.rows) if cells[:2] == ["Payout", "Status"])
    assert parser.rows[start][1] == [
        "Payout", "Status", "Payments", "Paid out", "Net of payments", "Difference", "Ledger (bank)",
    ]  # fmt: skip
    payout_rows = parser.rows[start + 1 : start + 5]
    assert [(cls, cells[0]) for cls, cells in payout_rows] == [
        ("bad", "PO-SHORT"), ("bad", "=PO-EVIL"), ("bad", "PO-WAIT"), (None, "PO-OK"),
    ]  # fmt: skip
    assert payout_rows[0][1][1:] == ["mismatch", "1", "6 000 XOF", "6 435 XOF", "-435 XOF", "not posted"]
    assert payout_rows[1][1][3:5] == ["12.50 USD", "—"]
    assert payout_rows[3][1][1:] == [
        "matched", "2", "70 785 XOF", "70 785 XOF", "0 XOF", f"journal {journal_of(rt, 'PO-OK')} (run {run_id})",
    ]  # fmt: skip
    assert "tr.bad" in page  # the highlight is styled inline


def test_html_speaks_to_people(rt: Runtime, two_runs: tuple[int, int], tmp_path: Path) -> None:
    """Labels for classes and the provider, a Detail that always says why, plurals, timestamps to the second in
    the business time zone, and no bare count of 0 in the totals (#13)."""
    _, run_id = two_runs
    with rt.sessions() as session:
        page = reports.export(session, run_id, "html", tmp_path).read_text(encoding="utf-8")
    parser = _Page()
    parser.feed(page)
    start = next(n for n, (_, cells) in enumerate(parser.rows) if cells[:2] == ["Class", "Reference"])
    exceptions = [cells for _, cells in parser.rows[start + 1 : start + 10]]
    assert [cells[0] for cells in exceptions][:3] == [
        "Recorded paid by us, unknown to the provider", "Amounts differ", "Currencies differ",
    ]  # fmt: skip
    details = {cells[1]: cells[-1] for cells in exceptions}
    assert all(details.values())  # the run's own detail, or why in words
    assert details["REF-P1"] == "no such transaction at the provider"  # the run's own is kept
    assert details["REF-C1"] == "we recorded 1 000 XOF, the provider 2.00 USD"
    assert details["REF-S1"] == "we say succeeded, the provider says failed"
    assert details["REF-F1"] == "the provider took a fee of 1.50 USD; its tariff says 1.00 USD"
    assert details[""] == "the provider reports it 2 times"
    assert "<title>Reconciliation CinetPay 2026-11-20" in page
    # The provider's side of the currency mismatch is totalled in USD: no count of its own, and it says so.
    totals = next(n for n, (_, cells) in enumerate(parser.rows) if cells[:3] == ["Provider", "Currency", "Class"])
    usd = [cells for _, cells in parser.rows[totals + 1 :] if cells[1:2] == ["USD"]]
    assert ["CinetPay", "USD", "Currencies differ (the provider's currency)", "—"] in [c[:4] for c in usd]
    assert "0" not in [c[3] for c in usd]
    assert "started_at2026-11-21 00:00:00 (Africa/Abidjan)" in "".join(parser.text)
    clean(rt)
    one = make_run(rt, [item("matched", "REF-X", "XOF", 1, 1), item("missing_at_provider", "REF-Y", "XOF", 5, None)])
    with rt.sessions() as session:
        page = reports.export(session, one, "html", tmp_path).read_text(encoding="utf-8")
    assert "1 exception of 2 items" in page and "1 exceptions" not in page


def test_html_and_xlsx_in_french(rt: Runtime, two_runs: tuple[int, int], tmp_path: Path) -> None:
    """PAYRECON_LANGUAGE=fr: the page's words, labels and the Detail column in French; the files for programs
    (CSV, JSON) and the XLSX columns keep the code names."""
    _, run_id = two_runs
    with rt.sessions() as session:
        files = reports.export_all(session, run_id, tmp_path, language="fr")
    page = next(p for p in files if p.suffix == ".html").read_text(encoding="utf-8")
    parser = _Page()
    parser.feed(page)
    text = "".join(parser.text)
    assert '<html lang="fr">' in page and "Rapprochement CinetPay du 2026-11-20" in text
    assert "9 écarts sur 11 lignes (1 régularisé par le rapprochement, 8 à traiter)." in text
    assert "Payé chez nous, inconnu de l'opérateur" in parser.cells
    assert "statut chez nous : succeeded ; chez l'opérateur : failed" in parser.cells
    assert "Reversements (4, 3 non rapprochés)" in text and "montant différent" in parser.cells
    assert "Exceptions" not in text and "Payouts" not in text
    wb = openpyxl.load_workbook(next(p for p in files if p.suffix == ".xlsx"))
    header = [c.value for c in wb["Exceptions"][1]]
    details = [r[header.index("detail")].value for r in wb["Exceptions"].iter_rows(min_row=2)]
    assert "l'opérateur le déclare 2 fois" in details and header[0] == "class"
    csv_file = next(p for p in files if p.suffix == ".csv" and "payouts" not in p.name)
    assert "l'opérateur" not in csv_file.read_text(encoding="utf-8")


def test_html_without_payouts(rt: Runtime, tmp_path: Path) -> None:
    clean(rt)
    run_id = make_run(rt, [item("matched", "REF-X", "XOF", 1, 1)])
    with rt.sessions() as session:
        page = reports.export(session, run_id, "html", tmp_path).read_text(encoding="utf-8")
    assert "Payouts (0, 0 not matched)</h2>\n<p>None reported for this day.</p>" in page


def test_html_escapes_markup(rt: Runtime, tmp_path: Path) -> None:
    clean(rt)
    run_id = make_run(rt, [item("amount_mismatch", "<script>alert(1)</script>", "XOF", 1, 2, detail='"><img src=x>')])
    with rt.sessions() as session:
        page = reports.export(session, run_id, "html", tmp_path).read_text(encoding="utf-8")
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_export_all_and_manifest(rt: Runtime, two_runs: tuple[int, int], tmp_path: Path) -> None:
    _, run_id = two_runs
    with rt.sessions() as session:
        paths = reports.export_all(session, run_id, tmp_path / "out")
    stem = f"recon_cinetpay_2026-11-20_run{run_id}"
    assert [p.name for p in paths] == [
        f"{stem}.csv", f"{stem}_payouts.csv", f"{stem}.xlsx", f"{stem}.json", f"{stem}.html", "manifest.json",
    ]  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)  # no leftovers
    manifest = json.loads(paths[-1].read_text(encoding="utf-8"))
    assert manifest["run_id"] == run_id
    assert [(f["format"], f["content"]) for f in manifest["files"]] == [
        ("csv", "items"), ("csv", "payouts"), ("xlsx", "run"), ("json", "run"), ("html", "run"),
    ]  # fmt: skip
    assert len(manifest["files"]) == len(paths) - 1
    for entry, path in zip(manifest["files"], paths, strict=False):
        data = path.read_bytes()
        assert entry["name"] == path.name
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("broken", ["html", "items", "both"])
def test_export_all_raises_the_error_of_either_thread_and_leaves_no_partial_file(
    rt: Runtime, two_runs: tuple[int, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    """On PostgreSQL the items' COPY and the other files are written side by side, the others in a thread with a
    connection of its own: a failure on either side is the error ``export_all`` raises once the other side is done
    (the COPY's, with the other's noted on it, when both fail); no temporary file stays, no manifest is written, and
    the second connection goes back to the pool."""
    from reconciliation.reports import pg as reports_pg

    threads: dict[str, str] = {}  # what failed -> in which thread
    html_failed = threading.Event()

    def fail(what: str) -> Any:
        def failing(*_args: Any, **_kw: Any) -> None:
            threads[what] = threading.current_thread().name
            if what == "html":
                html_failed.set()
            elif broken == "both":  # the COPY fails last, as a million items' would
                assert html_failed.wait(10)
            raise OSError(f"the {what} could not be written")

        return failing

    if broken in ("html", "both"):
        monkeypatch.setitem(reports._WRITERS, ("html", ""), fail("html"))
    if broken in ("items", "both"):
        monkeypatch.setattr(reports_pg, "copy_csv_and_json_items", fail("items"))
    _, run_id = two_runs
    out = tmp_path / "out"
    lent = rt.engine.pool.checkedout()
    with rt.sessions() as session, pytest.raises(OSError, match="could not be written") as raised:
        reports.export_all(session, run_id, out)
    assert rt.engine.pool.checkedout() == lent
    left = sorted(p.name for p in out.iterdir())
    assert "manifest.json" not in left and not [name for name in left if name.endswith(".part")], left
    if broken == "html":
        assert "the html" in str(raised.value) and threads["html"].startswith("reports")  # by the other thread
    else:
        assert "the items" in str(raised.value) and not threads["items"].startswith("reports")
    if broken == "both":
        assert raised.value.__notes__ == [
            "writing the other report files failed too: OSError('the html could not be written')"
        ]


def test_export_all_writes_its_files_one_after_another_when_the_pool_has_no_connection_to_spare(
    rt: Runtime, two_runs: tuple[int, int], tmp_path: Path
) -> None:
    """A pool of one connection, none lent beyond it: ``export_all`` does not wait for a second one (it would wait
    for its own), it writes the other files after the items' COPY, on its one connection."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    _, run_id = two_runs
    engine = create_engine(rt.engine.url, pool_size=1, max_overflow=0, pool_timeout=2)
    try:
        with sessionmaker(engine)() as session:
            paths = reports.export_all(session, run_id, tmp_path / "out")
    finally:
        engine.dispose()
    assert [p.name for p in paths][-1] == "manifest.json" and len(paths) == 6


def test_render_terminal(rt: Runtime, two_runs: tuple[int, int]) -> None:
    previous, run_id = two_runs
    with rt.sessions() as session:
        text = reports.render_terminal(session, run_id)
    assert f"Reconciliation run {run_id}: cinetpay, business day 2026-11-20" in text
    assert f"previous  run {previous}" in text
    assert "9 exceptions of 11 items" in text
    lines = text.splitlines()
    matched_xof = next(line for line in lines if line.startswith("XOF") and " matched " in line)
    assert matched_xof.split()[:4] == ["XOF", "matched", "1", "0"] and "15 000 XOF" in matched_xof
    duplicate = next(line for line in lines if line.startswith("XOF") and " duplicate " in line)
    assert duplicate.split()[:3] == ["XOF", "duplicate", "2"]
    assert f"Changes since run {previous}: 4" in text
    assert "REF-A1: matched -> amount_mismatch" in text
    assert "Exceptions (first 9 of 9):" in text
    exceptions = lines[lines.index("Exceptions (first 9 of 9):") + 3 :]
    assert [line.split()[0] for line in exceptions] == [
        "missing_at_provider", "amount_mismatch", "currency_mismatch", "status_mismatch", "missing_after_sla",
        "duplicate", "duplicate", "fee_variance", "missing_in_ledger",
    ]  # fmt: skip
    assert "REF-P1" in exceptions[0] and "(healed)" in exceptions[-1]
    assert "PO-SHORT: mismatch, 1 payment(s), paid 6000 vs net 6435 XOF" in text
    assert (
        f"PO-OK: matched, 2 payment(s), paid 70785 vs net 70785 XOF, posted (journal {journal_of(rt, 'PO-OK')})" in text
    )


def test_terminal_strips_control_characters(rt: Runtime) -> None:
    clean(rt)
    run_id = make_run(rt, [item("amount_mismatch", "REF-X", "XOF", 1, 2, detail="\x1b[2Jwiped")])
    with rt.sessions() as session:
        text = reports.render_terminal(session, run_id)
    assert "\x1b" not in text and "?[2Jwiped" in text
    assert "Changes: first run of this business day." in text


def test_streams_large_runs(rt: Runtime, tmp_path: Path) -> None:
    """More items than one server-side batch: every row comes out, once, in CSV and JSON."""
    clean(rt)
    n = reports.STREAM_BATCH * 2 + 7
    rows = [item("matched", f"R{i:06d}", "XOF", 100, 100) for i in range(n)]
    run_id = make_run(rt, rows)
    with rt.sessions() as session:
        csv_path = reports.export(session, run_id, "csv", tmp_path)
        json_path = reports.export(session, run_id, "json", tmp_path)
    with csv_path.open(encoding="utf-8", newline="") as fh:
        refs = [r["reference"] for r in csv.DictReader(fh)]
    assert len(refs) == n and refs == sorted(set(refs))
    assert len(json.loads(json_path.read_text(encoding="utf-8"))["items"]) == n


def test_the_report_copy_s_planner_settings_end_with_it(rt: Runtime, tmp_path: Path) -> None:
    """The parallel plan and the sort memory of the items' COPY are for that statement only, not the rest of the
    export's transaction (each parallel process would take that much memory again)."""
    clean(rt)
    run_id = make_run(rt, [item("matched", "R000001", "XOF", 100, 100)])
    names = ("work_mem", "parallel_setup_cost", "parallel_tuple_cost")
    with rt.sessions() as session:
        before = [session.execute(text(f"SHOW {name}")).scalar() for name in names]
        reports.export(session, run_id, "csv", tmp_path)
        assert [session.execute(text(f"SHOW {name}")).scalar() for name in names] == before


def test_unknown_run_and_format(rt: Runtime, tmp_path: Path) -> None:
    clean(rt)
    with rt.sessions() as session:
        with pytest.raises(reports.RunNotFoundError):
            reports.summary(session, 999_999)
        with pytest.raises(ValueError, match="unknown report format"):
            reports.export(session, 1, "pdf", tmp_path)


def test_xlsx_leaves_all_lines_out_above_its_size_limit(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean(rt)
    run_id = make_run(rt, [item("matched", f"REF-{i:02d}", "XOF", 5, 5) for i in range(4)])
    monkeypatch.setattr(reports, "XLSX_ALL_LINES", 3)
    with rt.sessions() as session:
        path = reports.export(session, run_id, "xlsx", tmp_path)
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["Summary", "Exceptions", "Payouts"]
    notes = [str(r[0].value) for r in wb["Summary"].iter_rows() if str(r[0].value).startswith("Note:")]
    assert len(notes) == 1 and "4 items, more than the 3" in notes[0] and "CSV" in notes[0]
    monkeypatch.setattr(reports, "XLSX_ALL_LINES", 4)
    with rt.sessions() as session:
        path = reports.export(session, run_id, "xlsx", tmp_path / "kept")
    assert openpyxl.load_workbook(path).sheetnames == ["Summary", "Exceptions", "Payouts", "All lines"]


# Text that CSV must quote or escape, that JSON must escape, that a spreadsheet would read as a formula,
# and amounts in currencies with and without decimals, negative, zero, unknown.
AWKWARD = [
    item("matched", 'a,b "quoted"', "XOF", 15000, 15000, fee=0, detail="line one\nline two"),
    item("amount_mismatch", "crlf\r\nin it", "USD", -5, 0, difference=5, detail='tab\there \\ back "q"'),
    item("duplicate", "=1+1", "EUR", 1, 100, provider_txn_id="-neg", detail="@at"),
    item("status_mismatch", "\tlead", "CDF", 123456789, 99, provider_status="+plus", detail="\rcr"),
    item("fee_variance", "ünïcödé — 日本", "GHS", 10, 20, fee=1, expected_fee=2, detail="\x01\x1f\x7f ctl"),
    item("missing_at_provider", "", "ZZZ", 700, None, detail=""),  # unknown currency: no major amount
    item("missing_in_ledger", None, "XOF", None, 800, healed=True, provider_txn_id="T,1"),
    item("currency_mismatch", 'odd ""', "XOF", 1000, None, provider_amount=200, provider_currency="USD"),
    item("matched", "last\n", "XAF", 0, 0, internal_currency="", detail='"'),
    item("matched", "\\.", "XOF", 1, 1),
    # Words outside the vocabularies PostgreSQL writes as they are (``reports_pg._WORDS``): each takes the general path.
    item('a "class",\nof old', "OLD-1", "xof", 5, 5, internal_status="=paid", provider_status="ok\\\x01"),
]


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 20])
def test_postgresql_writes_the_csv_and_json_items_byte_for_byte_as_python(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, block: int
) -> None:
    """On PostgreSQL the items of the CSV and JSON files are formatted by the server (``reports_pg``),
    each file by its own COPY or both by one (``export_all``): the same bytes as the Python writers,
    with quotes, newlines, formulas and currencies to trip on, blocks of the copy cut anywhere (within
    a row, a quoted field, a character), and no row."""
    from reconciliation.reports import pg as reports_pg

    clean(rt)
    monkeypatch.setattr(reports_pg, "BLOCK_BYTES", block)
    runs_ = [make_run(rt, AWKWARD), make_run(rt, [])]
    with rt.sessions() as session:
        assert reports_pg.usable(session)
        for run_id in runs_:
            for fmt in ("csv", "json"):
                server = reports.export(session, run_id, fmt, tmp_path / "server")
                with monkeypatch.context() as python:
                    python.setattr(reports_pg, "usable", lambda _session: False)
                    local = reports.export(session, run_id, fmt, tmp_path / "python")
                assert server.read_bytes() == local.read_bytes(), (fmt, run_id)
            # export_all writes the items CSV and the JSON from one COPY of the items.
            together = {p.name: p.read_bytes() for p in reports.export_all(session, run_id, tmp_path / str(run_id))}
            for fmt in ("csv", "json"):
                local = tmp_path / "python" / reports.file_name(reports._run(session, run_id), fmt)
                assert together[local.name] == local.read_bytes(), (fmt, run_id)
    with (tmp_path / "server" / local.name.replace(".json", ".csv")).open(newline="") as fh:
        assert len(list(csv.reader(fh))) == 1  # the empty run: its header only


# Text XlsxWriter would take for its own rich-text XML ("<r>…</r>"), written unescaped: the first breaks
# the file, the second changes what the cell says, the third puts a formula into another cell.
MARKUP = [
    "<r>&</r>",
    "<r><t>inj</t></r>",
    '<r><t>x</t></r></is></c><c r="C2" t="str"><f>HYPERLINK("http://evil.example","Open")</f><v>Open</v></c>'
    '<c r="O2" t="inlineStr"><is><r><t></t></r>',
]


def test_xlsx_writes_text_that_looks_like_spreadsheet_markup_as_text(rt: Runtime, tmp_path: Path) -> None:
    clean(rt)
    items = [item("missing_in_ledger", f"REF-{i}", "XOF", None, 500, detail=t) for i, t in enumerate(MARKUP)]
    items.append(item("missing_in_ledger", MARKUP[1], "XOF", None, 500, provider_txn_id=MARKUP[0]))
    run_id = make_run(rt, [*items, item("matched", "REF-OK", "XOF", 5, 5, provider_txn_id="")])
    with rt.sessions() as session:
        path = reports.export(session, run_id, "xlsx", tmp_path)
    wb = openpyxl.load_workbook(path)  # the first markup would make it unreadable
    for name in ("Exceptions", "All lines"):
        header = [c.value for c in wb[name][1]]
        rows = {r[header.index("reference")].value: r for r in wb[name].iter_rows(min_row=2)}
        assert [rows[f"REF-{i}"][header.index("detail")].value for i in range(3)] == MARKUP, name
        assert rows[MARKUP[1]][header.index("provider_txn_id")].value == MARKUP[0]
        assert all(c.data_type != "f" for row in wb[name].iter_rows() for c in row)
        assert wb[name]["C2"].value != "Open"
    # An empty text is an empty cell (as openpyxl wrote it), not an empty string.
    ok = next(r for r in wb["All lines"].iter_rows(min_row=2) if r[2].value == "REF-OK")
    assert ok[3].value is None and ok[13].value is None  # provider_txn_id "", a matched item's detail ""


def test_reports_keep_to_python_on_a_server_that_is_not_utf8(tmp_path: Path) -> None:
    """``ascii()`` of a character beyond ASCII fails in EUC_JP: such a server keeps the Python writers."""
    from sqlalchemy import create_engine

    from reconciliation.reports import pg as reports_pg
    from tests.conftest import PG_BASE
    from tests.helpers import scratch_database

    admin = create_engine(f"{PG_BASE}/postgres", isolation_level="AUTOCOMMIT")
    name = f"payrecon_eucjp_{hashlib.sha256(str(tmp_path).encode()).hexdigest()[:6]}"
    try:
        with admin.connect() as conn:
            conn.execute(
                text(f"CREATE DATABASE {name} ENCODING 'EUC_JP' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
            )
        engine = create_engine(f"{PG_BASE}/{name}", connect_args={"client_encoding": "utf8"})
        with engine.connect() as conn, pytest.raises(Exception, match="too large"):
            conn.exec_driver_sql("SELECT ascii('日本')").scalar()
        from sqlalchemy.orm import Session

        with Session(engine) as session:
            assert not reports_pg.usable(session)
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
    with scratch_database(PG_BASE, "payrecon_utf8") as url:
        engine = create_engine(url)
        with Session(engine) as session:
            assert reports_pg.usable(session)
        engine.dispose()


def test_xlsx_keeps_the_error_that_stopped_it_when_closing_fails_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import xlsxwriter  # type: ignore[import-untyped]

    from reconciliation.reports import xlsx

    def broken(_limit: int | None) -> Any:
        raise ValueError("the items could not be read")
        yield  # a generator

    close = xlsxwriter.Workbook.close

    def full_disk(self: Any) -> None:
        close(self)  # its temporary files closed, as a failure late in close leaves them
        raise OSError("no space left on device")

    monkeypatch.setattr(xlsxwriter.Workbook, "close", full_disk)
    summ = {"run": {"id": 1}, "counts": {"items": 1, "exceptions": 1, "healed": 0}, "totals": [], "payouts": []}
    with pytest.raises(ValueError, match="could not be read"):
        xlsx.write_xlsx(tmp_path / "r.xlsx", summ, broken, broken, max_rows=100)


def test_items_and_changes_are_listed_by_reference_in_byte_order_whatever_the_columns_collation(rt: Runtime) -> None:
    """Within a class, references sort as bytes (``reports_common.BYTE_ORDER``): upper case before lower case, on a
    server whose collation sorts letters as a dictionary does (the column made ICU's en-US here, in a transaction
    rolled back), in the streamed items, in each COPY of the CSV and JSON files, and in the changes since the
    previous run."""
    references = ["b-1", "B-2", "a-3", "A-4", "é-5", "e-6"]
    with rt.sessions() as session:
        if session.scalar(text("SELECT count(*) FROM pg_collation WHERE collname = 'en-US-x-icu'")) == 0:
            pytest.skip("this PostgreSQL has no ICU collations")
    previous = make_run(rt, [item("matched", ref, "XOF", 100, 100) for ref in references])
    run_id = make_run(rt, [item("amount_mismatch", ref, "XOF", 100, 90) for ref in references], previous=previous)
    with rt.sessions() as session, session.begin():
        session.execute(text('ALTER TABLE recon_items ALTER COLUMN reference TYPE varchar(100) COLLATE "en-US-x-icu"'))
        dictionary = list(session.scalars(text("SELECT DISTINCT reference FROM recon_items ORDER BY reference")))
        assert dictionary != sorted(references)  # the collation orders otherwise: the test means something
        streamed = [row.reference for row in reports.iter_items(session, run_id)]
        changed = [change["reference"] for change in reports.changes(session, run_id)]
        both_csv, both_json, csv_out, json_out = io.BytesIO(), io.BytesIO(), io.BytesIO(), io.BytesIO()
        reports.reports_pg.copy_csv_and_json_items(
            session, run_id, "cinetpay", DAY.isoformat(), csv_out=both_csv, json_out=both_json
        )
        reports.reports_pg.copy_csv_items(session, run_id, "cinetpay", DAY.isoformat(), csv_out)
        reports.reports_pg.copy_json_items(session, run_id, json_out)
        session.rollback()
    expected = sorted(references, key=lambda ref: ref.encode())
    assert streamed == expected and changed == expected
    for out in (both_csv, csv_out):
        assert [row[5] for row in csv.reader(io.StringIO(out.getvalue().decode()))] == expected
    for out in (both_json, json_out):
        lines = [line for line in out.getvalue().decode().split("\n") if line]
        assert [json.loads(line.rstrip(","))["reference"] for line in lines] == expected


def test_xlsx_item_rows_are_the_xml_xlsxwriter_writes_cell_by_cell(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``_Sheet.extend`` renders the item sheets' rows itself: the sheets' XML (and the formats' numbering) is byte
    for byte what XlsxWriter's own calls write, for text that needs escaping (XML, control characters, ``_xHHHH_``
    look-alikes, spaces at the edges, formula triggers), rows XlsxWriter must write itself (rich-text look-alikes, a
    text near Excel's cell limit) before, between and after rendered ones, empty cells, every number format (an
    unknown currency's minor units too), batches cut by their length, and an Exceptions sheet cut at the row limit."""
    import zipfile

    from reconciliation.reports import xlsx
    from reconciliation.reports.common import ItemRow

    plain = ["plain", "a & b < c > d", " lead", "trail ", "line\r\nbreak\ttab", "_x0041_ kept", "odd \ufffe",
             "=SUM(A1)", "+33 6", "é ü 日本", "\u00a0no-break", "ends\u2028", "nl\n", ""]  # fmt: skip
    own = [*MARKUP, "x" * 20_000]  # XlsxWriter's path

    def text(i: int) -> str:
        if i in (0, 1, 2_599) or 1_200 <= i < 1_260:  # the first rows, a run in the middle, the last row
            return own[i % len(own)]
        return plain[i % len(plain)]

    rows = []
    for i in range(2_600):
        t = text(i)
        currency = ["XOF", "USD", "ZZZ"][i % 3]
        rows.append(ItemRow(
            id=i, cls=["matched", "amount_mismatch", "missing_in_ledger"][i % 3], healed=i % 5 == 0,
            reference=f"REF-{i}" if i % 7 else t, payment_id=i, provider_txn_id=t if i % 2 else None,
            internal_status="succeeded", provider_status=None if i % 11 == 0 else "succeeded",
            internal_amount=None if i % 13 == 0 else 5_000 + i, internal_currency=currency,
            provider_amount=4_990 + i, provider_currency=currency, provider_lines=1,
            fee=None if i % 4 else 125, expected_fee=100 if i % 6 == 0 else None, difference=-10 if i % 2 else None,
            detail=t,
        ))  # fmt: skip

    def source(limit: int | None) -> Any:
        return iter(rows[:limit])

    def parts(path: Path) -> dict[str, bytes]:
        with zipfile.ZipFile(path) as z:
            return {n: z.read(n) for n in z.namelist() if n.startswith("xl/worksheets/") or n == "xl/styles.xml"}

    rendered = []
    row_xml = xlsx._row_xml

    def spy(*args: Any) -> str | None:
        xml = row_xml(*args)
        rendered.append(xml is not None)
        return xml

    monkeypatch.setattr(xlsx, "_row_xml", spy)
    counts = {"items": len(rows), "exceptions": len(rows), "healed": 0}
    for max_rows, sheets in ((100_000, 5), (2_000, 4)):  # every item in All lines; the Exceptions cut (no All lines)
        summ = {"run": {"id": 7, "provider": "cinetpay"}, "totals": [], "payouts": [], "counts": counts}
        xlsx.write_xlsx(tmp_path / "rendered.xlsx", summ, source, source, max_rows=max_rows)
        with monkeypatch.context() as cell_by_cell:
            cell_by_cell.setattr(xlsx._Sheet, "extend", lambda self, cells: [self.append(c) for c in cells])
            xlsx.write_xlsx(tmp_path / "by_cell.xlsx", summ, source, source, max_rows=max_rows)
        ours, theirs = parts(tmp_path / "rendered.xlsx"), parts(tmp_path / "by_cell.xlsx")
        assert ours.keys() == theirs.keys() and len(ours) == sheets
        for name, xml in theirs.items():
            assert ours[name] == xml, (max_rows, name)
        exceptions = min(len(rows), max_rows - 2) + (max_rows < 3_000)  # the cut sheet's last row says so
        assert theirs["xl/worksheets/sheet2.xml"].count(b"<row ") == 1 + exceptions
    assert sum(rendered) > 0.9 * len(rendered) and not all(rendered)  # rendered here, but for XlsxWriter's rows


def test_an_export_reads_the_changes_once_for_every_format(
    rt: Runtime, two_runs: tuple[int, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The JSON lists every change since the previous run and the HTML the first ones and how many: one reading of
    them (a re-run of a million-item day takes seconds a reading) serves both, in either thread of the export."""
    _, run_id = two_runs
    calls, html_threads = [], []
    changes, write_html = reports.changes, reports._WRITERS["html", ""]

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append((kwargs, threading.current_thread().name))
        return changes(*args, **kwargs)

    def html(*args: Any, **kwargs: Any) -> Any:
        html_threads.append(threading.current_thread().name)
        return write_html(*args, **kwargs)

    monkeypatch.setattr(reports, "changes", counted)
    monkeypatch.setitem(reports._WRITERS, ("html", ""), html)
    monkeypatch.setattr(reports, "HTML_EXCEPTIONS", 3)
    with rt.sessions() as session:
        files = reports.export_all(session, run_id, tmp_path)
    assert calls == [({}, threading.current_thread().name)]  # every change, once, by the export's own session
    assert html_threads and html_threads[0].startswith("reports")  # the HTML written beside the COPY, from them
    report = json.loads(next(p for p in files if p.suffix == ".json").read_text())
    assert [c["reference"] for c in report["changes"]] == [c["reference"] for c in EXPECTED_CHANGES]
    page = next(p for p in files if p.suffix == ".html").read_text()
    assert f"({len(EXPECTED_CHANGES)})</h2>" in page and "… and 1 more: see the JSON report." in page


def test_an_html_report_alone_reads_only_the_changes_it_shows(
    rt: Runtime, two_runs: tuple[int, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written alone, the HTML reads its first changes and counts the rest, as before ``Summarize``: a re-run of a
    day restated whole does not hold every change in memory for a page that shows 200."""
    _, run_id = two_runs
    readings = []
    select_changes = reports._changes_select

    def counted(*args: Any) -> Any:
        readings.append(args[1:])
        return select_changes(*args)

    monkeypatch.setattr(reports, "_changes_select", counted)
    monkeypatch.setattr(reports, "HTML_EXCEPTIONS", 3)
    with rt.sessions() as session:
        page = reports.export(session, run_id, "html", tmp_path).read_text()
        assert len(readings) == 1  # the first three and the count, from one reading
        assert reports.first_changes(session, run_id, 0) == ([], len(EXPECTED_CHANGES))
        shown, total = reports.first_changes(session, run_id, 2)
        assert (shown, total) == (reports.changes(session, run_id)[:2], len(EXPECTED_CHANGES))
    assert f"({len(EXPECTED_CHANGES)})</h2>" in page and "… and 1 more: see the JSON report." in page
