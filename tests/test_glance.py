"""The day at a glance (reconciliation.reports.glance, glance_render, ``payrecon report day``): its numbers against
the database, its charts' data, the page and workbook as people open them (English and French)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from openpyxl import load_workbook  # type: ignore[import-untyped]
from sqlalchemy import func, select, update

from reconciliation.models import Payment, PaymentStatus, ReconCase, ReconItem, StatementLine
from reconciliation.nightly import cases, runs
from reconciliation.reports import glance, glance_render
from tests.conftest import worker_env
from tests.helpers import new_reference
from tests.test_reconciliation import DAY, NOON, line, payment, policy
from worker.cli import main
from worker.runtime import Runtime

TZ = ZoneInfo("Africa/Abidjan")


@pytest.fixture
def reconciled(rt: Runtime) -> dict[str, Any]:
    """CinetPay and Wave reconciled for DAY (CinetPay with exceptions), an older open case, and an earlier day of
    payments for the trend."""
    refs = {n: new_reference() for n in ("ok1", "ok2", "failed", "missing", "short", "wave1", "wave2")}
    for name in ("ok1", "ok2"):
        payment(rt, refs[name], PaymentStatus.SUCCEEDED)
        line(rt, refs[name], fee=50)
    payment(rt, refs["failed"], PaymentStatus.FAILED)
    line(rt, refs["failed"], "failed")
    payment(rt, refs["missing"], PaymentStatus.SUCCEEDED, amount=7000)
    payment(rt, refs["short"], PaymentStatus.SUCCEEDED)
    line(rt, refs["short"], amount=4500)
    for name in ("wave1", "wave2"):
        payment(rt, refs[name], PaymentStatus.SUCCEEDED, provider="wave", amount=6500)
        line(rt, refs[name], provider="wave", amount=6500, fee=65)
    earlier = NOON - timedelta(days=3)
    old = new_reference()
    payment(rt, old, PaymentStatus.SUCCEEDED, at=earlier)
    runs.reconcile_stored(rt.sessions, "cinetpay", earlier.date(), policy(rt))
    cinetpay = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))
    wave = runs.reconcile_stored(rt.sessions, "wave", DAY, policy(rt))
    return {"refs": refs, "old": old, "runs": {"cinetpay": cinetpay, "wave": wave}}


def test_the_numbers_are_the_database_s(rt: Runtime, reconciled: dict[str, Any]) -> None:
    today = DAY + timedelta(days=5)
    with rt.sessions() as session:
        data = glance.day_glance(session, DAY, TZ, today=today)
        items = dict(
            session.execute(
                select(ReconItem.cls, func.count())
                .where(ReconItem.run_id.in_(reconciled["runs"].values()), ReconItem.cls != "matched")
                .group_by(ReconItem.cls)
            ).all()
        )
        open_listing = cases.listing(session, today)
        day_paid = session.scalar(
            select(func.sum(Payment.confirmed_amount)).where(
                Payment.provider == "cinetpay", Payment.status == PaymentStatus.SUCCEEDED,
                Payment.paid_at >= NOON - timedelta(hours=12), Payment.paid_at < NOON + timedelta(hours=12),
            )
        )  # fmt: skip
        reported = session.scalar(
            select(func.sum(StatementLine.amount)).where(
                StatementLine.business_date == DAY, StatementLine.status == "succeeded"
            )
        )
        stake = dict(
            session.execute(
                select(ReconCase.cls, func.sum(ReconCase.amount))
                .where(ReconCase.business_date == DAY)
                .group_by(ReconCase.cls)
            ).all()
        )
    cinetpay, wave = data["providers"]["cinetpay"], data["providers"]["wave"]
    assert (cinetpay["payments"], cinetpay["by_status"]) == (5, {"succeeded": 4, "failed": 1})
    assert cinetpay["paid"] == {"XOF": day_paid} == {"XOF": 5000 + 5000 + 7000 + 5000}
    assert cinetpay["success_rate"] == 0.8  # 4 of the 5 final payments
    assert cinetpay["matched_share"] == 0.6  # 3 of 5 items (2 paid, 1 failed on both sides)
    assert {e["class"]: e["count"] for e in cinetpay["exceptions"]} == {"missing_at_provider": 1, "amount_mismatch": 1}
    assert {e["class"]: e["at_stake"] for e in cinetpay["exceptions"]} == {
        "missing_at_provider": {"XOF": 7000}, "amount_mismatch": {"XOF": 500},
    }  # fmt: skip
    assert cinetpay["fees"] == {"XOF": 100} and wave["fees"] == {"XOF": 130}
    assert (wave["payments"], wave["success_rate"], wave["matched_share"], wave["exceptions"]) == (2, 1.0, 1.0, [])
    # The charts' data.
    charts = data["charts"]
    assert {r["class"]: r["count"] for r in charts["exceptions_by_class"]} == items
    assert {r["class"]: r["at_stake"]["XOF"] for r in charts["exceptions_by_class"]} == stake
    assert charts["days"][-1] == DAY.isoformat() and len(charts["days"]) == glance.TREND_DAYS
    assert charts["success_rate"]["cinetpay"][-1] == 0.8 and charts["success_rate"]["wave"][-1] == 1.0
    assert charts["success_rate"]["cinetpay"][-4] == 1.0  # the earlier day: one payment, paid
    assert charts["settled"]["XOF"]["ours"][-1] == day_paid + 2 * 6500
    assert charts["settled"]["XOF"]["theirs"][-1] == reported == 5000 + 5000 + 4500 + 2 * 6500
    # Every open case of every day, oldest first: the earlier day's first; the age buckets count them.
    assert [c["id"] for c in data["open_cases"]] == [c["id"] for c in open_listing]
    assert data["open_cases"][0]["reference"] == reconciled["old"] and data["open_cases"][0]["age_days"] == 8
    assert charts["open_by_age"] == {"0-1": {}, "2-7": {"high": 1, "medium": 1}, "8-30": {"high": 1}, "31+": {}}


def _svg_numbers(page: str) -> list[str]:
    return re.findall(r'<desc class="value">([^<]*)</desc>', page)


def test_the_page_and_the_workbook(rt: Runtime, reconciled: dict[str, Any], tmp_path: Path) -> None:
    with rt.sessions() as session:
        data = glance.day_glance(session, DAY, TZ, today=DAY + timedelta(days=5))
    files = glance_render.write_files(data, tmp_path, language="fr")
    assert [p.name for p in files] == [f"day_{DAY}.html", f"day_{DAY}.xlsx"]
    page = files[0].read_text()
    # Self-contained: no script, no link or asset from elsewhere (the SVG namespace is a name, not a fetch).
    assert "<script" not in page and "<link" not in page and "src=" not in page
    assert set(re.findall(r"https?://[^\"' )<]+", page)) <= {
        "http://www.w3.org/2000/svg",
        "http://www.w3.org/1999/xlink",
    }
    assert page.count("<svg") == 4
    # In French, with the labels and what to do.
    text = html.unescape(page)
    assert '<html lang="fr">' in page and "La journée en un coup d'œil" in text
    assert "Payé chez nous, inconnu de l'opérateur" in text and "Le réclamer à l'opérateur" in text
    assert "3 écarts ouverts" in text
    for case in data["open_cases"]:
        assert case["reference"] in page
    # The class chart's values are the day's counts.
    counts = [str(r["count"]) for r in data["charts"]["exceptions_by_class"]]
    assert set(counts) <= set(_svg_numbers(page))
    # The workbook: providers, charts (the spreadsheet's own), open cases, chart data.
    book = load_workbook(files[1])
    assert book.sheetnames == ["Opérateurs", "Graphiques", "Ouverts", "Données des graphiques"]
    assert len(book["Graphiques"]._charts) == 4
    rows = list(book["Ouverts"].iter_rows(values_only=True))
    assert [r[0] for r in rows[1:]] == [c["id"] for c in data["open_cases"]]
    assert rows[1][6] == 5000 and rows[1][2] == "Haute"  # the earlier day's missing payment, 5 000 XOF


@pytest.mark.skipif(shutil.which("ssconvert") is None, reason="needs Gnumeric's ssconvert (apt install gnumeric)")
def test_a_spreadsheet_program_opens_the_workbook(rt: Runtime, reconciled: dict[str, Any], tmp_path: Path) -> None:
    with rt.sessions() as session:
        data = glance.day_glance(session, DAY, TZ)
    (xlsx,) = glance_render.write_files(data, tmp_path, "xlsx")
    converted = subprocess.run(
        ["ssconvert", "-S", str(xlsx), str(tmp_path / "sheet.csv")], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert converted.returncode == 0, converted.stderr
    first = (tmp_path / "sheet.csv.0").read_text()
    assert "CinetPay" in first and "Wave" in first and "80.0 %" in first


@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")), reason="needs a headless Chromium"
)
def test_a_browser_renders_the_page(rt: Runtime, reconciled: dict[str, Any], tmp_path: Path) -> None:
    with rt.sessions() as session:
        data = glance.day_glance(session, DAY, TZ)
    (page,) = glance_render.write_files(data, tmp_path, "html")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    dumped = subprocess.run(
        [str(browser), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    assert dumped.stdout.count("<svg") == 4 and "The day at a glance" in dumped.stdout


def test_the_report_day_command(
    rt: Runtime, reconciled: dict[str, Any], pg_url: str, redis_url: str, sandbox_server: Any, tmp_path: Path
) -> None:
    env = worker_env(pg_url, redis_url, sandbox_server)
    cli = CliRunner()
    printed = cli.invoke(main, ["report", "day", "--date", DAY.isoformat(), "--json"], env=env)
    assert printed.exit_code == 0, printed.output
    data = json.loads(printed.output)
    assert set(data["providers"]) == {"cinetpay", "wave"} and data["business_date"] == DAY.isoformat()
    written = cli.invoke(main, ["report", "day", "--date", DAY.isoformat(), "--out", str(tmp_path)], env=env)
    assert written.exit_code == 0 and written.output.split() == [
        str(tmp_path / f"day_{DAY}.html"), str(tmp_path / f"day_{DAY}.xlsx"),
    ]  # fmt: skip
    nowhere = cli.invoke(main, ["report", "day", "--date", DAY.isoformat()], env=env)
    assert nowhere.exit_code == 2 and "--out DIR" in nowhere.output


def test_a_corrected_exception_leaves_the_day_s_amount_at_stake(rt: Runtime, reconciled: dict[str, Any]) -> None:
    """The amount at stake is the latest run's: an exception the provider corrected (its case resolved matched
    later by the re-run) is no longer counted, in the provider's row or in the day's chart."""
    with rt.sessions.begin() as session:
        session.execute(
            update(StatementLine).where(StatementLine.reference == reconciled["refs"]["short"]).values(amount=5000)
        )
    runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))
    with rt.sessions() as session:
        data = glance.day_glance(session, DAY, TZ)
    cinetpay = data["providers"]["cinetpay"]
    assert [(e["class"], e["count"], e["at_stake"]) for e in cinetpay["exceptions"]] == [
        ("missing_at_provider", 1, {"XOF": 7000}),
    ]
    assert [(r["class"], r["count"], r["open"], r["at_stake"]) for r in data["charts"]["exceptions_by_class"]] == [
        ("missing_at_provider", 1, 1, {"XOF": 7000}),
    ]


def test_the_report_reads_the_payments_of_every_provider_a_client_exists_for() -> None:
    """The day's payments are read provider by provider (``glance.PROVIDER_NAMES``, so that the business-time index
    serves them): a provider with a client but missing from the list would drop out of the report unseen."""
    from providers.cinetpay import CinetPayClient
    from providers.mtn_momo import MtnMomoClient
    from providers.orange_money import OrangeMoneyClient
    from providers.wave import WaveClient

    clients = {client.name for client in (CinetPayClient, MtnMomoClient, OrangeMoneyClient, WaveClient)}
    assert clients == set(glance.PROVIDER_NAMES)
