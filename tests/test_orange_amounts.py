"""What Orange's status answer confirms: no amount (its documented reply is ``{status, order_id, txnid}``).

A success is settled at the registered amount (the question named it), recorded as *not* confirmed by
the provider, and the statement confirms it (or flags it) at reconciliation. Real PostgreSQL, the
sandbox over real HTTP.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from providers.sandbox.client import SandboxClient
from reconciliation import ledger, payments
from reconciliation.models import (
    FlagKind,
    Journal,
    Payment,
    PaymentStatus,
    Plan,
    ReconItem,
    SubscriptionGrant,
    Verification,
)
from reconciliation.nightly import runs
from reconciliation.statements.files import import_file
from tests.helpers import new_reference, registration
from worker import pipeline
from worker.pipeline import Disposition
from worker.runtime import Runtime

PRICE = 6500


def order(rt: Runtime, sandbox: SandboxClient, **options: Any) -> dict[str, Any]:
    """An Orange order paid at the sandbox (the documented answer: no amount echoed), registered with us."""
    ref = new_reference("ORD")
    state = sandbox.create("orange_money", reference=ref, amount=PRICE, currency="XOF", fate="accepted", **options)
    pipeline.register_payment(
        rt, registration(ref, provider="orange_money", amount=PRICE, plan="coko-premium-monthly",
                         account=f"reader-{ref[-6:]}", provider_data=state["provider_data"])
    )  # fmt: skip
    return state


def settled_at_the_registered_amount(rt: Runtime, ref: str) -> Payment:
    """The payment is paid and settled (journal of the registered amount, a grant), its amount unconfirmed."""
    with rt.sessions() as session:
        p = session.scalars(select(Payment).where(Payment.reference == ref)).one()
        journal = session.scalars(select(Journal).where(Journal.payment_id == p.id)).one()
        entries = {(e.side, e.amount, e.currency) for e in journal.entries}
        grants = session.scalars(select(SubscriptionGrant).where(SubscriptionGrant.payment_id == p.id)).all()
        [verification] = session.scalars(
            select(Verification).where(Verification.payment_id == p.id, Verification.outcome.is_not(None))
        ).all()
        flags = {f.kind for f in p.flags}
    assert (p.status, p.settled) == (PaymentStatus.SUCCEEDED, True)
    assert (p.confirmed_amount, p.confirmed_currency) == (None, None)  # Orange said nothing about it
    assert (verification.answered_amount, verification.answered_currency) == (None, None)
    assert payments.UNCONFIRMED_AMOUNT in (verification.decision or "")
    assert journal.kind == "settlement" and entries == {("debit", PRICE, "XOF"), ("credit", PRICE, "XOF")}
    assert len(grants) == 1 and grants[0].days == 30
    assert flags == set()
    return p


def test_a_webhook_settles_at_the_registered_amount_unconfirmed(rt: Runtime, sandbox: SandboxClient) -> None:
    state = order(rt, sandbox)
    result = pipeline.ingest_webhook(rt, sandbox.notification("orange_money", state["reference"]))
    assert result.outcome is Disposition.ACCEPTED, result.detail
    settled_at_the_registered_amount(rt, state["reference"])


def test_a_batch_settles_it_set_wise_at_the_registered_amount(rt: Runtime, sandbox: SandboxClient) -> None:
    states = [order(rt, sandbox) for _ in range(3)]
    with rt.sessions() as session:
        plans = {plan.code: plan for plan in session.scalars(select(Plan))}
        p = session.scalars(select(Payment).where(Payment.reference == states[0]["reference"])).one()
        client = rt.client("orange_money")
        assert client is not None
        answer = client.check(payments.registration_view(p))
        # The common case stays on the set-wise path; an answer without an amount to a question that did
        # not name the registered one still goes one by one (and posts nothing, flagged).
        assert payments.is_plain_success(p, answer, None, plans)
        assert not payments.is_plain_success(p, replace(answer, registered_amount_asked=False), None, plans)
    results = pipeline.ingest_batch(rt, [sandbox.notification("orange_money", s["reference"]) for s in states])
    assert [getattr(r, "outcome", r) for r in results] == [Disposition.ACCEPTED] * 3
    for s in states:
        settled_at_the_registered_amount(rt, s["reference"])


def test_a_recheck_settles_at_the_registered_amount(rt: Runtime, sandbox: SandboxClient) -> None:
    state = order(rt, sandbox)
    with rt.sessions() as session:
        payment_id = session.scalars(select(Payment.id).where(Payment.reference == state["reference"])).one()
    assert pipeline.verify_payment(rt, payment_id).outcome is Disposition.ACCEPTED
    settled_at_the_registered_amount(rt, state["reference"])


def test_an_echoed_amount_is_confirmed_and_a_tampered_one_is_caught_in_flight(
    rt: Runtime, sandbox: SandboxClient
) -> None:
    """A deployment that echoes the amount: what it echoes is confirmed (and compared with the registration)."""
    plain = order(rt, sandbox, echo_amount=True)
    tampered = order(rt, sandbox, echo_amount=True, confirm_amount=1300)
    for state in (plain, tampered):
        pipeline.ingest_webhook(rt, sandbox.notification("orange_money", state["reference"]))
    with rt.sessions() as session:
        got = {p.reference: p for p in session.scalars(select(Payment))}
        ok, bad = got[plain["reference"]], got[tampered["reference"]]
        assert (ok.confirmed_amount, ok.confirmed_currency, ok.settled) == (PRICE, "XOF", True)
        assert (bad.confirmed_amount, bad.settled) == (1300, False)
        assert FlagKind.AMOUNT_MISMATCH in {f.kind for f in bad.flags}


def test_the_statement_confirms_the_amount_or_flags_the_difference(
    rt: Runtime, sandbox: SandboxClient, tmp_path: Path
) -> None:
    """The payer paid less than registered; Orange's answer could not say so. Its statement does."""
    paid_right, paid_less = order(rt, sandbox), order(rt, sandbox, confirm_amount=1300)
    for state in (paid_right, paid_less):
        assert pipeline.ingest_webhook(rt, sandbox.notification("orange_money", state["reference"])).outcome is (
            Disposition.ACCEPTED
        )
        settled_at_the_registered_amount(rt, state["reference"])  # both: Orange's answer said SUCCESS only
    tz = ZoneInfo("Africa/Abidjan")
    now = datetime.now(UTC).astimezone(tz)
    statement = tmp_path / "orange.csv"
    statement.write_text(
        "order_id,txnid,date,amount,currency,fee,status\n"
        f"{paid_right['reference']},MP1,{now:%Y-%m-%d %H:%M:%S},6500,XOF,130,SUCCESS\n"
        f"{paid_less['reference']},MP2,{now:%Y-%m-%d %H:%M:%S},1300,XOF,26,SUCCESS\n",
        encoding="utf-8",
    )
    with rt.sessions() as session, session.begin():
        import_file(session, "orange_money", statement, business_tz=tz)
    policy = runs.Policy(tz=tz, sla=3600, fee_bps=200, recheck=rt.context("orange_money").policy)
    run_id = runs.reconcile_stored(rt.sessions, "orange_money", now.date(), policy)
    with rt.sessions() as session:
        got = {p.reference: p for p in session.scalars(select(Payment))}
        items = {
            i.reference: (i.cls, i.internal_amount, i.provider_amount)
            for i in session.scalars(select(ReconItem).where(ReconItem.run_id == run_id))
        }
        right_flags = {f.kind for f in got[paid_right["reference"]].flags}
        less_flags = {f.kind: f.detail for f in got[paid_less["reference"]].flags}
        revenue = {b.account: b.balance for b in ledger.balances(session)}["revenue:subscriptions"]
    assert items == {
        paid_right["reference"]: ("matched", PRICE, PRICE),
        paid_less["reference"]: ("amount_mismatch", PRICE, 1300),
    }
    assert right_flags == set()
    assert list(less_flags) == [FlagKind.AMOUNT_MISMATCH]
    assert "reports 1300 XOF, we recorded 6500 XOF" in less_flags[FlagKind.AMOUNT_MISMATCH]
    assert revenue == -2 * PRICE  # both posted as settled (credits count negative); finance decides on the other
    # A re-run flags nothing twice.
    runs.reconcile_stored(rt.sessions, "orange_money", now.date(), policy, trigger="rerun")
    with rt.sessions() as session:
        p = session.scalars(select(Payment).where(Payment.reference == paid_less["reference"])).one()
        assert [f.kind for f in p.flags] == [FlagKind.AMOUNT_MISMATCH]
