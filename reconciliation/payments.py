"""Payments: registration, orphans, and settlement of a verified provider answer.

Every function here runs inside the caller's transaction. Whatever touches a
payment's money or access first takes the payment's row lock
(``SELECT ... FOR UPDATE``), and the ledger and grants are unique per payment,
so any number of concurrent deliveries settle a payment once. The nightly fee
posting is the exception: it locks no payment, and a refund serializes with it
through the provider's fee lock (``ledger.hold_fees``, ``hold_refunds``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from providers.base import Delivery, Outcome, RegistrationView, VerifiedStatus
from reconciliation import bulk, facts, ledger, outbox, subscriptions
from reconciliation.db import lease_rows
from reconciliation.dialect import insert
from reconciliation.models import (
    FINAL_STATUSES,
    FeePosting,
    FlagKind,
    Journal,
    OutboxEvent,
    Payment,
    PaymentFlag,
    PaymentStatus,
    Plan,
    SubscriptionGrant,
    Verification,
)
from reconciliation.states import transition
from reconciliation.subscriptions import get_plan, grant_for_payment
from schemas.messages import PaymentRegistration

# Journal kinds, unique per payment (but FEE's, below).
SETTLEMENT = "settlement"  # Dr provider clearing / Cr revenue
SUSPENSE = "suspense"  # Dr provider clearing / Cr suspense (unattributable money)
SUSPENSE_REVERSAL = "suspense_reversal"  # mirror of SUSPENSE once the money is attributed
# The nightly run's fees: a journal per chunk of payments (no payment of its own), each payment's fee a
# ``fee_postings`` row; before migration 0025 a journal per payment. Reversed per payment by a refund.
FEE = ledger.FEE_KIND
FEE_REFUND = "fee_refund"  # Dr provider clearing / Cr fees:<provider>, the payment's fee (its posting)


@dataclass(frozen=True, slots=True)
class RecheckPolicy:
    """When to ask the provider again about a non-final payment, and when to stop."""

    schedule: tuple[int, ...]  # seconds after each check
    give_up_after: int  # seconds after registration (or first sight)

    def next_check(self, check_count: int, now: datetime) -> datetime:
        delay = self.schedule[min(check_count, len(self.schedule) - 1)]
        return now + timedelta(seconds=delay)


@dataclass(frozen=True, slots=True)
class Context:
    now: datetime
    tz: ZoneInfo
    policy: RecheckPolicy


class RegistrationConflict(ValueError):
    """The reference is already registered with different data."""


class RegisterOutcome(StrEnum):
    CREATED = "created"
    DUPLICATE = "duplicate"
    ADOPTED = "adopted"


def registration_view(payment: Payment) -> RegistrationView:
    return RegistrationView(
        reference=payment.reference,
        amount=payment.amount,
        currency=payment.currency,
        provider_data=dict(payment.provider_data or {}),
    )


def find(session: Session, provider: str, reference: str, *, lock: bool = False) -> Payment | None:
    query = select(Payment).where(Payment.provider == provider, Payment.reference == reference)
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    return session.scalars(query).one_or_none()


def find_many(session: Session, provider: str, references: Collection[str]) -> dict[str, Payment]:
    """The payments of ``provider`` among ``references`` (one query for a batch), by reference."""
    rows = session.scalars(select(Payment).where(Payment.provider == provider, Payment.reference.in_(references)))
    return {row.reference: row for row in rows}


def lock_many(session: Session, ids: Collection[int]) -> dict[int, Payment]:
    """The payments ``ids`` locked for update in id order (two batches sharing payments cannot deadlock on
    them), read afresh, by id."""
    if not ids:
        return {}
    query = select(Payment).where(Payment.id.in_(sorted(ids))).order_by(Payment.id).with_for_update()
    return {row.id: row for row in session.scalars(query.execution_options(populate_existing=True))}


def hold_refunds(session: Session, answers: Iterable[tuple[str, VerifiedStatus]]) -> None:
    """Take, providers in order, the fee lock (``ledger.hold_fees``, alone) of every provider whose answer in
    ``answers`` (provider, answer) is a refund: what ``_refunded`` takes before it reverses journals.

    A transaction that applies several answers calls this right after locking its payments and before it
    locks anything else (a subscription, a flag): otherwise two such transactions could each hold one
    provider's lock and wait for the other's, or one hold the lock and wait for a subscription the other
    locked for a grant while it waits for the lock."""
    for provider in sorted({provider for provider, answer in answers if answer.outcome is Outcome.REFUNDED}):
        ledger.hold_fees(session, provider, posting=False)


def find_by_provider_data(session: Session, provider: str, key: str, value: str) -> Payment | None:
    """The payment registered with ``provider_data[key] == value`` (Orange's notif_token)."""
    query = select(Payment).where(Payment.provider == provider, Payment.provider_data[key].as_string() == value)
    return session.scalars(query.limit(1)).first()


def last_asked(session: Session, payment: Payment | None) -> datetime | None:
    """When the provider was last asked about ``payment`` and answered (None: never, or no payment)."""
    if payment is None:
        return None
    return session.scalar(
        select(func.max(Verification.asked_at)).where(
            Verification.payment_id == payment.id, Verification.outcome.is_not(None)
        )
    )


def flag(session: Session, payment: Payment, kind: FlagKind, detail: str) -> None:
    """Raise a flag once per (payment, kind); later details do not overwrite the first."""
    raised = session.execute(
        insert(session, PaymentFlag)
        .values(payment_id=payment.id, kind=kind, detail=detail)
        .on_conflict_do_nothing(index_elements=["payment_id", "kind"])
        .returning(PaymentFlag.id)
    ).first()
    if raised is not None:
        outbox.emit(
            session,
            "payment.flagged",
            product=outbox.product_of(session, payment),
            data={**outbox.payment_data(payment), "flag": kind.value, "detail": detail},
            now=datetime.now(UTC),
        )


# --------------------------------------------------------------------------- registration


def register(session: Session, reg: PaymentRegistration, raw: str, ctx: Context) -> tuple[RegisterOutcome, Payment]:
    """Record a payment registration. Adopts an orphan with the same reference."""
    plan = get_plan(session, reg.plan)
    if plan.currency != reg.currency:
        raise RegistrationConflict(f"plan {plan.code!r} is sold in {plan.currency}, not {reg.currency}")
    registered_at = reg.created_at or ctx.now
    fields = {
        "amount": reg.amount,
        "currency": reg.currency,
        "account": reg.account,
        "plan_code": reg.plan,
        "periods": reg.periods,
        "provider_data": reg.provider_data,
        "metadata_": reg.metadata,
        "registration_raw": raw,
        "registered_at": registered_at,
    }
    inserted = session.execute(
        insert(session, Payment)
        .values(
            provider=reg.provider.value,
            reference=reg.reference,
            status=PaymentStatus.REGISTERED,
            settled=False,
            check_count=0,
            created_at=ctx.now,
            updated_at=ctx.now,
            next_check_at=ctx.policy.next_check(0, ctx.now),
            **{("metadata" if k == "metadata_" else k): v for k, v in fields.items()},
        )
        .on_conflict_do_nothing(index_elements=["provider", "reference"])
        .returning(Payment.id)
    ).first()
    payment = find(session, reg.provider.value, reg.reference, lock=True)
    assert payment is not None  # noqa: S101 - inserted above or by a concurrent writer
    if inserted is not None:
        return RegisterOutcome.CREATED, payment
    if not payment.is_orphan:
        same = (
            payment.amount == reg.amount
            and payment.currency == reg.currency
            and payment.account == reg.account
            and payment.plan_code == reg.plan
            and payment.periods == reg.periods
        )
        if not same:
            raise RegistrationConflict(
                f"reference {reg.reference!r} is already registered at {reg.provider.value} with other "
                f"data (amount {payment.amount} {payment.currency}, account {payment.account!r}, "
                f"plan {payment.plan_code!r} x{payment.periods})"
            )
        return RegisterOutcome.DUPLICATE, payment
    _adopt(session, payment, fields, ctx)
    return RegisterOutcome.ADOPTED, payment


def _adopt(session: Session, payment: Payment, fields: dict[str, object], ctx: Context) -> None:
    """An orphan (paid before we knew it) meets its registration: settle it normally."""
    for key, value in fields.items():
        setattr(payment, key, value)
    payment.updated_at = ctx.now
    flag(session, payment, FlagKind.ADOPTED, "registration arrived after the provider's notification")
    if payment.status is PaymentStatus.SUCCEEDED and not payment.settled:
        suspense = journal(session, payment, SUSPENSE)
        decision = _settle_paid(session, payment, ctx)
        if suspense is not None and payment.settled:
            ledger.reverse(
                session,
                suspense,
                kind=SUSPENSE_REVERSAL,
                memo=f"orphan {payment.reference} adopted by its registration",
            )
        session.add(
            Verification(
                payment_id=payment.id,
                trigger="registration",
                outcome=payment.status.value,
                answered_amount=payment.confirmed_amount,
                answered_currency=payment.confirmed_currency,
                decision=f"orphan adopted: {decision}",
                created_at=ctx.now,
            )
        )
    elif payment.status not in FINAL_STATUSES:
        payment.next_check_at = ctx.now
    session.flush()


def journal(session: Session, payment: Payment, kind: str) -> Journal | None:
    """The payment's journal of ``kind``, if posted."""
    return session.scalars(select(Journal).where(Journal.payment_id == payment.id, Journal.kind == kind)).first()


# --------------------------------------------------------------------------- settlement


def lock_or_create_orphan(session: Session, provider: str, reference: str, ctx: Context) -> Payment:
    """The payment row, locked; an orphan row (no registration) if the reference is unknown."""
    session.execute(
        insert(session, Payment)
        .values(
            provider=provider,
            reference=reference,
            status=PaymentStatus.REGISTERED,
            settled=False,
            check_count=0,
            periods=1,
            provider_data={},
            created_at=ctx.now,
            updated_at=ctx.now,
        )
        .on_conflict_do_nothing(index_elements=["provider", "reference"])
    )
    payment = find(session, provider, reference, lock=True)
    assert payment is not None  # noqa: S101
    return payment


def apply_answer(
    session: Session,
    payment: Payment,
    answer: VerifiedStatus,
    ctx: Context,
    *,
    trigger: str,
    claim: Delivery | None = None,
    inbox_id: int | None = None,
    asked_at: datetime | None = None,
) -> Verification:
    """Move a locked payment with the provider's verified answer; record the attempt (``asked_at``:
    when the provider was asked, if it was asked live)."""
    step = transition(payment.status, answer.outcome)
    notes = [step.note]
    previous = payment.status
    payment.status = step.status
    payment.updated_at = ctx.now
    if answer.outcome in (Outcome.SUCCEEDED, Outcome.REFUNDED):
        payment.confirmed_amount = answer.amount if answer.amount is not None else payment.confirmed_amount
        payment.confirmed_currency = answer.currency or payment.confirmed_currency
        payment.provider_transaction_id = answer.provider_transaction_id or payment.provider_transaction_id
        payment.paid_at = answer.paid_at or payment.paid_at
    if step.flag is not None:
        flag(session, payment, step.flag, step.note)
    if payment.is_orphan:
        flag(session, payment, FlagKind.ORPHAN, "no registration for this reference")
    if claim is not None and _claim_disagrees(claim, answer):
        flag(
            session,
            payment,
            FlagKind.CLAIM_DISAGREES,
            f"webhook claimed {claim.claimed_amount} {claim.claimed_currency}, "
            f"provider confirmed {answer.amount} {answer.currency}",
        )
        notes.append("webhook claim differs from the provider's answer")
    if step.money_moved:
        notes.append(_settle_paid(session, payment, ctx, registered_amount_asked=answer.registered_amount_asked))
    if step.status is PaymentStatus.REFUNDED and previous is PaymentStatus.SUCCEEDED:
        notes.append(_refunded(session, payment, ctx, reason=f"reported by {payment.provider}", by=None))
    if step.status in FINAL_STATUSES:
        if previous is not step.status:
            payment.finalized_at = ctx.now
        if previous not in FINAL_STATUSES:  # counted once: a later refund or late success is flagged
            _note_final(session, payment, ctx)
        payment.next_check_at = None
    else:
        _schedule_or_expire(session, payment, ctx, notes)
    if claim is not None and claim.claimed_status:
        claimed = normalize_claim(claim.claimed_status)
        if claimed != answer.outcome.value:
            facts.note(
                session, "disagreement", provider=payment.provider, claimed=claimed, confirmed=answer.outcome.value
            )
    return _verification(
        session,
        payment,
        ctx,
        trigger=trigger,
        claim=claim,
        inbox_id=inbox_id,
        **_answered(answer),
        decision="; ".join(n for n in notes if n),
        asked_at=asked_at,
    )


def _answered(answer: VerifiedStatus) -> dict[str, Any]:
    """What a verification records of the provider's answer."""
    return {
        "outcome": answer.outcome.value,
        "provider_status": answer.provider_status,
        "provider_code": answer.provider_code,
        "provider_message": answer.provider_message,
        "answered_amount": answer.amount,
        "answered_currency": answer.currency,
        "raw_response": answer.raw,
    }


# --------------------------------------------------------------------------- settlement, set-wise


@dataclass(frozen=True, slots=True)
class Answer:
    """A provider's answer about a locked payment, for ``apply_answers``."""

    payment: Payment
    answer: VerifiedStatus
    claim: Delivery | None
    inbox_id: int | None
    asked_at: datetime | None


def is_plain_success(payment: Payment, answer: VerifiedStatus, claim: Delivery | None, plans: dict[str, Plan]) -> bool:
    """The common case, settled set-wise by ``apply_answers``: a registered (or pending) payment the
    provider confirms paid, for the amount and currency registered (or, with no amount in its
    answer, to a question that named the registered amount), as the callback said, with a plan in
    the catalogue. Anything else takes ``apply_answer``."""
    return (
        payment.status in (PaymentStatus.REGISTERED, PaymentStatus.PENDING)
        and answer.outcome is Outcome.SUCCEEDED
        and not payment.is_orphan
        and not payment.settled
        and (
            (answer.amount is not None and answer.amount == payment.amount and answer.currency == payment.currency)
            # No amount echoed to a question that named the registered one (Orange): settled at it.
            or (answer.amount is None and answer.currency is None and answer.registered_amount_asked)
        )
        and payment.account is not None
        and payment.plan_code in plans
        and plans[payment.plan_code].active
        and (claim is None or not _claim_disagrees(claim, answer))
    )


def _settlement_journal(payment: Payment) -> ledger.NewJournal:
    """The journal of a plain success (``_settle_paid`` posts the same one)."""
    assert payment.amount is not None and payment.currency is not None  # noqa: S101 - registered
    return ledger.NewJournal(
        ledger.transfer(ledger.clearing(payment.provider), ledger.REVENUE, payment.amount, payment.currency),
        kind=SETTLEMENT,
        payment_id=payment.id,
        memo=f"{payment.reference}: {payment.periods} x {payment.plan_code} for {payment.account}",
    )


def apply_answers(
    session: Session, answers: list[Answer], ctx: Context, *, trigger: str, plans: dict[str, Plan]
) -> list[str]:
    """``apply_answer`` for many plain successes (``is_plain_success`` with the same ``plans``, which
    the caller holds, as it holds the payments' locks, taken in id order), each table written with one
    statement and without the ORM's unit of work: one posts every journal with its entries, one locks
    the accounts' subscriptions, then one each writes the payments, the subscriptions, the grants, the
    verifications and the events. Two payments of one account stack their periods as they would one
    after the other. Same rows, facts and events as ``apply_answer``; returns each one's decision.
    The payments' ORM objects are brought up to date (the rows are written by the statements)."""
    if not answers:
        return []
    session.flush()  # what this transaction changed through the ORM is in the rows read below
    ledger.post_many(session, [_settlement_journal(a.payment) for a in answers])
    subs = subscriptions.lock_many(
        session,
        sorted(
            {
                (plans[str(a.payment.plan_code)].product, str(a.payment.account), str(a.payment.plan_code))
                for a in answers
            }
        ),
        ctx.now,
    )
    payment_rows: list[dict[str, Any]] = []
    grants: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    verifications: list[dict[str, Any]] = []
    decisions: list[str] = []
    for a in answers:
        payment, answer, plan = a.payment, a.answer, plans[str(a.payment.plan_code)]
        values = {
            "status": PaymentStatus.SUCCEEDED,
            "updated_at": ctx.now,
            "confirmed_amount": answer.amount,
            "confirmed_currency": answer.currency,
            "provider_transaction_id": answer.provider_transaction_id or payment.provider_transaction_id,
            "paid_at": answer.paid_at or payment.paid_at,
            "settled": True,
            "finalized_at": ctx.now,
            "next_check_at": None,
        }
        for name, value in values.items():
            set_committed_value(payment, name, value)
        payment_rows.append({"id": payment.id, **values})
        grant, granted = subscriptions.grant_held(
            session, subs[(plan.product, str(payment.account))], plan, payment, now=ctx.now, tz=ctx.tz
        )
        grants.append(grant)
        events.append(granted)
        events.append(_final(session, payment, ctx, product=plan.product))
        if a.claim is not None and a.claim.claimed_status and normalize_claim(a.claim.claimed_status) != "succeeded":
            facts.note(
                session,
                "disagreement",
                provider=payment.provider,
                claimed=normalize_claim(a.claim.claimed_status),
                confirmed=answer.outcome.value,
            )
        decision = (
            f"confirmed paid; settled: {grant['days']} days granted, access until {grant['ends_at'].isoformat()}"
            + ("" if answer.amount is not None else f"; {UNCONFIRMED_AMOUNT}")
        )
        decisions.append(decision)
        verifications.append(
            _verification_row(
                payment,
                ctx,
                trigger=trigger,
                claim=a.claim,
                inbox_id=a.inbox_id,
                **_answered(answer),
                decision=decision,
                asked_at=a.asked_at,
            )
        )
    bulk.update_rows(session, cast(Table, Payment.__table__), payment_rows)
    subscriptions.write_held(session, list(subs.values()), grants)
    bulk.insert_rows(session, cast(Table, Verification.__table__), verifications)
    outbox.emit_rows(session, events)
    return decisions


def record_error(
    session: Session,
    payment: Payment,
    error: str,
    ctx: Context,
    *,
    trigger: str,
    claim: Delivery | None = None,
    inbox_id: int | None = None,
    reschedule: bool = True,
) -> Verification:
    """A verification that got no answer: keep it in the history, try again later."""
    notes = ["no answer from the provider"]
    if reschedule and payment.status not in FINAL_STATUSES:
        _schedule_or_expire(session, payment, ctx, notes)
    return _verification(
        session,
        payment,
        ctx,
        trigger=trigger,
        claim=claim,
        inbox_id=inbox_id,
        error=error,
        decision="; ".join(notes),
    )


def record_refusal(
    session: Session,
    payment: Payment,
    error: str,
    ctx: Context,
    *,
    trigger: str,
    claim: Delivery | None = None,
    inbox_id: int | None = None,
) -> Verification:
    """The provider refused the question for the payment's own data (Orange's HTTP 400 for a pay_token
    or amount that is not the order's). Asking again would get the same refusal, so the
    payment is no longer re-checked on schedule, nor expired (its status is unknown, not unpaid), and
    is flagged ``provider_refused`` (once; the app is told). The nightly reconciliation still classifies
    it against the statement (healed if paid there, ``missing_after_sla`` if absent), and a replayed
    delivery asks again."""
    flag(session, payment, FlagKind.PROVIDER_REFUSED, f"the provider refused the status question: {error}"[:2000])
    notes = ["the provider refused the question (not an outage): flagged provider_refused"]
    if payment.status not in FINAL_STATUSES:
        payment.next_check_at = None
        notes.append("no more re-checks on schedule (the same question gets the same refusal)")
    return _verification(
        session,
        payment,
        ctx,
        trigger=trigger,
        claim=claim,
        inbox_id=inbox_id,
        error=error,
        decision="; ".join(notes),
    )


def _verification(
    session: Session,
    payment: Payment,
    ctx: Context,
    *,
    trigger: str,
    claim: Delivery | None,
    inbox_id: int | None,
    **answer: Any,
) -> Verification:
    """Store one entry of the verification history: what was claimed next to what was answered."""
    verification = _new_verification(payment, ctx, trigger=trigger, claim=claim, inbox_id=inbox_id, **answer)
    session.add(verification)
    session.flush()
    return verification


def _new_verification(
    payment: Payment, ctx: Context, *, trigger: str, claim: Delivery | None, inbox_id: int | None, **answer: Any
) -> Verification:
    return Verification(**_verification_row(payment, ctx, trigger=trigger, claim=claim, inbox_id=inbox_id, **answer))


def _verification_row(
    payment: Payment, ctx: Context, *, trigger: str, claim: Delivery | None, inbox_id: int | None, **answer: Any
) -> dict[str, Any]:
    return {
        "payment_id": payment.id,
        "inbox_id": inbox_id,
        "trigger": trigger,
        "claimed_status": claim.claimed_status if claim else None,
        "claimed_amount": claim.claimed_amount if claim else None,
        "claimed_currency": claim.claimed_currency if claim else None,
        "created_at": ctx.now,
        **answer,
    }


def record_deferral(
    session: Session, payment: Payment, why: str, ctx: Context, delay: float, *, trigger: str
) -> Verification:
    """A re-check put off (the provider call budget is spent): no attempt counted, none lost."""
    payment.next_check_at = ctx.now + timedelta(seconds=delay)
    verification = Verification(payment_id=payment.id, trigger=trigger, decision=why, created_at=ctx.now)
    session.add(verification)
    session.flush()
    return verification


def _note_final(session: Session, payment: Payment, ctx: Context) -> None:
    session.add(OutboxEvent(**_final(session, payment, ctx, product=outbox.product_of(session, payment))))


def _final(session: Session, payment: Payment, ctx: Context, *, product: str | None) -> dict[str, Any]:
    """A payment became final: the fact noted, and the event's row returned."""
    since = payment.registered_at or payment.created_at
    facts.note(
        session,
        "payment_final",
        provider=payment.provider,
        status=payment.status.value,
        seconds=max(0.0, (ctx.now - since).total_seconds()),
    )
    data = outbox.payment_data(payment)
    return outbox.event_row(f"payment.{payment.status.value}", product=product, data=data, now=ctx.now)


#: How the providers' own status words in a callback read, for the disagreement metric.
_CLAIMS = {
    "succeeded": {"SUCCESSFUL", "SUCCESS", "SUCCES", "ACCEPTED", "SUCCEEDED", "COMPLETE/SUCCEEDED"},
    "failed": {"FAILED", "REFUSED", "CANCELLED", "COMPLETE/CANCELLED", "EXPIRED", "TRANSACTION_CANCEL"},
    "pending": {"PENDING", "INITIATED", "WAITING_FOR_CUSTOMER", "OPEN/PROCESSING", "PROCESSING"},
}


def normalize_claim(claimed: str) -> str:
    """A callback's status word as succeeded / failed / pending / other (bounded metric labels)."""
    word = claimed.strip().upper()
    for outcome, words in _CLAIMS.items():
        if word in words:
            return outcome
    return "other"


def refund(session: Session, payment: Payment, ctx: Context, *, reason: str, by: str) -> str:
    """An operator records a refund the provider made (or a reversal): same effects as the provider's word."""
    if payment.status is not PaymentStatus.SUCCEEDED:
        raise ValueError(f"payment {payment.reference} is {payment.status.value}: only a succeeded payment is refunded")
    payment.status = PaymentStatus.REFUNDED
    payment.updated_at = ctx.now
    decision = _refunded(session, payment, ctx, reason=reason, by=by)
    _verification(session, payment, ctx, trigger="manual", claim=None, inbox_id=None,
                  outcome="refunded", decision=f"refund recorded by {by}: {reason}; {decision}")  # fmt: skip
    return decision


def _refunded(session: Session, payment: Payment, ctx: Context, *, reason: str, by: str | None) -> str:
    """Reverse the payment's journals with new ones, take its access back, tell the app."""
    ledger.hold_fees(session, payment.provider, posting=False)  # a fee posted meanwhile is reversed too
    reversed_kinds = []
    fee = session.get(FeePosting, payment.id)
    for original in session.scalars(
        select(Journal).where(Journal.payment_id == payment.id, Journal.reverses_id.is_(None)).order_by(Journal.id)
    ).all():
        # A fee is reversed from its posting, below: a fee journal of the payment's own (before migration 0025, which
        # gave each its posting, and refuses new ones) carries that payment's fee only, a run's carries many.
        if original.kind == FEE:
            continue
        kind = f"{original.kind}_refund"
        if journal(session, payment, kind) is None:
            ledger.reverse(session, original, kind=kind, memo=f"{payment.reference} refunded: {reason}")
            reversed_kinds.append(original.kind)
    if fee is not None and journal(session, payment, FEE_REFUND) is None:
        ledger.post(
            session,
            ledger.transfer(ledger.clearing(payment.provider), ledger.fees(payment.provider), fee.amount, fee.currency),
            kind=FEE_REFUND,
            payment_id=payment.id,
            memo=f"{payment.reference} refunded: {reason} (its fee, in journal {fee.journal_id})",
            reverses_id=fee.journal_id,
        )
        reversed_kinds.append(FEE)
    notes = [f"refunded: journals reversed ({', '.join(reversed_kinds) or 'none'})"]
    grant = session.scalars(
        select(SubscriptionGrant).where(SubscriptionGrant.payment_id == payment.id, SubscriptionGrant.kind == "payment")
    ).first()
    if grant is not None:
        plan = session.get(Plan, grant.plan_code)
        if plan is not None and payment.account is not None:
            shortened = subscriptions.shorten(
                session, plan.product, payment.account, grant.days, kind="refund", reason=reason, by=by,
                now=ctx.now, tz=ctx.tz, payment_id=payment.id,
            )  # fmt: skip
            if shortened is not None:
                notes.append(f"access shortened by {-shortened.days} days")
    outbox.emit(
        session,
        "payment.refunded",
        product=outbox.product_of(session, payment),
        data={**outbox.payment_data(payment), "reason": reason},
        now=ctx.now,
    )
    return "; ".join(notes)


def _schedule_or_expire(session: Session, payment: Payment, ctx: Context, notes: list[str]) -> None:
    payment.check_count += 1
    since = payment.registered_at or payment.created_at
    if ctx.now >= since + timedelta(seconds=ctx.policy.give_up_after):
        payment.status = PaymentStatus.EXPIRED
        payment.finalized_at = ctx.now
        payment.next_check_at = None
        _note_final(session, payment, ctx)
        notes.append(f"gave up after {ctx.policy.give_up_after} s without a final answer: expired")
        return
    payment.next_check_at = ctx.policy.next_check(payment.check_count - 1, ctx.now)


def _claim_disagrees(claim: Delivery, answer: VerifiedStatus) -> bool:
    if claim.claimed_amount is not None and answer.amount is not None and claim.claimed_amount != answer.amount:
        return True
    return bool(
        claim.claimed_currency is not None and answer.currency is not None and claim.claimed_currency != answer.currency
    )


#: The decision's note when a success is settled at the registered amount the provider did not echo.
UNCONFIRMED_AMOUNT = (
    "amount not confirmed by the provider (its answer carries none; the question named the registered "
    "amount): settled at the registered amount, to be confirmed by the statement at reconciliation"
)


def _settle_paid(session: Session, payment: Payment, ctx: Context, *, registered_amount_asked: bool = False) -> str:
    """Post the money of a confirmed success and grant access, or hold it in suspense.

    ``registered_amount_asked``: the provider's answer is to a question that named the registered
    amount (Orange); without an amount of its own, it is settled at the registered one, which is not
    recorded as confirmed."""
    amount = payment.confirmed_amount
    currency = payment.confirmed_currency
    unconfirmed = (
        amount is None
        and currency is None
        and registered_amount_asked
        and not payment.is_orphan
        and payment.amount is not None
        and payment.currency is not None
    )
    if unconfirmed:
        amount, currency = payment.amount, payment.currency
    if amount is None or currency is None:
        # The provider said paid without an amount: we cannot post what we do not know.
        flag(session, payment, FlagKind.AMOUNT_MISMATCH, "provider confirmed success without an amount")
        return "success without amount: nothing posted, flagged"
    clearing = ledger.clearing(payment.provider)
    if payment.is_orphan:
        if journal(session, payment, SUSPENSE) is None:
            ledger.post(
                session,
                ledger.transfer(clearing, ledger.SUSPENSE, amount, currency),
                kind=SUSPENSE,
                payment_id=payment.id,
                memo=f"orphan {payment.reference}: paid, no registration",
            )
        return "orphan: money held in suspense"
    mismatch = None
    if currency != payment.currency:
        mismatch = (
            FlagKind.CURRENCY_MISMATCH,
            f"registered {payment.currency}, provider confirmed {currency}",
        )
    elif amount != payment.amount:
        mismatch = (
            FlagKind.AMOUNT_MISMATCH,
            f"registered {payment.amount} {payment.currency}, provider confirmed {amount} {currency}",
        )
    if mismatch is not None:
        flag(session, payment, *mismatch)
        if journal(session, payment, SUSPENSE) is None:
            ledger.post(
                session,
                ledger.transfer(clearing, ledger.SUSPENSE, amount, currency),
                kind=SUSPENSE,
                payment_id=payment.id,
                memo=f"{payment.reference}: {mismatch[1]}",
            )
        return f"{mismatch[0].value}: no access granted, money held in suspense"
    if payment.settled:
        return "already settled"
    journal_ = _settlement_journal(payment)  # the registered amount: the confirmed one, or the one asked about
    ledger.post(session, journal_.lines, kind=journal_.kind, payment_id=payment.id, memo=journal_.memo)
    result = grant_for_payment(session, payment, ctx.now, ctx.tz)
    payment.settled = True
    settled = f"settled: {result.grant.days} days granted, access until {result.grant.ends_at.isoformat()}"
    return f"{settled}; {UNCONFIRMED_AMOUNT}" if unconfirmed else settled


def lease_due(session: Session, now: datetime, *, limit: int, lease: timedelta) -> list[int]:
    """Ids of non-final payments due for a re-check, oldest due first, leased until ``now + lease`` (SKIP
    LOCKED: two janitors never take one; a lost re-check message only delays it by the lease)."""
    return lease_rows(
        session, Payment, Payment.next_check_at, until=now + lease, limit=limit,
        where=[Payment.status.in_([PaymentStatus.REGISTERED, PaymentStatus.PENDING]), Payment.next_check_at <= now],
    )  # fmt: skip


def business_time() -> Any:
    """When a payment counts for a business day: paid, else registered, else created (the classification's
    ``coalesce(paid_at, registered_at, created_at)``, ``reconciliation.nightly.matching``)."""
    return func.coalesce(Payment.paid_at, Payment.registered_at, Payment.created_at)


def to_confirm(session: Session, provider: str, start: datetime, end: datetime) -> Sequence[Payment]:
    """The payments of ``provider`` in the business window [start, end) a run asks the status API about when
    there is no statement: every one not final yet, and every success (to be confirmed)."""
    when = business_time()
    return session.scalars(
        select(Payment).where(
            Payment.provider == provider,
            when >= start,
            when < end,
            Payment.status.in_([PaymentStatus.REGISTERED, PaymentStatus.PENDING, PaymentStatus.SUCCEEDED]),
        )
    ).all()
