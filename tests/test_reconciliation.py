"""Nightly reconciliation on real PostgreSQL, end to end: every class, healing a lost webhook, refunds,
fees, payouts, statement imports. The modules' own tests: tests/test_matching.py (what a reference is
classified as, payouts matched), tests/test_runs.py (a run's day, re-runs, how it is closed and measured)."""

from __future__ import annotations

import hashlib
import itertools
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import IntegrityError

from providers.sandbox.client import SandboxClient
from reconciliation import ledger, migrate, payments, views
from reconciliation.db import make_engine, session_factory
from reconciliation.models import (
    Account,
    Entry,
    FeePosting,
    FlagKind,
    Journal,
    Payment,
    PaymentStatus,
    PayoutPosting,
    ReconItem,
    ReconRun,
    StatementImport,
    StatementImportDay,
    StatementLine,
    SubscriptionGrant,
)
from reconciliation.nightly import runs
from reconciliation.statements.files import StatementError, import_file
from tests.helpers import new_reference, registration
from worker import nightly, pipeline
from worker.runtime import Runtime

DAY = date(2026, 11, 20)
NOON = datetime(2026, 11, 20, 12, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


def policy(rt: Runtime, **over: Any) -> runs.Policy:
    base = runs.Policy(tz=ZoneInfo("Africa/Abidjan"), sla=3600, recheck=rt.context("cinetpay").policy)
    return runs.Policy(**{**{f: getattr(base, f) for f in base.__slots__}, **over})


def payment(rt: Runtime, ref: str, status: PaymentStatus, *, amount: int = 5000, currency: str = "XOF",
            at: datetime = NOON, provider: str = "cinetpay") -> int:  # fmt: skip
    pipeline.register_payment(rt, registration(ref, amount=amount, currency=currency, provider=provider,
                                               created_at=at.isoformat()))  # fmt: skip
    with rt.sessions() as session, session.begin():
        row = session.scalars(select(Payment).where(Payment.reference == ref)).one()
        row.status = status
        row.created_at = at
        if status is PaymentStatus.SUCCEEDED:
            row.confirmed_amount, row.confirmed_currency, row.paid_at, row.settled = amount, currency, at, True
        return row.id


def line(
    rt: Runtime, ref: str | None, status: str = "succeeded", *, amount: int = 5000, currency: str = "XOF",
    txn: str | None = None, fee: int | None = None, at: datetime = NOON, provider: str = "cinetpay",
    payout: str | None = None,
) -> None:  # fmt: skip
    with rt.sessions() as session, session.begin():
        session.execute(insert(StatementLine), [{
            "provider": provider, "business_date": at.date(), "source": "file", "reference": ref, "status": status,
            "amount": amount, "currency": currency, "fee": fee, "occurred_at": at,
            "provider_txn_id": txn or f"T-{new_reference()}", "payout_id": payout, "raw": "",
        }])  # fmt: skip


def classes(rt: Runtime, run_id: int) -> dict[str | None, str]:
    with rt.sessions() as session:
        return dict(session.execute(select(ReconItem.reference, ReconItem.cls).where(ReconItem.run_id == run_id)).all())


@pytest.mark.parametrize("sessions", [2, 1, 3])
def test_every_class(rt: Runtime, sessions: int) -> None:
    """Classified side by side in ``sessions`` shares of the references, or in one: the same classes."""
    refs = {name: new_reference() for name in (
        "matched", "lost", "unknown", "missing_at_provider", "amount", "currency", "status", "duplicate",
        "fee", "sla", "failed_both")}  # fmt: skip
    payment(rt, refs["matched"], PaymentStatus.SUCCEEDED)
    line(rt, refs["matched"], fee=50)
    payment(rt, refs["lost"], PaymentStatus.PENDING)
    line(rt, refs["lost"])
    line(rt, refs["unknown"])
    payment(rt, refs["missing_at_provider"], PaymentStatus.SUCCEEDED)
    payment(rt, refs["amount"], PaymentStatus.SUCCEEDED)
    line(rt, refs["amount"], amount=4000)
    payment(rt, refs["currency"], PaymentStatus.SUCCEEDED)
    line(rt, refs["currency"], currency="XAF")
    payment(rt, refs["status"], PaymentStatus.SUCCEEDED)
    line(rt, refs["status"], "failed")
    payment(rt, refs["duplicate"], PaymentStatus.SUCCEEDED)
    line(rt, refs["duplicate"])
    line(rt, refs["duplicate"])
    payment(rt, refs["fee"], PaymentStatus.SUCCEEDED)
    line(rt, refs["fee"], fee=90)  # 1 % of 5000 is 50
    payment(rt, refs["sla"], PaymentStatus.PENDING, at=NOON - timedelta(hours=2))
    payment(rt, refs["failed_both"], PaymentStatus.FAILED)
    line(rt, refs["failed_both"], "failed")
    run_id = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt, fee_bps=100, sessions=sessions))
    assert classes(rt, run_id) == {
        refs["matched"]: "matched", refs["lost"]: "missing_in_ledger", refs["unknown"]: "missing_in_ledger",
        refs["missing_at_provider"]: "missing_at_provider", refs["amount"]: "amount_mismatch",
        refs["currency"]: "currency_mismatch", refs["status"]: "status_mismatch", refs["duplicate"]: "duplicate",
        refs["fee"]: "fee_variance", refs["sla"]: "missing_after_sla", refs["failed_both"]: "matched",
    }  # fmt: skip
    with rt.sessions() as session:
        run = session.get(ReconRun, run_id)
        assert run is not None and run.status == "succeeded" and run.counts["missing_in_ledger"] == 2
        lost = session.scalars(select(Payment).where(Payment.reference == refs["lost"])).one()
        unknown = session.scalars(select(Payment).where(Payment.reference == refs["unknown"])).one()
        healed = session.scalars(select(ReconItem.healed).where(ReconItem.reference == refs["lost"])).one()
        flags = {f.kind for f in lost.flags}
        balances = {b.account: b.balance for b in ledger.balances(session)}
    assert healed and lost.status is PaymentStatus.SUCCEEDED and lost.settled and FlagKind.HEALED in flags
    assert unknown.is_orphan and unknown.status is PaymentStatus.SUCCEEDED  # unknown money: suspense
    assert balances["fees:cinetpay"] == 50 + 90  # fees of matched and fee-variance payments, posted once
    assert balances["suspense"] == -5000


def test_a_lost_webhook_is_healed_end_to_end_from_the_status_api(rt: Runtime, sandbox: SandboxClient) -> None:
    """No callback ever came; the janitor gave up; the nightly run asks CinetPay and grants access."""
    ref = new_reference()
    sandbox.create_cinetpay(ref, 5000, fate="accepted")
    today = datetime.now(rt.settings.timezone).date()
    pipeline.register_payment(rt, registration(ref))
    run_id = nightly.run_day(rt, "cinetpay", today)
    assert classes(rt, run_id)[ref] == "missing_in_ledger"
    with rt.sessions() as session:
        p = session.scalars(select(Payment).where(Payment.reference == ref)).one()
        grant = session.scalars(select(SubscriptionGrant)).one()
    assert p.status is PaymentStatus.SUCCEEDED and grant.days == 30
    assert sandbox.get_cinetpay(ref)["check_count"] == 1


@pytest.mark.parametrize("provider", ["cinetpay", "mtn_momo", "orange_money", "wave"])
def test_documented_sample_statements_import(rt: Runtime, provider: str) -> None:
    with rt.sessions() as session, session.begin():
        result = import_file(session, provider, ROOT / "docs" / "statements" / f"{provider}.csv",
                             business_tz=ZoneInfo("Africa/Abidjan"))  # fmt: skip
    assert result.rows >= 2 and result.days[0] == date(2026, 11, 21)
    with rt.sessions() as session:
        lines = session.scalars(select(StatementLine).where(StatementLine.provider == provider)).all()
    assert {ln.status for ln in lines} >= {"succeeded", "failed"}
    assert all(isinstance(ln.amount, int) for ln in lines)


def test_statement_import_reports_bad_rows_and_imports_nothing(rt: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "wave.csv"
    path.write_text(
        "client_reference,transaction_id,timestamp,amount,currency,fee,payment_status\n"
        "CR-1,T1,2026-11-21T08:30:00Z,6500,XOF,65,succeeded\n"
        "CR-2,T2,yesterday,6500,XOF,65,succeeded\n"
        "CR-3,T3,2026-11-21T08:31:00Z,65.5,XOF,65,succeeded\n"
        "CR-4,T4,2026-11-21T08:32:00Z,6500,ZZZ,65,succeeded\n"
        "CR-5,T5,2026-11-21T08:33:00Z,6500,XOF,65,lost\n"
        "CR-6,T6,2026-11-21T08:34:00Z,6500\n",
        encoding="utf-8",
    )
    with pytest.raises(StatementError) as info, rt.sessions() as session, session.begin():
        import_file(session, "wave", path, business_tz=ZoneInfo("Africa/Abidjan"))
    assert [n for n, _ in info.value.errors] == [3, 4, 5, 6, 7]
    text = str(info.value)
    assert "line 3: time 'yesterday'" in text and "line 5: unknown currency 'ZZZ'" in text
    assert "line 6: unknown status 'lost'" in text and "line 7: 4 fields, the header has 7" in text
    with rt.sessions() as session:
        assert session.scalars(select(StatementLine)).all() == []  # whole or nothing
        assert session.scalars(select(StatementImport)).all() == []


def test_statement_import_refuses_missing_columns_and_the_same_file_twice(rt: Runtime, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("order_id,amount\nORD-1,6500\n", encoding="utf-8")
    with pytest.raises(StatementError, match="missing column"), rt.sessions() as session, session.begin():
        import_file(session, "orange_money", bad, business_tz=ZoneInfo("UTC"))
    sample = ROOT / "docs" / "statements" / "orange_money.csv"
    with rt.sessions() as session, session.begin():
        import_file(session, "orange_money", sample, business_tz=ZoneInfo("UTC"))
    with pytest.raises(StatementError, match="already imported"), rt.sessions() as session, session.begin():
        import_file(session, "orange_money", sample, business_tz=ZoneInfo("UTC"))


def test_wave_listing_over_several_pages_with_fees(rt: Runtime, sandbox: SandboxClient) -> None:
    """Wave's /v1/transactions, cursor-paginated (50 a page in the sandbox), is the source of truth."""
    today = datetime.now(rt.settings.timezone).date()
    refs = [new_reference("CR") for _ in range(120)]
    for n, ref in enumerate(refs):
        state = sandbox.create("wave", reference=ref, amount=6500, currency="XOF", fate="accepted")
        reg = registration(ref, provider="wave", amount=6500, plan="coko-premium-monthly", account=f"reader-{n}")
        pipeline.register_payment(rt, {**reg, "provider_data": state["provider_data"]})
        if n % 2 == 0:  # half the webhooks arrive; the other half are lost
            pipeline.ingest_webhook(rt, sandbox.notification("wave", ref))
    run_id = nightly.run_day(rt, "wave", today)
    found = classes(rt, run_id)
    assert len(found) == 120
    assert sorted(set(found.values())) == ["matched", "missing_in_ledger"]
    assert sum(1 for c in found.values() if c == "missing_in_ledger") == 60
    with rt.sessions() as session:
        settled = session.scalars(select(Payment).where(Payment.provider == "wave", Payment.settled)).all()
        balances = {b.account: b.balance for b in ledger.balances(session)}
    assert len(settled) == 120  # the lost webhooks healed: every reader has access
    assert balances["fees:wave"] == 120 * 65  # Wave's 1 % fee, from its listing
    assert balances["provider_clearing:wave"] == 120 * (6500 - 65)  # what Wave owes us


def test_listed_references_that_cannot_be_ours_are_kept_apart_and_missing_in_the_ledger(
    rt: Runtime, sandbox: SandboxClient
) -> None:
    """Wave takes client references of up to 255 characters, and any character; ours have at most 100, of a few
    kinds. Paid ones that cannot be ours (two long ones sharing their start, one with a NUL) are no payments of
    ours: the day's listing still loads (it failed whole on the database), each line keeps its reference cut or
    mended (``storable``: an ellipsis and a hash of the whole), two stay two, none matches one of ours, and the
    run reports them."""
    today = datetime.now(rt.settings.timezone).date()
    ours = new_reference("CR")
    state = sandbox.create("wave", reference=ours, amount=6500, currency="XOF", fate="accepted")
    reg = registration(ours, provider="wave", amount=6500, plan="coko-premium-monthly", account="reader-long")
    pipeline.register_payment(rt, {**reg, "provider_data": state["provider_data"]})
    pipeline.ingest_webhook(rt, sandbox.notification("wave", ours))
    theirs = ["X" * 150, "X" * 149 + "Y", "ab\u0000cd"]
    for reference in theirs:  # another integration of the merchant's Wave account opens checkouts, and they are paid
        created = requests.post(
            f"{rt.settings.wave.api_url}/v1/checkout/sessions",
            json={"amount": "6500", "currency": "XOF", "client_reference": reference,
                  "success_url": "https://example.com/ok", "error_url": "https://example.com/no"},
            headers={"Authorization": f"Bearer {rt.settings.wave.api_key}"},
            timeout=10,
        )  # fmt: skip
        assert created.status_code == 200, created.text
        sandbox.set_status("wave", reference, "succeeded")
    run_id = nightly.run_day(rt, "wave", today)
    kept = [
        "X" * 89 + "\u2026" + hashlib.sha256(theirs[0].encode()).hexdigest()[:10],
        "X" * 89 + "\u2026" + hashlib.sha256(theirs[1].encode()).hexdigest()[:10],
        "ab\ufffdcd",
    ]
    assert classes(rt, run_id) == {ours: "matched"} | {reference: "missing_in_ledger" for reference in kept}
    with rt.sessions() as session:
        lines = session.scalars(select(StatementLine).where(StatementLine.reference.in_(kept))).all()
    assert len(lines) == 3 and all(line.source == "listing" for line in lines)
    assert any(theirs[0] in line.raw for line in lines)  # the whole entry, as Wave sent it


def _wave_payments(rt: Runtime, sandbox: SandboxClient, n: int) -> list[str]:
    """``n`` Wave payments of today, paid at the sandbox, registered and notified: their references."""
    refs = [new_reference("CR") for _ in range(n)]
    for k, ref in enumerate(refs):
        state = sandbox.create("wave", reference=ref, amount=6500, currency="XOF", fate="accepted")
        reg = registration(ref, provider="wave", amount=6500, plan="coko-premium-monthly", account=f"reader-{k}")
        pipeline.register_payment(rt, {**reg, "provider_data": state["provider_data"]})
        pipeline.ingest_webhook(rt, sandbox.notification("wave", ref))
    return refs


def test_wave_reconciles_from_its_imported_statement_rather_than_its_listing(
    rt: Runtime, sandbox: SandboxClient, tmp_path: Path
) -> None:
    """A statement file finance imported for the day is Wave's word for it, as at the other providers:
    the listing is not asked again, and the lines it stored for the day before are dropped."""
    today = datetime.now(rt.settings.timezone).date()
    refs = _wave_payments(rt, sandbox, 2)
    from_listing = nightly.run_day(rt, "wave", today)
    assert classes(rt, from_listing) == {refs[0]: "matched", refs[1]: "matched"}
    when = datetime.now(UTC).isoformat()
    statement = tmp_path / "wave.csv"
    statement.write_text(
        "client_reference,transaction_id,timestamp,amount,currency,fee,payment_status,payout_id\n"
        f"{refs[0]},T_FILE1,{when},6500,XOF,65,succeeded,\n"
        f"{refs[1]},T_FILE2,{when},6000,XOF,60,succeeded,\n",  # the portal says 6 000: not what the listing says
        encoding="utf-8",
    )
    with rt.sessions() as session, session.begin():
        import_file(session, "wave", statement, business_tz=rt.settings.timezone)
    from_file = nightly.run_day(rt, "wave", today, trigger="rerun")
    assert classes(rt, from_file) == {refs[0]: "matched", refs[1]: "amount_mismatch"}  # once each: no duplicate
    with rt.sessions() as session:
        sources = session.scalars(select(StatementLine.source).where(StatementLine.provider == "wave")).all()
        txn_ids = session.scalars(select(ReconItem.provider_txn_id).where(ReconItem.run_id == from_file)).all()
    assert sorted(sources) == ["file", "file"]
    assert sorted(txn_ids) == ["T_FILE1", "T_FILE2"]


def test_a_file_s_payout_row_alone_on_a_day_leaves_that_day_s_payments_to_the_listing(
    rt: Runtime, sandbox: SandboxClient, tmp_path: Path
) -> None:
    """Yesterday's statement file carries the payout of yesterday's payments, paid this morning (as Wave's sample
    does): today still reconciles from the listing. Before, that one row made the file today's word, the listing was
    not asked and its lines were dropped, and every payment of today was missing at the provider."""
    today = datetime.now(rt.settings.timezone).date()
    refs = _wave_payments(rt, sandbox, 2)
    yesterday = datetime.now(UTC) - timedelta(days=1)
    payout = f"PO-{new_reference('X')}"
    statement = tmp_path / "wave-yesterday.csv"
    statement.write_text(
        "client_reference,transaction_id,timestamp,amount,currency,fee,payment_status,payout_id\n"
        f"{new_reference('CR')},T_Y1,{yesterday.isoformat()},6500,XOF,65,succeeded,{payout}\n"
        f",,{datetime.now(UTC).isoformat()},6435,XOF,0,payout,{payout}\n",  # paid out today
        encoding="utf-8",
    )
    with rt.sessions() as session, session.begin():
        import_file(session, "wave", statement, business_tz=rt.settings.timezone)
    run_id = nightly.run_day(rt, "wave", today)
    assert classes(rt, run_id) == {refs[0]: "matched", refs[1]: "matched"}
    with rt.sessions() as session:
        sources = session.execute(
            select(StatementLine.source, StatementLine.status)
            .where(StatementLine.provider == "wave", StatementLine.business_date == today)
        ).all()  # fmt: skip
    assert sorted(sources) == [("file", "payout"), ("listing", "succeeded"), ("listing", "succeeded")]


def test_statement_errors_found_by_the_database_path_name_their_lines(rt: Runtime, tmp_path: Path) -> None:
    """Every row has its fields (COPY accepts the file): PostgreSQL validates every row in SQL."""
    path = tmp_path / "cinetpay.csv"
    path.write_text(
        "transaction_id,operator_id,payment_date,amount,currency,fees,status\n"
        "TXN-1,OP1,2026-11-21 10:00:00,5000,XOF,0,ACCEPTED\n"
        "TXN-2,OP2,2026-11-21 10:00:00,50.5,XOF,0,ACCEPTED\n"
        "TXN-3,OP3,2026-11-21 10:00:00,5000,EUR,0,PAID\n"
        "TXN-4,OP4,21/11/2026,5000,XOF,0,ACCEPTED\n"
        ",OP5,2026-11-21 10:00:00,5000,XOF,0,ACCEPTED\n"
        "TXN-6,OP6,2026-11-21 10:00:00,5000,ABC,0,ACCEPTED\n",
        encoding="utf-8",
    )
    with pytest.raises(StatementError) as info, rt.sessions() as session, session.begin():
        import_file(session, "cinetpay", path, business_tz=ZoneInfo("Africa/Abidjan"))
    assert info.value.errors == [
        (3, "amount '50.5': has more decimals than XOF allows"),
        (4, "unknown status 'PAID'; expected one of ACCEPTED, REFUSED, WAITING_FOR_CUSTOMER, REFUNDED"),
        (5, "time '21/11/2026' is not YYYY-MM-DD HH:MM:SS or ISO 8601"),
        (6, "a paid row without a reference cannot be matched"),
        (7, "unknown currency 'ABC'"),
    ]
    with rt.sessions() as session:
        assert session.scalars(select(StatementLine)).all() == []


def test_statement_rows_convert_exactly(rt: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "cinetpay.csv"
    path.write_text(
        "transaction_id,operator_id,payment_date,amount,currency,fees,status\n"
        "TXN-1,OP1,2026-11-20 23:30:00,15000,XOF,525,ACCEPTED\n"
        "TXN-2,,2026-11-21T00:30:00+01:00,12.50,USD,,refused\n",
        encoding="utf-8",
    )
    with rt.sessions() as session, session.begin():
        result = import_file(session, "cinetpay", path, business_tz=ZoneInfo("Africa/Lagos"))
    with rt.sessions() as session:
        lines = session.scalars(select(StatementLine).order_by(StatementLine.line_no)).all()
    first, second = lines
    assert (first.amount, first.currency, first.fee, first.status) == (15000, "XOF", 525, "succeeded")
    assert first.occurred_at == datetime(2026, 11, 20, 23, 30, tzinfo=UTC)  # CinetPay's time: Abidjan, UTC+0
    assert first.business_date == date(2026, 11, 21)  # 00:30 in Lagos
    assert (second.amount, second.currency, second.fee, second.status) == (1250, "USD", None, "failed")
    assert second.occurred_at == datetime(2026, 11, 20, 23, 30, tzinfo=UTC)
    assert second.provider_txn_id is None and second.raw.startswith("TXN-2,")
    assert result.days == (date(2026, 11, 21),)


def test_a_refund_in_the_statement_refunds_the_payment(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    pipeline.register_payment(rt, registration(ref, account="tech-refund"))
    sandbox.create_cinetpay(ref, 5000)
    pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(ref))
    today = datetime.now(rt.settings.timezone).date()
    line(rt, ref, "refunded", at=datetime.now(UTC))
    run_id = runs.reconcile_stored(rt.sessions, "cinetpay", today, policy(rt))
    assert classes(rt, run_id)[ref] == "status_mismatch"
    with rt.sessions() as session:
        p = session.scalars(select(Payment).where(Payment.reference == ref)).one()
        revenue = {b.account: b.balance for b in ledger.balances(session)}["revenue:subscriptions"]
        detail = session.scalars(select(ReconItem.detail).where(ReconItem.reference == ref)).one()
    assert p.status is PaymentStatus.REFUNDED and revenue == 0 and "journals reversed" in detail


def payout_journals(rt: Runtime) -> list[tuple[int, str, list[tuple[str, str, int, str]]]]:
    """Every payout journal: (id, memo, [(account, side, amount, currency)])."""
    with rt.sessions() as session:
        journals = session.scalars(select(Journal).where(Journal.kind == runs.PAYOUT).order_by(Journal.id)).all()
        return [
            (j.id, j.memo, [(code, side, amount, currency) for code, side, amount, currency in session.execute(
                select(Account.code, Entry.side, Entry.amount, Entry.currency)
                .join(Account, Account.id == Entry.account_id)
                .where(Entry.journal_id == j.id)
            )])
            for j in journals
        ]  # fmt: skip


WAVE_DAY = "client_reference,transaction_id,timestamp,amount,currency,fee,payment_status,payout_id\n"


def test_a_day_exported_again_replaces_the_first_file_s_lines_never_counted_twice(rt: Runtime, tmp_path: Path) -> None:
    """Wave's day exported from the portal, then exported again a day later with a late payment: the second file's
    lines replace those the first gave of the same transactions, the late one is added, and a line only the first
    file has (a payment the second export left out) stays. Every payment has one line, the payout one row, posted
    to the bank once at its amount. Before, both files were kept: every payment a duplicate (no fee), and the
    payout, counted twice on both sides, matched and posted at twice its amount."""
    a, b, late, only_first = (new_reference("CR") for _ in range(4))
    day = date(2026, 11, 21)
    at = datetime(2026, 11, 21, 9, tzinfo=UTC)
    for ref, amount in ((a, 6500), (b, 65000), (late, 13000), (only_first, 6500)):
        payment(rt, ref, PaymentStatus.SUCCEEDED, amount=amount, at=at, provider="wave")
    rows = [
        f"{a},T-A,2026-11-21T08:30:00Z,6500,XOF,65,succeeded,PO-1",
        f"{b},T-B,2026-11-21T14:12:45Z,65000,XOF,650,succeeded,PO-1",
        ",,2026-11-22T06:00:00Z,70785,XOF,0,payout,PO-1",  # paid out the next morning
    ]
    first, again = tmp_path / "wave-21.csv", tmp_path / "wave-21-again.csv"
    first.write_text(
        WAVE_DAY + "\n".join([*rows, f"{only_first},T-O,2026-11-21T10:00:00Z,6500,XOF,65,succeeded,"]) + "\n",
        encoding="utf-8",
    )
    again.write_text(
        WAVE_DAY + "\n".join([*rows, f"{late},T-L,2026-11-21T23:10:00Z,13000,XOF,130,succeeded,"]) + "\n",
        encoding="utf-8",
    )
    tz = ZoneInfo("Africa/Abidjan")
    with rt.sessions() as session, session.begin():
        imported = import_file(session, "wave", first, business_tz=tz)
    assert (imported.replaced, imported.restated) == (0, ())
    with rt.sessions() as session, session.begin():
        replaced = import_file(session, "wave", again, business_tz=tz)
    assert (replaced.replaced, replaced.restated) == (3, (day, date(2026, 11, 22)))
    with rt.sessions() as session:
        lines = session.execute(select(StatementLine.reference, StatementLine.import_id)).all()
    assert sorted(lines, key=str) == sorted(
        [(a, replaced.import_id), (b, replaced.import_id), (late, replaced.import_id), (None, replaced.import_id),
         (only_first, imported.import_id)], key=str,
    )  # fmt: skip
    run_id = runs.reconcile_stored(rt.sessions, "wave", day, policy(rt))
    assert classes(rt, run_id) == {a: "matched", b: "matched", late: "matched", only_first: "matched"}
    [(_, _, entries)] = payout_journals(rt)
    assert sorted(entries) == [("bank:wave", "debit", 70785, "XOF"), ("provider_clearing:wave", "credit", 70785, "XOF")]


def test_a_line_twice_in_one_file_is_the_provider_s_duplicate_and_stays(rt: Runtime, tmp_path: Path) -> None:
    """Only another file's copy of a line is replaced: a provider that lists a payment twice in one export has
    reported it twice, which the run says (``duplicate``); importing the day again keeps the new file's two."""
    ref = new_reference("CR")
    payment(rt, ref, PaymentStatus.SUCCEEDED, amount=6500, at=datetime(2026, 11, 21, 9, tzinfo=UTC), provider="wave")
    row = f"{ref},T-D,2026-11-21T08:30:00Z,6500,XOF,65,succeeded,"
    tz = ZoneInfo("Africa/Abidjan")
    for n, extra in enumerate(("", f"{new_reference('CR')},T-X,2026-11-21T09:00:00Z,100,XOF,1,cancelled,\n")):
        path = tmp_path / f"wave-{n}.csv"
        path.write_text(WAVE_DAY + f"{row}\n{row}\n{extra}", encoding="utf-8")
        with rt.sessions() as session, session.begin():
            import_file(session, "wave", path, business_tz=tz)
    with rt.sessions() as session:
        kept = session.scalars(select(StatementLine.import_id).where(StatementLine.reference == ref)).all()
    assert len(kept) == 2 and len(set(kept)) == 1  # the second file's two
    run_id = runs.reconcile_stored(rt.sessions, "wave", date(2026, 11, 21), policy(rt))
    assert classes(rt, run_id)[ref] == "duplicate"


def test_the_next_day_s_file_takes_over_the_payout_row_the_day_before_s_file_gave(rt: Runtime, tmp_path: Path) -> None:
    """The 21st's file carries the payout of its payments, paid on the 22nd; the 22nd's file lists that payout too,
    with the 22nd's payments: the payout keeps one row, the newer file's."""
    tz = ZoneInfo("Africa/Abidjan")
    files = {
        "wave-21.csv": [f"{new_reference('CR')},T-1,2026-11-21T08:30:00Z,6500,XOF,65,succeeded,PO-21",
                        ",,2026-11-22T06:00:00Z,6435,XOF,0,payout,PO-21"],
        "wave-22.csv": [",,2026-11-22T06:00:00Z,6435,XOF,0,payout,PO-21",
                        f"{new_reference('CR')},T-2,2026-11-22T10:00:00Z,6500,XOF,65,succeeded,PO-22"],
    }  # fmt: skip
    ids = []
    for name, rows in files.items():
        path = tmp_path / name
        path.write_text(WAVE_DAY + "\n".join(rows) + "\n", encoding="utf-8")
        with rt.sessions() as session, session.begin():
            ids.append(import_file(session, "wave", path, business_tz=tz).import_id)
    with rt.sessions() as session:
        payouts = session.execute(
            select(StatementLine.payout_id, StatementLine.import_id).where(StatementLine.status == "payout")
        ).all()
        days = session.execute(select(StatementImportDay.business_date, StatementImportDay.import_id)).all()
    assert payouts == [("PO-21", ids[1])]
    assert sorted(days) == [(date(2026, 11, 21), ids[0]), (date(2026, 11, 22), ids[1])]  # the 21st's file: none left


def test_two_imports_of_one_day_at_once_take_turns_and_keep_one_copy(rt: Runtime, tmp_path: Path) -> None:
    """The second import waits for the first to commit (a lock, not a look first), then replaces its lines of the
    same transactions: one copy of each, the second file's."""
    tz = ZoneInfo("Africa/Abidjan")
    shared = f"{new_reference()},OP1,2026-11-21 10:00:00,5000,XOF,0,ACCEPTED"
    paths = []
    for n in range(2):
        path = tmp_path / f"cinetpay-{n}.csv"
        path.write_text(
            "transaction_id,operator_id,payment_date,amount,currency,fees,status\n"
            f"{shared}\n{new_reference()},OP{n + 2},2026-11-21 11:00:00,5000,XOF,0,ACCEPTED\n",
            encoding="utf-8",
        )
        paths.append(path)
    first = rt.sessions()
    first.begin()
    imported = import_file(first, "cinetpay", paths[0], business_tz=tz)  # its turn taken, not committed yet
    outcome: list[Any] = []

    def second() -> None:
        try:
            with rt.sessions() as session, session.begin():
                outcome.append(import_file(session, "cinetpay", paths[1], business_tz=tz))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(1)
    assert thread.is_alive()  # waiting for its turn
    first.commit()
    first.close()
    thread.join(30)
    assert len(outcome) == 1 and getattr(outcome[0], "replaced", None) == 1, outcome
    with rt.sessions() as session:
        lines = session.scalars(select(StatementLine.import_id).order_by(StatementLine.import_id)).all()
    assert lines == [imported.import_id, outcome[0].import_id, outcome[0].import_id]


def test_a_matched_payout_is_posted_to_the_bank_once_and_clearing_keeps_what_is_still_owed(rt: Runtime) -> None:
    """Our payments, healed from the statement (settlement Dr clearing / Cr revenue), their fees
    (Dr fees / Cr clearing), and the one matched payout (Dr bank / Cr clearing): clearing is then
    exactly the net of the payments not paid out yet."""
    a, b, c, d = (new_reference() for _ in range(4))
    for ref, amount in ((a, 6500), (b, 65000), (c, 13000), (d, 6500)):
        payment(rt, ref, PaymentStatus.PENDING, amount=amount)  # paid at the provider; the webhook was lost
    line(rt, a, amount=6500, fee=65, payout="PO-A")
    line(rt, b, amount=65000, fee=650, payout="PO-A")
    line(rt, None, "payout", amount=70785, fee=0, payout="PO-A")  # 6435 + 64350: matched
    line(rt, c, amount=13000, fee=130, payout="PO-C")  # its payout is not reported yet: pending
    line(rt, d, amount=6500, fee=65, payout="PO-M")
    line(rt, None, "payout", amount=6000, fee=0, payout="PO-M")  # 435 short of 6435: mismatch
    line(rt, None, "payout", amount=1000, fee=0, payout="PO-U")  # nothing of ours behind it: unexplained
    first = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))

    with rt.sessions() as session:
        from reconciliation.reports import run as reports

        statuses = {p["payout_id"]: p["status"] for p in reports.payouts(session, first)}
        balances = {b.account: b.balance for b in ledger.balances(session)}
        postings = session.scalars(select(PayoutPosting)).all()
    assert statuses == {"PO-A": "matched", "PO-C": "pending", "PO-M": "mismatch", "PO-U": "unexplained"}
    [(journal_id, memo, entries)] = payout_journals(rt)
    assert sorted(entries) == [
        ("bank:cinetpay", "debit", 70785, "XOF"),
        ("provider_clearing:cinetpay", "credit", 70785, "XOF"),
    ]
    assert "PO-A" in memo and f"run {first}" in memo
    assert [(p.provider, p.payout_id, p.journal_id, p.run_id) for p in postings] == [
        ("cinetpay", "PO-A", journal_id, first)
    ]
    assert balances["bank:cinetpay"] == 70785
    assert balances["fees:cinetpay"] == 65 + 650 + 130 + 65
    assert balances["revenue:subscriptions"] == -(6500 + 65000 + 13000 + 6500)
    # What the provider still owes us: C (pending payout) and D (its payout short), net of their fees.
    assert balances["provider_clearing:cinetpay"] == (13000 - 130) + (6500 - 65)

    # Re-runs of the day find PO-A matched again: nothing more is posted.
    second = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt), trigger="rerun")
    assert runs.post_payouts(rt.sessions, second) == 0
    assert runs.post_payouts(rt.sessions, first) == 0
    assert [j for j, _, _ in payout_journals(rt)] == [journal_id]
    with rt.sessions() as session:
        assert {b.account: b.balance for b in ledger.balances(session)} == balances
        assert {p["payout_id"]: p["status"] for p in reports.payouts(session, second)} == statuses
        assert [(p.payout_id, p.journal_id, p.run_id) for p in session.scalars(select(PayoutPosting))] == [
            ("PO-A", journal_id, first)  # posted by the first run that found it matched
        ]


def test_payouts_not_matched_post_nothing(rt: Runtime) -> None:
    ref, other = new_reference(), new_reference()
    payment(rt, ref, PaymentStatus.PENDING)
    payment(rt, other, PaymentStatus.PENDING)
    line(rt, ref, amount=5000, fee=50, payout="PO-SHORT")
    line(rt, None, "payout", amount=4000, fee=0, payout="PO-SHORT")  # mismatch
    line(rt, other, amount=5000, fee=50, payout="PO-LATER")  # pending
    line(rt, None, "payout", amount=9000, fee=0, payout="PO-STRANGER")  # unexplained
    run_id = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))
    with rt.sessions() as session:
        from reconciliation.reports import run as reports

        statuses = sorted(p["status"] for p in reports.payouts(session, run_id))
        accounts = {b.account for b in ledger.balances(session)}
        assert session.scalars(select(PayoutPosting)).all() == []
    assert statuses == ["mismatch", "pending", "unexplained"]
    assert runs.post_payouts(rt.sessions, run_id) == 0
    assert payout_journals(rt) == [] and "bank:cinetpay" not in accounts


def test_a_healed_payment_is_paid_when_the_provider_says(rt: Runtime) -> None:
    lost = new_reference()
    payment(rt, lost, PaymentStatus.PENDING)
    line(rt, lost, at=NOON + timedelta(hours=3))
    line(rt, lost, "failed", at=NOON + timedelta(hours=1))  # an earlier attempt the provider refused
    run_id = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))
    assert classes(rt, run_id) == {lost: "missing_in_ledger"}
    with rt.sessions() as session:
        healed = session.scalars(select(Payment).where(Payment.reference == lost)).one()
    assert healed.status is PaymentStatus.SUCCEEDED and healed.paid_at == NOON + timedelta(hours=3)


def test_fees_are_posted_once_per_settled_payment_a_chunk_at_a_time(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "FEE_CHUNK", 2)  # three chunks for five items (SQLite)
    monkeypatch.setattr(runs, "FEE_CHUNK_SQL", 2)  # chunks of two item ids, two sessions (PostgreSQL)
    paid = [new_reference() for _ in range(4)]
    refunded = new_reference()
    for n, ref in enumerate(paid):
        payment(rt, ref, PaymentStatus.SUCCEEDED)
        line(rt, ref, fee=100 + n)
    payment(rt, refunded, PaymentStatus.REFUNDED)
    line(rt, refunded, "refunded", fee=100)  # matched, but a refund reversed its journals: no fee after it
    first = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))
    runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))  # a re-run posts nothing again
    assert runs.post_fees(rt.sessions, first) == 0  # nor does posting the first run's fees twice
    with rt.sessions() as session:
        balances = {(b.account, b.currency): b.balance for b in ledger.balances(session)}
    posted = fees_posted(rt)
    assert posted == {ref: (100 + n, "XOF", first) for n, ref in enumerate(paid)}
    journals = fee_journals(rt)
    assert {jid for jid, *_ in posted_journals(rt)} == set(journals)  # every fee journal carries postings
    assert sum(int(memo.split()[3]) for memo, _ in journals.values()) == 4
    memo = re.compile(rf"cinetpay fees of \d payment\(s\) \(run {first}\)")
    assert all(memo.fullmatch(text) for text, _ in journals.values())
    assert balances[("fees:cinetpay", "XOF")] == 100 + 101 + 102 + 103
    with rt.sessions() as session:  # what ``payrecon payments show`` says of each
        shown = {ref: views.payment_detail(session, p)["fee"] for ref in (*paid, refunded)
                 for p in views.find_payments(session, ref)}  # fmt: skip
    assert shown.pop(refunded) is None
    assert {ref: (fee["amount"], fee["currency"], fee["run"]) for ref, fee in shown.items()} == posted
    assert {fee["journal"] for fee in shown.values()} == set(journals)


def classified_run(rt: Runtime) -> int:
    """A run of DAY classified, its fees not posted yet (``reconcile_stored`` would post them)."""
    run_id = runs.start(rt.sessions, "cinetpay", DAY, policy(rt), "manual")
    runs.classify_run(rt.sessions, run_id, policy(rt))
    return run_id


def fees_posted(rt: Runtime) -> dict[str, tuple[int, str, int | None]]:
    """Each fee posted, by its payment's reference: its amount, currency and run."""
    with rt.sessions() as session:
        rows = session.execute(
            select(Payment.reference, FeePosting.amount, FeePosting.currency, FeePosting.run_id).join(
                Payment, Payment.id == FeePosting.payment_id
            )
        ).all()
    return {reference: (amount, currency, run_id) for reference, amount, currency, run_id in rows}


def posted_journals(rt: Runtime) -> list[tuple[int, str, int, int]]:
    """Per fee journal and currency named by the postings: the journal, the currency, how many fees, their sum."""
    with rt.sessions() as session:
        rows = session.execute(
            select(FeePosting.journal_id, FeePosting.currency, func.count(), func.sum(FeePosting.amount))
            .group_by(FeePosting.journal_id, FeePosting.currency)
            .order_by(FeePosting.journal_id)
        ).all()
    return [(jid, currency, int(n), int(total)) for jid, currency, n, total in rows]


def fee_journals(rt: Runtime) -> dict[int, tuple[str, list[tuple[str, str, int, str]]]]:
    """Each fee journal by id: its memo and its entries in id order."""
    with rt.sessions() as session:
        journals = session.execute(select(Journal.id, Journal.memo).where(Journal.kind == runs.FEE)).all()
        return {
            journal_id: (memo, [(code, side, amount, currency) for code, side, amount, currency in session.execute(
                select(Account.code, Entry.side, Entry.amount, Entry.currency)
                .join(Account, Account.id == Entry.account_id)
                .where(Entry.journal_id == journal_id)
                .order_by(Entry.id)
            )])
            for journal_id, memo in journals
        }  # fmt: skip


def test_fees_posted_by_two_callers_at_once_are_posted_once_and_balance(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two posters of one run at once, each in chunks (the first side by side in two sessions): every
    fee once, Dr fees / Cr clearing in the provider's currency, debit first, the memo as before."""
    monkeypatch.setattr(runs, "FEE_CHUNK_SQL", 3)
    refs = [new_reference() for _ in range(12)]
    for n, ref in enumerate(refs):
        payment(rt, ref, PaymentStatus.SUCCEEDED)
        line(rt, ref, fee=10 + n)
    run_id = classified_run(rt)
    start = threading.Barrier(2)

    def post(_: int) -> int:
        start.wait()
        return runs.post_fees(rt.sessions, run_id)

    with ThreadPoolExecutor(2) as pool:
        posted = list(pool.map(post, range(2)))
    assert sum(posted) == 12 and runs.post_fees(rt.sessions, run_id) == 0
    assert fees_posted(rt) == {ref: (10 + n, "XOF", run_id) for n, ref in enumerate(refs)}
    assert fee_journals(rt) == {
        jid: (f"cinetpay fees of {n} payment(s) (run {run_id})", [
            ("fees:cinetpay", "debit", total, "XOF"), ("provider_clearing:cinetpay", "credit", total, "XOF"),
        ])
        for jid, _, n, total in posted_journals(rt)
    }  # fmt: skip
    with rt.sessions() as session:
        assert ledger.unbalanced_journals(session) == []


def test_a_rerun_posts_the_fees_of_its_new_matches_beside_those_posted_before(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk some of whose fees an earlier run posted: its plain insert of the postings meets their key (the
    payment), and the chunk posts the others, each fee once, under the run that found it. (A re-run
    skips the posted fees from the start: here it is taken for a first run, for its chunk to meet the key.)"""
    set_based = runs._post_fees_set_based
    monkeypatch.setattr(runs, "_post_fees_set_based", lambda *a, **kw: set_based(*a, **{**kw, "rerun": False}))
    before, after = [new_reference() for _ in range(2)], [new_reference() for _ in range(3)]
    for ref in before:
        payment(rt, ref, PaymentStatus.SUCCEEDED)
        line(rt, ref, fee=70)
    first = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))
    for ref in after:  # the provider's statement of the day grows: the re-run matches these too
        payment(rt, ref, PaymentStatus.SUCCEEDED)
        line(rt, ref, fee=80)
    second = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))
    assert fees_posted(rt) == {
        **{ref: (70, "XOF", first) for ref in before},
        **{ref: (80, "XOF", second) for ref in after},
    }
    assert sorted(memo for memo, _ in fee_journals(rt).values()) == [
        f"cinetpay fees of 2 payment(s) (run {first})",
        f"cinetpay fees of 3 payment(s) (run {second})",
    ]
    with rt.sessions() as session:
        balances = {(b.account, b.currency): b.balance for b in ledger.balances(session)}
        assert ledger.unbalanced_journals(session) == []
    assert balances[("fees:cinetpay", "XOF")] == 2 * 70 + 3 * 80


def test_a_rerun_skips_the_fees_posted_before_from_the_start(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-run's chunks insert with ``ON CONFLICT`` at once: the postings' key never refuses their first insert
    (here a refusal would not be recognized, and would fail the re-run)."""
    for _ in range(3):
        ref = new_reference()
        payment(rt, ref, PaymentStatus.SUCCEEDED)
        line(rt, ref, fee=40)
    runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))
    monkeypatch.setattr(runs, "_POSTING_KEY", "no such key")
    rerun = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))
    assert runs.post_fees(rt.sessions, rerun) == 0
    assert len(fees_posted(rt)) == 3 and len(fee_journals(rt)) == 1


def _refund(rt: Runtime, session: Any, payment_id: int) -> str:
    """Record a refund of the payment in ``session``'s transaction, as an operator would."""
    row = session.get(Payment, payment_id, with_for_update=True)
    assert row is not None
    ctx = payments.Context(now=datetime.now(UTC), tz=ZoneInfo("Africa/Abidjan"), policy=rt.context("cinetpay").policy)
    return payments.refund(session, row, ctx, reason="customer asked", by="ops")


def _waiting_for_an_advisory_lock(rt: Runtime, how_many: int, still: Any) -> None:
    """Wait until ``how_many`` sessions of the test database wait for an advisory lock (``still()`` true)."""
    deadline = time.monotonic() + 10
    with rt.sessions() as watch:
        while watch.scalar(text(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE d.datname = current_database() AND l.locktype = 'advisory' AND NOT l.granted"
        )) < how_many:  # fmt: skip
            assert time.monotonic() < deadline and still()
            time.sleep(0.02)


def test_a_payment_refunded_while_fees_wait_for_the_refund_gets_no_fee(rt: Runtime) -> None:
    """A refund under way holds the provider's fee lock alone: the fee poster waits for it, then sees the
    payment refunded and posts the other fees only (the payments themselves are not locked)."""
    paid, refunded = new_reference(), new_reference()
    payment(rt, paid, PaymentStatus.SUCCEEDED)
    line(rt, paid, fee=50)
    refunded_id = payment(rt, refunded, PaymentStatus.SUCCEEDED)
    line(rt, refunded, fee=60)
    run_id = classified_run(rt)
    with ThreadPoolExecutor(1) as pool, rt.sessions() as refund, refund.begin():
        _refund(rt, refund, refunded_id)
        posting = pool.submit(runs.post_fees, rt.sessions, run_id)
        _waiting_for_an_advisory_lock(rt, 1, lambda: not posting.done())
    assert posting.result(timeout=10) == 1
    assert list(fees_posted(rt)) == [paid]


def test_a_refund_waits_for_the_fees_under_way_and_reverses_the_fee_they_post(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fee chunk holds the provider's fee lock shared until it commits: a refund of one of its payments
    waits for it, then reverses the fee it posted with the settlement (without the lock, the refund would
    not see the fee posted, which would stay unreversed)."""
    ref = new_reference()
    payment_id = payment(rt, ref, PaymentStatus.SUCCEEDED)
    line(rt, ref, fee=50)
    run_id = classified_run(rt)
    pause = 7_014_014  # an advisory lock of the test's own, held while the chunk is under way
    paused = "SELECT count(*) FROM posted, (SELECT pg_advisory_xact_lock_shared(7014014)) AS pause"
    monkeypatch.setattr(runs, "_FEES_POST", runs._FEES_POST.replace("SELECT count(*) FROM posted", paused))
    with ThreadPoolExecutor(2) as pool, rt.sessions() as holder, holder.begin():
        holder.execute(text(f"SELECT pg_advisory_xact_lock({pause})"))
        posting = pool.submit(runs.post_fees, rt.sessions, run_id)
        _waiting_for_an_advisory_lock(rt, 1, lambda: not posting.done())  # the chunk, at the pause

        def refund() -> str:
            with rt.sessions() as session, session.begin():
                return _refund(rt, session, payment_id)

        refunding = pool.submit(refund)
        _waiting_for_an_advisory_lock(rt, 2, lambda: not refunding.done())  # the refund, at the fee lock
        holder.rollback()
        assert posting.result(timeout=10) == 1
        assert refunding.result(timeout=10).startswith("refunded: journals reversed (fee)")
    with rt.sessions() as session:
        kinds = session.execute(
            select(Journal.kind, func.count()).where(Journal.payment_id == payment_id).group_by(Journal.kind)
        ).all()
        assert dict(kinds) == {f"{runs.FEE}_refund": 1}
        assert ledger.unbalanced_journals(session) == []
        balances = {(b.account, b.currency): b.balance for b in ledger.balances(session)}
    assert balances[("fees:cinetpay", "XOF")] == 0 and fees_posted(rt) == {ref: (50, "XOF", run_id)}


def test_a_chunk_of_fees_in_two_currencies_is_a_journal_for_each(rt: Runtime) -> None:
    """One chunk, two currencies: a journal per currency with its total, each fee's posting naming its currency's."""
    refs = {new_reference(): ("XOF", 50), new_reference(): ("XOF", 70), new_reference(): ("XAF", 30)}
    for ref, (currency, fee) in refs.items():
        payment_id = payment(rt, ref, PaymentStatus.SUCCEEDED)  # the plans are sold in XOF
        with rt.sessions() as session, session.begin():
            row = session.get(Payment, payment_id)
            assert row is not None
            row.currency = row.confirmed_currency = currency
        line(rt, ref, currency=currency, fee=fee)
    run_id = classified_run(rt)
    assert runs.post_fees(rt.sessions, run_id) == 3
    assert fees_posted(rt) == {ref: (fee, currency, run_id) for ref, (currency, fee) in refs.items()}
    journals = fee_journals(rt)
    assert sorted(posted_journals(rt), key=lambda row: row[1]) == [
        (next(j for j, (_, e) in journals.items() if e[0][3] == "XAF"), "XAF", 1, 30),
        (next(j for j, (_, e) in journals.items() if e[0][3] == "XOF"), "XOF", 2, 120),
    ]
    assert sorted(entries for _, entries in journals.values()) == [
        [("fees:cinetpay", "debit", 30, "XAF"), ("provider_clearing:cinetpay", "credit", 30, "XAF")],
        [("fees:cinetpay", "debit", 120, "XOF"), ("provider_clearing:cinetpay", "credit", 120, "XOF")],
    ]


def test_the_embedded_demo_posts_fees_a_journal_a_currency_and_each_payment_s_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite (the demo) posts a chunk's fees in Python: a journal per currency, a posting per payment still paid,
    one fee a payment even when two of its items are due (the first item's), none twice across chunks or calls."""
    monkeypatch.setattr(runs, "FEE_CHUNK", 3)
    url = f"sqlite:///{tmp_path / 'demo.sqlite'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    at = "2026-11-21 00:00:00+00:00"
    try:
        with engine.begin() as conn:
            for payment_id, status in ((1, "succeeded"), (2, "succeeded"), (3, "succeeded"), (4, "refunded")):
                conn.execute(
                    text("INSERT INTO payments (id, provider, reference, status, amount, currency, account, plan_code, "
                         "periods, provider_data, check_count, settled, created_at, updated_at) VALUES (:id, "
                         "'cinetpay', :ref, :status, 5000, 'XOF', 'a', 'p', 1, '{}', 0, 1, :at, :at)"),
                    {"id": payment_id, "ref": f"R-{payment_id}", "status": status, "at": at},
                )  # fmt: skip
            conn.execute(
                text("INSERT INTO recon_runs (id, provider, business_date, timezone, window_start, window_end, "
                     "trigger, status, started_at, counts) VALUES (7, 'cinetpay', '2026-11-20', 'UTC', :at, :at, "
                     "'manual', 'running', :at, '{}')"),
                {"at": at},
            )  # fmt: skip
            for payment_id, fee, currency in ((1, 50, "XOF"), (2, 30, "XAF"), (2, 99, "XOF"), (3, 70, "XOF"),
                                               (4, 60, "XOF")):  # fmt: skip
                conn.execute(
                    text("INSERT INTO recon_items (run_id, cls, reference, payment_id, provider_lines, healed, "
                         "detail, fee, provider_currency) VALUES (7, 'matched', :ref, :p, 1, 0, '', :fee, :cur)"),
                    {"ref": f"R-{payment_id}", "p": payment_id, "fee": fee, "cur": currency},
                )  # fmt: skip
        sessions = session_factory(engine)
        assert runs.post_fees(sessions, 7) == 3 and runs.post_fees(sessions, 7) == 0
        with engine.connect() as conn:
            postings = conn.execute(text("SELECT payment_id, amount, currency, run_id FROM fee_postings")).all()
            journals = conn.execute(text(
                "SELECT j.memo, e.side, e.amount, e.currency FROM ledger_journals j "
                "JOIN ledger_entries e ON e.journal_id = j.id WHERE j.kind = 'fee' ORDER BY j.id, e.id"
            )).all()  # fmt: skip
        assert sorted(postings) == [(1, 50, "XOF", 7), (2, 30, "XAF", 7), (3, 70, "XOF", 7)]
        assert [(side, amount, currency) for _, side, amount, currency in journals] == [
            ("debit", 30, "XAF"), ("credit", 30, "XAF"),  # the first chunk: items 1-3, payments 1 and 2
            ("debit", 50, "XOF"), ("credit", 50, "XOF"),
            ("debit", 70, "XOF"), ("credit", 70, "XOF"),  # the second: payment 2 posted, payment 4 refunded
        ]  # fmt: skip
        assert journals[0][0] == "cinetpay fees of 1 payment(s) (run 7)"
        with sessions() as session:
            assert ledger.fees_not_carried(session) == [] and ledger.unbalanced_journals(session) == []
    finally:
        engine.dispose()


def test_the_ledger_guard_still_refuses_an_unbalanced_fee_chunk(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """The set-based fee statement is checked by the ledger's own guard: a credit one unit short is
    refused with its whole chunk, and nothing is posted."""
    refs = [new_reference() for _ in range(3)]
    for ref in refs:
        payment(rt, ref, PaymentStatus.SUCCEEDED)
        line(rt, ref, fee=50)
    run_id = classified_run(rt)
    short = runs._FEES_POST.replace("s.side, t.amount,", "s.side, CASE s.n WHEN 1 THEN t.amount ELSE t.amount - 1 END,")
    assert short != runs._FEES_POST
    monkeypatch.setattr(runs, "_FEES_POST", short)
    with pytest.raises(IntegrityError, match="does not balance"):
        runs.post_fees(rt.sessions, run_id)
    with rt.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Journal).where(Journal.kind == runs.FEE)) == 0
        assert session.scalar(select(func.count()).select_from(FeePosting)) == 0
    monkeypatch.undo()
    assert runs.post_fees(rt.sessions, run_id) == 3


def test_a_second_run_at_once_classifies_in_one_session(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """While one run of the process classifies side by side, another uses one session, not the pool."""
    shares: list[object] = []
    real = runs.classify

    def spy(session: Any, run_id: int, window: Any, day: Any, part: Any = None) -> int:
        shares.append(part)
        return real(session, run_id, window, day, part)

    monkeypatch.setattr(runs, "classify", spy)
    ref = new_reference()
    payment(rt, ref, PaymentStatus.SUCCEEDED)
    line(rt, ref)
    assert runs._SIDE_BY_SIDE.acquire(blocking=False)  # as if another run were classifying side by side
    try:
        busy = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt, sessions=2))
    finally:
        runs._SIDE_BY_SIDE.release()
    free = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt, sessions=2))
    assert shares[0] is None and sorted(shares[1:]) == [(0, 2), (1, 2)]
    assert classes(rt, busy) == classes(rt, free) == {ref: "matched"}


def test_the_fee_lock_refuses_a_snapshot_older_than_itself(rt: Runtime) -> None:
    """Under REPEATABLE READ a refund would read the journals as they were before it waited for the fee
    lock, and miss a fee posted meanwhile: the lock refuses that isolation."""
    with rt.sessions() as session, session.begin():
        session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        with pytest.raises(RuntimeError, match="READ COMMITTED"):
            ledger.hold_fees(session, "cinetpay", posting=False)
    with rt.sessions() as session, session.begin():
        ledger.hold_fees(session, "cinetpay", posting=True)  # the default isolation: fine


def test_a_run_s_fee_chunks_cover_its_ids_once_and_shrink_toward_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """``runs._fee_ranges``: every id once, in order; at most ``FEE_CHUNK_SQL`` each, then a ``2 * sessions``-th of
    what is left down to a tenth of it, so that two sessions end together; no sliver at the end."""
    monkeypatch.setattr(runs, "FEE_CHUNK_SQL", 100_000)
    ranges = runs._fee_ranges(1, 1_000_821, 2)
    assert ranges[0][0] == 1 and ranges[-1][1] == 1_000_821
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    sizes = [end - start for start, end in ranges]
    assert sizes[:7] == [100_000] * 7 and sizes[7] == 75_205  # a quarter of the 300,820 left
    assert sizes[:-1] == sorted(sizes[:-1], reverse=True) and min(sizes) >= 10_000 and sizes[-1] < 20_000
    assert runs._fee_ranges(5, 6, 2) == [(5, 6)]
    assert [end - start for start, end in runs._fee_ranges(1, 250_001, 1)] == [100_000, 100_000, 50_000]  # alone
