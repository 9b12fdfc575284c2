"""The ledger into accounting on real PostgreSQL: balances at the end of a business day, the general
journal export (CSV and XLSX) in the merchant's chart of accounts, and the chart mapping file.

The business time zone here is Africa/Douala (UTC+1, no daylight saving time): a journal posted at
23:30 local and one at 00:30 local the next day are both on the same UTC day, so only a computation in
the business zone puts them on different days.
"""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import openpyxl  # type: ignore[import-untyped]
import pytest
import redis
from click.testing import CliRunner, Result
from sqlalchemy import select, text

from providers.sandbox.client import SandboxClient
from reconciliation import accounting, ledger, migrate
from reconciliation.db import make_engine, session_factory, transaction
from reconciliation.models import Account, Entry, Journal, ReconRun
from reconciliation.nightly import runs
from tests.conftest import ROOT, worker_env
from tests.helpers import new_reference, registration
from worker import pipeline
from worker.cli import main
from worker.runtime import Runtime

ZONE = ZoneInfo("Africa/Douala")
DAY = date(2026, 11, 20)
NEXT = DAY + timedelta(days=1)
EXAMPLE_CHART = ROOT / "docs" / "ledger-chart.example.csv"


@pytest.fixture
def env(rt: Runtime, pg_url: str, redis_url: str, sandbox_server: Any) -> Iterator[dict[str, str]]:
    yield worker_env(pg_url, redis_url, sandbox_server, PAYRECON_TIMEZONE="Africa/Douala")
    client = redis.Redis.from_url(redis_url)
    client.delete("webhooks")  # nothing these tests do may reach the end-to-end tests' worker
    client.close()


def cli(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def local(day: date, hh: int, mm: int) -> datetime:
    return datetime.combine(day, time(hh, mm), tzinfo=ZONE)


def posted_at(rt: Runtime, journal_ids: Iterable[int], when: datetime) -> None:
    """Move journals to the time they would have been posted. Journals are append-only (a trigger
    refuses any UPDATE), so the test goes around the triggers, as only a test may."""
    with rt.engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(
            text("UPDATE ledger_journals SET created_at = :at WHERE id = ANY(:ids)"),
            {"at": when, "ids": list(journal_ids)},
        )


def journal_ids(rt: Runtime, **where: Any) -> list[int]:
    with rt.sessions() as session:
        return list(session.scalars(select(Journal.id).filter_by(**where).order_by(Journal.id)))


def settle(rt: Runtime, sandbox: SandboxClient, reference: str, amount: int) -> None:
    """A payment registered, paid at the provider and confirmed by its webhook: its settlement journal."""
    pipeline.register_payment(rt, registration(reference, amount=amount))
    sandbox.create_cinetpay(reference, amount)
    pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(reference))


@dataclass(frozen=True)
class Books:
    a: str  # settled on DAY at 10:00, its fee at 12:00
    b: str  # settled on DAY at 23:30, refunded on NEXT at 00:30
    payout: str  # paid out on NEXT at 09:00


@pytest.fixture
def books(rt: Runtime, sandbox: SandboxClient, env: dict[str, str]) -> Books:
    """Two days of real journals: settlements through the pipeline, a fee, a USD suspense, a refund
    through ``payrecon payments refund`` (a reversal) and a payout through the reconciliation's poster."""
    a, b = new_reference(), new_reference()
    settle(rt, sandbox, a, 5000)
    posted_at(rt, journal_ids(rt, kind="settlement"), local(DAY, 10, 0))
    with transaction(rt.sessions) as session:
        fee = ledger.post(  # a run's fees journal (of one payment here); the payment's share is its fee posting
            session, ledger.transfer(ledger.fees("cinetpay"), ledger.clearing("cinetpay"), 100, "XOF"),
            kind=runs.FEE, memo="cinetpay fees of 1 payment(s) (run 1)",
        )  # fmt: skip
        usd = ledger.post(
            session, ledger.transfer(ledger.clearing("wave"), ledger.SUSPENSE, 1250, "USD"), kind="suspense",
            memo="orphan",
        )  # fmt: skip
    posted_at(rt, [fee.id], local(DAY, 12, 0))
    posted_at(rt, [usd.id], local(DAY, 15, 0))
    settle(rt, sandbox, b, 15000)
    settlement_b = journal_ids(rt, kind="settlement")[-1]
    posted_at(rt, [settlement_b], local(DAY, 23, 30))
    refunded = cli(env, "payments", "refund", b, "--reason", "customer asked", "--by", "finance")
    assert refunded.exit_code == 0, refunded.output
    posted_at(rt, journal_ids(rt, kind="settlement_refund"), local(NEXT, 0, 30))
    with transaction(rt.sessions) as session:
        at = local(NEXT, 9, 0)
        run = ReconRun(
            provider="cinetpay", business_date=DAY, timezone=ZONE.key, window_start=at, window_end=at,
            trigger="manual", status="succeeded", started_at=at, counts={},
        )  # fmt: skip
        session.add(run)
        session.flush()
        payout = runs.post_payout(session, run.id, "cinetpay", "PO-77", amount=4900, currency="XOF")
        assert payout is not None
    posted_at(rt, [payout.id], local(NEXT, 9, 0))
    return Books(a, b, "PO-77")


# --------------------------------------------------------------------------- balances


def balances(env: dict[str, str], day: date) -> dict[tuple[str, str], dict[str, Any]]:
    result = cli(env, "ledger", "balances", "--as-of", day.isoformat(), "--json")
    assert result.exit_code == 0, result.output
    return {(row["account"], row["currency"]): row for row in json.loads(result.output)}


def assert_sum_to_zero(rows: dict[tuple[str, str], dict[str, Any]]) -> None:
    sums: dict[str, int] = defaultdict(int)
    for (_, currency), row in rows.items():
        sums[currency] += row["balance"]
        assert row["balance"] == row["debits"] - row["credits"]
    assert all(total == 0 for total in sums.values()), sums


def test_balances_at_the_end_of_each_business_day(books: Books, env: dict[str, str]) -> None:
    assert balances(env, DAY - timedelta(days=1)) == {}  # nothing posted yet: no account has a balance
    day = balances(env, DAY)
    assert_sum_to_zero(day)
    assert {key: row["balance"] for key, row in day.items()} == {
        # B's settlement at 23:30 local is in; its refund at 00:30 local the next day (23:30 UTC the same
        # UTC day) is not.
        ("provider_clearing:cinetpay", "XOF"): 5000 - 100 + 15000,
        ("revenue:subscriptions", "XOF"): -20000,
        ("fees:cinetpay", "XOF"): 100,
        ("provider_clearing:wave", "USD"): 1250,
        ("suspense", "USD"): -1250,
    }
    assert day["suspense", "USD"]["balance_major"] == "-12.50"
    assert day["revenue:subscriptions", "XOF"]["balance_major"] == "-20000"
    after = balances(env, NEXT)
    assert_sum_to_zero(after)
    assert {key: row["balance"] for key, row in after.items()} == {
        ("provider_clearing:cinetpay", "XOF"): 0,  # paid in, less the fee, the refund and the payout
        ("revenue:subscriptions", "XOF"): -5000,
        ("fees:cinetpay", "XOF"): 100,
        ("bank:cinetpay", "XOF"): 4900,
        ("provider_clearing:wave", "USD"): 1250,
        ("suspense", "USD"): -1250,
    }
    assert after["revenue:subscriptions", "XOF"]["debits"] == 15000  # the refund reversed B's revenue
    assert balances(env, NEXT + timedelta(days=400)) == after
    everything = json.loads(cli(env, "ledger", "balances", "--json").output)  # no --as-of: every journal
    assert {(r["account"], r["currency"]): r["balance"] for r in everything} == {
        key: row["balance"] for key, row in after.items()
    }


def test_balances_text_says_the_cutoff_and_formats_per_currency(books: Books, env: dict[str, str]) -> None:
    result = cli(env, "ledger", "balances", "--as-of", DAY.isoformat())
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == (
        "balances at the end of 2026-11-20 (Africa/Douala): journals posted before 2026-11-21 00:00 local, "
        "2026-11-20 23:00 UTC"
    )
    assert any(line.split()[:3] == ["suspense", "USD", "-1250"] and line.endswith("-12.50 USD") for line in lines)
    assert any(line.startswith("revenue:subscriptions") and line.endswith("-20 000 XOF") for line in lines)


def test_balances_refuse_a_bad_date(env: dict[str, str]) -> None:
    result = cli(env, "ledger", "balances", "--as-of", "2026-02-30")
    assert result.exit_code == 2
    assert "Invalid value for '--as-of'" in result.output


def test_balances_that_do_not_sum_to_zero_exit_1(books: Books, rt: Runtime, env: dict[str, str]) -> None:
    _entry_around_the_guards(rt)
    result = cli(env, "ledger", "balances", "--as-of", NEXT.isoformat())
    assert result.exit_code == 1
    assert "balances do not sum to zero: {'XOF': 7}" in result.output


def _entry_around_the_guards(rt: Runtime) -> int:
    """An entry added to the last journal by a writer with the ledger's triggers off; its journal id."""
    with rt.engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        journal_id, account_id = conn.execute(
            text("SELECT journal_id, account_id FROM ledger_entries WHERE currency = 'XOF' ORDER BY id DESC LIMIT 1")
        ).one()
        conn.execute(
            text(
                "INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency) "
                "VALUES (:j, :a, 'debit', 7, 'XOF')"
            ),
            {"j": journal_id, "a": account_id},
        )
    return int(journal_id)


def test_day_bounds_follow_the_zone() -> None:
    assert accounting.day_start(DAY, ZONE).isoformat() == "2026-11-19T23:00:00+00:00"
    assert accounting.day_end(DAY, ZONE).isoformat() == "2026-11-20T23:00:00+00:00"
    paris = ZoneInfo("Europe/Paris")  # a day of 25 hours: summer time ends on 2026-10-25
    length = accounting.day_end(date(2026, 10, 25), paris) - accounting.day_start(date(2026, 10, 25), paris)
    assert length == timedelta(hours=25)


# --------------------------------------------------------------------------- the export


def export(
    env: dict[str, str], out: Path, *extra: str, fmt: str = "csv", first: date = DAY, last: date = NEXT
) -> Result:
    return cli(
        env, "ledger", "export", "--from", first.isoformat(), "--to", last.isoformat(), "--format", fmt,
        "--out", str(out), *extra,
    )  # fmt: skip


def read_csv(path: Path) -> list[dict[str, str]]:
    raw = path.read_bytes()
    assert b"\r\n" in raw and not raw.startswith(b"\xef\xbb\xbf")  # plain UTF-8, CRLF
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))


def ledger_entries(rt: Runtime) -> list[tuple[int, str, int, int, str]]:
    """Every entry as (journal, account, debit, credit, currency), from the tables themselves."""
    with rt.sessions() as session:
        rows = session.execute(
            select(Entry.journal_id, Account.code, Entry.side, Entry.amount, Entry.currency)
            .join(Account, Account.id == Entry.account_id)
            .order_by(Entry.id)
        ).all()
    return [
        (j, code, amount if side == "debit" else 0, amount if side == "credit" else 0, cur)
        for j, code, side, amount, cur in rows
    ]


def assert_balanced(rows: list[dict[str, str]]) -> None:
    """Per journal and currency, and in total per currency: sum(debit) == sum(credit), in major and minor units."""
    by_journal: dict[tuple[str, str], list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    by_currency: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        sums = by_journal[row["journal_id"], row["currency"]]
        sums[0] += Decimal(row["debit"])
        sums[1] += Decimal(row["credit"])
        by_currency[row["currency"]][0] += int(row["debit_minor"])
        by_currency[row["currency"]][1] += int(row["credit_minor"])
    assert by_journal and all(debit == credit for debit, credit in by_journal.values()), by_journal
    assert all(debit == credit for debit, credit in by_currency.values()), by_currency


def test_csv_export_is_the_ledger_in_the_chart_balanced_per_journal(
    books: Books, rt: Runtime, env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "journal.csv"
    result = export(env, out, "--chart", str(EXAMPLE_CHART))
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    assert list(rows[0]) == [name for name, _ in accounting.GENERAL_JOURNAL_COLUMNS]
    assert_balanced(rows)
    assert [
        (int(r["journal_id"]), r["payrecon_account"], int(r["debit_minor"]), int(r["credit_minor"]), r["currency"])
        for r in rows
    ] == ledger_entries(rt)  # every entry, once, in posting order (which is also id order here)
    assert "wrote 12 entries of 6 journal(s) posted 2026-11-20 to 2026-11-21 (Africa/Douala)" in result.output
    assert "XOF: debit 40000 = credit 40000" in result.output and "USD: debit 12.50 = credit 12.50" in result.output

    def entry(kind: str, account: str) -> dict[str, str]:
        (found,) = [r for r in rows if r["kind"] == kind and r["payrecon_account"] == account]
        return found

    settlement_b = [r for r in rows if r["kind"] == "settlement" and r["reference"] == books.b]
    assert {r["date"] for r in settlement_b} == {"2026-11-20"}  # 23:30 local
    refund = entry("settlement_refund", "revenue:subscriptions")
    assert refund["date"] == "2026-11-21"  # 00:30 local, the same UTC day as the settlement
    assert refund["reference"] == books.b and refund["reverses_journal_id"] == settlement_b[0]["journal_id"]
    assert (refund["debit"], refund["credit"], refund["debit_minor"], refund["credit_minor"]) == (
        "15000",
        "0",
        "15000",
        "0",
    )
    assert (refund["account_code"], refund["account_name"]) == ("7061", "Services vendus - abonnements")
    fee = entry("fee", "fees:cinetpay")
    assert (fee["account_code"], fee["reference"], fee["memo"]) == ("6318", "", "cinetpay fees of 1 payment(s) (run 1)")
    payout = entry("payout", "bank:cinetpay")
    assert (payout["account_code"], payout["reference"], payout["debit"], payout["date"]) == (
        "5211",
        books.payout,
        "4900",
        "2026-11-21",
    )
    usd = entry("suspense", "suspense")
    assert (usd["account_code"], usd["credit"], usd["credit_minor"], usd["debit"], usd["reference"]) == (
        "4711",
        "12.50",
        "1250",
        "0.00",
        "",
    )
    assert entry("suspense", "provider_clearing:wave")["account_name"] == "Wave - compte marchand"


def test_export_takes_whole_business_days(books: Books, env: dict[str, str], tmp_path: Path) -> None:
    first_day = tmp_path / "day.csv"
    assert export(env, first_day, "--chart", str(EXAMPLE_CHART), last=DAY).exit_code == 0
    rows = read_csv(first_day)
    assert_balanced(rows)
    assert {r["date"] for r in rows} == {"2026-11-20"}
    assert {r["kind"] for r in rows} == {"settlement", "fee", "suspense"}  # not the refund of 00:30 the next day
    second_day = tmp_path / "next.csv"
    assert export(env, second_day, "--chart", str(EXAMPLE_CHART), first=NEXT).exit_code == 0
    assert {r["kind"] for r in read_csv(second_day)} == {"settlement_refund", "payout"}
    empty = tmp_path / "empty.csv"
    result = export(
        env, empty, "--chart", str(EXAMPLE_CHART), first=DAY - timedelta(days=9), last=DAY - timedelta(days=1)
    )
    assert result.exit_code == 0 and "wrote 0 entries of 0 journal(s)" in result.output
    assert read_csv(empty) == []


def test_xlsx_export_cell_by_cell(books: Books, rt: Runtime, env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "journal.xlsx"
    result = export(env, out, "--chart", str(EXAMPLE_CHART), fmt="xlsx")
    assert result.exit_code == 0, result.output
    wb = openpyxl.load_workbook(out)
    assert wb.sheetnames == ["General journal", "Totals"]
    ws = wb["General journal"]
    header = [c.value for c in ws[1]]
    assert header == [name for name, _ in accounting.GENERAL_JOURNAL_COLUMNS]
    assert all(c.font.b for c in ws[1]) and ws.freeze_panes == "A2"
    rows = [dict(zip(header, row, strict=True)) for row in ws.iter_rows(min_row=2)]
    assert len(rows) == 12
    assert [
        (r["journal_id"].value, r["payrecon_account"].value, r["debit_minor"].value, r["credit_minor"].value,
         r["currency"].value)
        for r in rows
    ] == ledger_entries(rt)  # fmt: skip
    for r in rows:
        assert r["date"].is_date and r["date"].number_format == "yyyy-mm-dd"
        for name in ("journal_id", "debit", "credit", "debit_minor", "credit_minor"):
            assert r[name].data_type == "n", (name, r[name].value)
        for name in ("kind", "memo", "account_code", "account_name", "payrecon_account", "currency", "reference"):
            assert r[name].data_type == "s" or r[name].value is None, (name, r[name].value)
    refund = next(r for r in rows if r["kind"].value == "settlement_refund" and r["debit"].value)
    assert refund["date"].value == datetime(2026, 11, 21)  # noqa: DTZ001 - a spreadsheet date is naive
    assert (refund["account_code"].value, refund["debit"].value, refund["credit"].value) == ("7061", 15000, 0)
    assert refund["debit"].number_format == "#,##0"
    assert refund["reference"].value == books.b and refund["reverses_journal_id"].data_type == "n"
    usd = next(r for r in rows if r["payrecon_account"].value == "provider_clearing:wave")
    assert (usd["debit"].value, usd["debit"].number_format, usd["debit_minor"].value) == (12.5, "#,##0.00", 1250)
    assert usd["account_code"].value == "5523"  # a code stays text: no number, no lost leading zero
    assert usd["reverses_journal_id"].value is None
    totals = [[c.value for c in row] for row in wb["Totals"].iter_rows(min_row=2, max_row=3)]
    assert totals == [["USD", 12.5, 12.5, 1250, 1250], ["XOF", 40000, 40000, 40000, 40000]]
    about = {row[0].value: row[1].value for row in wb["Totals"].iter_rows(min_row=5) if row[0].value}
    assert about["journals"] == "6" and about["timezone"] == "Africa/Douala" and about["unmapped kept"] == "none"


def test_unmapped_accounts_refuse_the_export_unless_kept(books: Books, env: dict[str, str], tmp_path: Path) -> None:
    chart = tmp_path / "chart.csv"
    kept_lines = [
        line for line in EXAMPLE_CHART.read_text(encoding="utf-8").splitlines() if not line.startswith("fees:")
    ]
    chart.write_text("\n".join(kept_lines) + "\n", encoding="utf-8")
    out = tmp_path / "journal.csv"
    refused = export(env, out, "--chart", str(chart))
    assert refused.exit_code == 1
    assert "1 account(s) with entries in the period are not in the chart: fees:cinetpay (XOF)" in refused.output
    assert not out.exists() and list(tmp_path.iterdir()) == [chart]  # nothing written, no temporary file left
    no_chart = export(env, out)
    assert no_chart.exit_code == 1
    assert "6 account(s) with entries in the period are not in the chart" in no_chart.output
    assert "set PAYRECON_LEDGER_CHART (or --chart)" in no_chart.output and not out.exists()
    from_env = export({**env, "PAYRECON_LEDGER_CHART": str(chart)}, out)
    assert from_env.exit_code == 1 and "fees:cinetpay (XOF)" in from_env.output  # the setting is the chart
    kept = export(env, out, "--chart", str(chart), "--unmapped", "keep")
    assert kept.exit_code == 0, kept.output
    assert "warning: kept 1 unmapped account(s) under their payrecon code: fees:cinetpay (XOF)" in kept.output
    rows = read_csv(out)
    assert_balanced(rows)
    fee = next(r for r in rows if r["payrecon_account"] == "fees:cinetpay")
    assert (fee["account_code"], fee["account_name"]) == ("fees:cinetpay", "")
    assert next(r for r in rows if r["payrecon_account"] == "bank:cinetpay")["account_code"] == "5211"


def test_a_currency_line_wins_over_the_any_currency_line(tmp_path: Path) -> None:
    path = tmp_path / "chart.csv"
    path.write_text(
        "payrecon_account,currency,code,name\nsuspense,,4711,Attente\nsuspense,USD,4712,Attente USD\n", encoding="utf-8"
    )
    chart = accounting.load_chart(path)
    assert chart.lookup("suspense", "XOF") == accounting.ChartAccount("4711", "Attente")
    assert chart.lookup("suspense", "USD") == accounting.ChartAccount("4712", "Attente USD")
    assert chart.lookup("revenue:subscriptions", "XOF") is None


def test_an_unbalanced_journal_is_never_exported(
    books: Books, rt: Runtime, env: dict[str, str], tmp_path: Path
) -> None:
    journal_id = _entry_around_the_guards(rt)
    for fmt in ("csv", "xlsx"):
        out = tmp_path / f"journal.{fmt}"
        result = export(env, out, "--chart", str(EXAMPLE_CHART), fmt=fmt)
        assert result.exit_code == 1
        assert f"journal {journal_id} does not balance: debit - credit = {{'XOF': 7}}" in result.output
        assert not out.exists() and list(tmp_path.iterdir()) == []
        out.write_text("an earlier export", encoding="utf-8")
        assert export(env, out, "--chart", str(EXAMPLE_CHART), fmt=fmt).exit_code == 1
        assert out.read_text(encoding="utf-8") == "an earlier export"  # a failed export replaces nothing
        out.unlink()


def test_text_that_a_spreadsheet_would_run_as_a_formula_is_defused(
    rt: Runtime, env: dict[str, str], tmp_path: Path
) -> None:
    with transaction(rt.sessions) as session:
        journal = ledger.post(session, ledger.transfer(ledger.clearing("wave"), ledger.SUSPENSE, 500, "XOF"),
                              kind="suspense", memo='=HYPERLINK("http://evil.example","x")')  # fmt: skip
    posted_at(rt, [journal.id], local(DAY, 8, 0))
    csv_out, xlsx_out = tmp_path / "j.csv", tmp_path / "j.xlsx"
    assert export(env, csv_out, "--chart", str(EXAMPLE_CHART), last=DAY).exit_code == 0
    assert {r["memo"] for r in read_csv(csv_out)} == {'\'=HYPERLINK("http://evil.example","x")'}
    assert export(env, xlsx_out, "--chart", str(EXAMPLE_CHART), fmt="xlsx", last=DAY).exit_code == 0
    memo = openpyxl.load_workbook(xlsx_out)["General journal"]["D2"]
    assert (memo.value, memo.data_type) == ('\'=HYPERLINK("http://evil.example","x")', "s")


def test_rows_come_in_posting_order(rt: Runtime, env: dict[str, str], tmp_path: Path) -> None:
    with transaction(rt.sessions) as session:
        first, second = (
            ledger.post(session, ledger.transfer(ledger.clearing("wave"), ledger.REVENUE, amount, "XOF"), kind=kind)
            for amount, kind in ((100, "settlement"), (200, "suspense"))
        )
    posted_at(rt, [first.id], local(DAY, 18, 0))
    posted_at(rt, [second.id], local(DAY, 9, 0))  # a journal with a later id, posted earlier in the day
    out = tmp_path / "j.csv"
    assert export(env, out, "--chart", str(EXAMPLE_CHART), last=DAY).exit_code == 0
    assert [int(r["journal_id"]) for r in read_csv(out)] == [second.id, second.id, first.id, first.id]


def test_an_export_larger_than_a_sheet_is_refused_in_xlsx(
    books: Books, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accounting, "XLSX_MAX_ROWS", 12)  # the header and 11 of the 12 entries
    out = tmp_path / "journal.xlsx"
    refused = export(env, out, "--chart", str(EXAMPLE_CHART), fmt="xlsx")
    assert refused.exit_code == 1
    assert "more than 11 entries, Excel's limit for one sheet: export a shorter period or use --format csv" in (
        refused.output
    )
    assert list(tmp_path.iterdir()) == []
    assert export(env, tmp_path / "journal.csv", "--chart", str(EXAMPLE_CHART)).exit_code == 0


def test_export_usage_errors(env: dict[str, str], tmp_path: Path) -> None:
    backwards = export(env, tmp_path / "x.csv", first=NEXT, last=DAY)
    assert backwards.exit_code == 2 and "--to 2026-11-20 is before --from 2026-11-21" in backwards.output
    bad_date = cli(env, "ledger", "export", "--from", "20/11/2026", "--to", "2026-11-21", "--format", "csv",
                   "--out", str(tmp_path / "x.csv"))  # fmt: skip
    assert bad_date.exit_code == 2 and "Invalid value for '--from'" in bad_date.output
    bad_format = export(env, tmp_path / "x.pdf", fmt="pdf")
    assert bad_format.exit_code == 2 and "'pdf' is not one of 'csv', 'xlsx'" in bad_format.output
    help_text = cli(env, "ledger", "export", "--help").output
    assert "PAYRECON_LEDGER_CHART" in help_text and "--unmapped [fail|keep]" in help_text
    assert "--as-of" in cli(env, "ledger", "balances", "--help").output


def test_an_invalid_chart_fails_the_export_naming_the_line(env: dict[str, str], tmp_path: Path) -> None:
    chart = tmp_path / "chart.csv"
    chart.write_text(
        "payrecon_account,code,name\nrevenue:subscriptions,7061,Ventes\nsuspense,,Attente\n", encoding="utf-8"
    )
    result = export(env, tmp_path / "x.csv", "--chart", str(chart))
    assert result.exit_code == 2  # bad input
    assert f"chart mapping {chart}:\n  line 3: code is empty" in result.output


def test_balances_and_export_on_the_demos_sqlite(tmp_path: Path) -> None:
    """The embedded demo's database (SQLite, timestamps stored as UTC text) answers the same way."""
    url = f"sqlite:///{tmp_path / 'demo.sqlite'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        with transaction(session_factory(engine)) as session:
            accounts = ledger.account_ids(session, [(ledger.clearing("wave"), "XOF"), (ledger.REVENUE, "XOF")])
            for journal_id, day, hh, amount in ((1, DAY, 23, 5000), (2, NEXT, 0, 700)):
                at = local(day, hh, 30).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")  # as SQLite's now() writes it
                session.execute(  # SQLite has no balance guard: a journal, then its entries, posted at a given time
                    text(
                        "INSERT INTO ledger_journals (id, kind, memo, created_at) VALUES (:id, 'settlement', '', :at)"
                    ),
                    {"id": journal_id, "at": at},
                )
                for code, side in ((ledger.clearing("wave"), "debit"), (ledger.REVENUE, "credit")):
                    session.execute(
                        text(
                            "INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency) "
                            "VALUES (:j, :a, :side, :amount, 'XOF')"
                        ),
                        {"j": journal_id, "a": accounts[code, "XOF"], "side": side, "amount": amount},
                    )
        env = {"DATABASE_URL": url, "PAYRECON_TIMEZONE": "Africa/Douala"}
        as_of = json.loads(cli(env, "ledger", "balances", "--as-of", DAY.isoformat(), "--json").output)
        assert {(r["account"], r["balance"]) for r in as_of} == {
            ("provider_clearing:wave", 5000),
            (ledger.REVENUE, -5000),
        }
        out = tmp_path / "j.csv"
        result = export(env, out, "--chart", str(EXAMPLE_CHART), fmt="csv")
        assert result.exit_code == 0, result.output
        rows = read_csv(out)
        assert_balanced(rows)
        assert [(r["date"], r["account_code"], r["debit"]) for r in rows if r["debit"] != "0"] == [
            ("2026-11-20", "5523", "5000"), ("2026-11-21", "5523", "700")
        ]  # fmt: skip
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- the chart file


@pytest.mark.parametrize(
    ("content", "problems"),
    [
        ("", ["no header line: expected payrecon_account,code,name (and optionally currency)"]),
        ("# only a comment\npayrecon_account,code,name\n", ["it maps no account"]),
        ("account,code,name\nsuspense,4711,Attente\n",
         ["line 1: the header must name the columns payrecon_account, code, name (and optionally currency), each "
          "once; got account, code, name"]),
        ("payrecon_account,code,name\n\n# comment\nsuspense,4711\n", ["line 4: 2 fields, the header has 3"]),
        ("payrecon_account,code,name,currency\nsuspense,4711,Attente,XYZ\nfees:wave,,,\n",
         ["line 2: currency 'XYZ' is not one payrecon knows (" + ", ".join(accounting.MINOR_UNIT_EXPONENT) + ")",
          "line 3: code is empty", "line 3: name is empty"]),
        ("payrecon_account,code,name\nsuspense,4711,Attente\nrevenue:subscriptions,7061,Ventes\nsuspense,4712,Autre\n",
         ["line 4: suspense (any currency) is already mapped on line 2"]),
        ("payrecon_account,code,name\nbank wave,5211,Banque\n",
         ["line 2: payrecon_account 'bank wave' is not an account code (no spaces, at most 100 characters)"]),
    ],
    ids=["empty", "no-rows", "bad-header", "short-row", "bad-fields", "duplicate", "not-a-code"],
)  # fmt: skip
def test_chart_problems_name_their_line(tmp_path: Path, content: str, problems: list[str]) -> None:
    path = tmp_path / "chart.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(accounting.ChartError) as caught:
        accounting.load_chart(path)
    assert caught.value.problems == problems
    assert str(caught.value).startswith(f"chart mapping {path}:\n  {problems[0]}")


def test_a_missing_chart_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(accounting.ChartError, match=r"cannot read it: .*No such file"):
        accounting.load_chart(tmp_path / "nope.csv")


def test_the_example_chart_maps_every_account_payrecon_posts() -> None:
    chart = accounting.load_chart(EXAMPLE_CHART)
    accounts = [ledger.REVENUE, ledger.SUSPENSE]
    for provider in ("cinetpay", "mtn_momo", "orange_money", "wave"):
        accounts += [ledger.clearing(provider), ledger.fees(provider), ledger.bank(provider)]
    assert [a for a in accounts for currency in ("XOF", "XAF", "USD") if chart.lookup(a, currency) is None] == []
    assert chart.lookup(ledger.clearing("orange_money"), "XOF") == accounting.ChartAccount(
        "5521", "Orange Money - compte marchand"
    )


# --------------------------------------------------------------------------- streaming

MANY = 10_000  # journals of two entries: 20,000 rows


def _many_journals(rt: Runtime, count: int = MANY) -> None:
    with transaction(rt.sessions) as session:  # set-wise: a few statements (ledger.POST_CHUNK journals each)
        ledger.post_many(
            session,
            [
                ledger.NewJournal(
                    ledger.transfer(ledger.clearing("wave"), ledger.REVENUE, 100 + n, "XOF"),
                    kind="settlement",
                    memo=f"bulk {n}",
                )
                for n in range(count)
            ],
        )
    posted_at(rt, journal_ids(rt), local(DAY, 12, 0))


def test_the_export_reads_through_a_server_side_cursor(rt: Runtime) -> None:
    _many_journals(rt)
    chart = accounting.Chart({(ledger.clearing("wave"), None): accounting.ChartAccount("5523", "Wave"),
                              (ledger.REVENUE, None): accounting.ChartAccount("7061", "Ventes")})  # fmt: skip
    period = accounting.Period(DAY, DAY, ZONE)
    with rt.sessions() as session:
        lines = accounting.iter_journal(session, period.start, period.end, ZONE, chart)
        first = next(lines)
        # The first row came while the query is still open on the server: a cursor of this session.
        assert session.execute(text("SELECT count(*) FROM pg_cursors")).scalar_one() == 1
        assert (first.payrecon_account, first.debit, first.account_code) == ("provider_clearing:wave", 100, "5523")
        assert sum(1 for _ in lines) == 2 * MANY - 1
        assert session.execute(text("SELECT count(*) FROM pg_cursors")).scalar_one() == 0


#: CSV: 20,000 entries. XLSX: 4,000, because tracemalloc makes openpyxl's writer six times slower (30 s
#: for 20,000); streamed, its peak stays under 3 MB either way, a normal workbook's was 100 MB at 20,000.
@pytest.mark.parametrize(("fmt", "journals"), [("csv", MANY), ("xlsx", 2_000)])
def test_a_large_export_keeps_memory_flat(rt: Runtime, tmp_path: Path, fmt: str, journals: int) -> None:
    _many_journals(rt, journals)
    chart = accounting.Chart({(ledger.clearing("wave"), None): accounting.ChartAccount("5523", "Wave"),
                              (ledger.REVENUE, None): accounting.ChartAccount("7061", "Ventes")})  # fmt: skip
    out = tmp_path / f"big.{fmt}"
    with rt.sessions() as session:
        tracemalloc.start()
        try:
            totals, kept = accounting.export(session, out, fmt, accounting.Period(DAY, DAY, ZONE), chart)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert (totals.entries, totals.journals, kept) == (2 * journals, journals, [])
    assert totals.debit == totals.credit == {"XOF": sum(100 + n for n in range(journals))}
    # Held at once, the rows take more: 10.5 MB for 20,000 rows as Python objects, 20 MB for 4,000 rows
    # as the cells of a normal workbook; streamed, the export holds one batch of the cursor (< 3 MB).
    assert peak < 6_000_000, f"peak {peak / 1e6:.1f} MB"
