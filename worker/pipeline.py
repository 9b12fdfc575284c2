"""The pipeline of one webhook (design §2), as plain functions the Celery tasks wrap.

  1. validate the envelope            -> invalid: dead letter (raw kept, reason)
  2. parse the delivery               -> malformed: inbox + dead letter
  3. inbox insert ON CONFLICT         -> repeat: counter +1, first raw body kept
  4. authenticate                     -> forged: quarantined, no API call spent
  5. verify with the provider's API   -> transient error: retried later, then dead letter
  6. settle in one transaction with the payment row locked

No transaction is open while the provider is being called.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from providers.base import (
    AwaitingRegistration,
    Delivery,
    DeliveryKind,
    ForgedDelivery,
    MalformedDelivery,
    ProviderClient,
    ProviderError,
    ProviderNotFound,
    RegistrationView,
    VerifiedStatus,
)
from reconciliation import deadletters, inbox, payments
from reconciliation.db import transaction
from reconciliation.models import FINAL_STATUSES, InboxDelivery, InboxStatus, Payment, PaymentStatus
from reconciliation.subscriptions import UnknownPlan, expire_due
from schemas.messages import PaymentRegistration, WebhookEnvelope
from worker import metrics
from worker.budget import rounded_wait
from worker.observability import timed_call
from worker.runtime import Runtime

log = logging.getLogger(__name__)

INGEST_TASK = "payrecon.ingest_webhook"
REGISTER_TASK = "payrecon.register_payment"


class Outcome(StrEnum):
    """What happened to one message; also the ``outcome`` label of the delivery metrics."""

    ACCEPTED = "accepted"  # verified and settled (paid, failed or still pending)
    DUPLICATE = "duplicate"
    FORGED = "forged"
    MALFORMED = "malformed"  # envelope or body unreadable: dead-lettered
    ORPHAN = "orphan"  # verified, but no registration known: held in suspense
    MISMATCH = "mismatch"  # amount or currency differs from the registration
    PING = "ping"
    RETRY = "retry"  # provider unavailable: try again later
    FAILED = "failed"  # gave up: dead-lettered
    CREATED = "created"  # registration stored
    ADOPTED = "adopted"  # registration adopted an orphan


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    detail: str = ""
    inbox_id: int | None = None
    reference: str | None = None
    #: For RETRY: wait this long, without counting an attempt (budget, awaiting registration).
    delay: float | None = None
    provider: str | None = None


def _raw(payload: Any) -> str:
    try:
        return json.dumps(payload, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        return repr(payload)


def _errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(message)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def dead_letter(rt: Runtime, task: str, reason: str, detail: str, payload: Any) -> None:
    """Keep input that could not be processed, whole, with the reason."""
    _dead_letter(rt, task, reason, detail, _raw(payload))


def _dead_letter(rt: Runtime, task: str, reason: str, detail: str, payload: str, **where: str | None) -> None:
    with transaction(rt.sessions) as session:
        deadletters.record(
            session, task=task, reason=reason, detail=detail, payload=payload, now=rt.context().now, **where
        )
    log.warning("dead letter %s: %s", reason, detail)


# --------------------------------------------------------------------------- webhooks


def ingest_webhook(rt: Runtime, payload: Any) -> Result:
    """Steps 1-6 for one delivery. RETRY: verify again later (``delay`` set: not an attempt)."""
    raw = _raw(payload)
    try:
        envelope = WebhookEnvelope.model_validate(payload)
    except ValidationError as exc:
        detail = f"invalid webhook envelope: {_errors(exc)}"
        _dead_letter(rt, INGEST_TASK, "invalid_envelope", detail, raw)
        return Result(Outcome.MALFORMED, detail)
    provider = envelope.provider.value
    client = rt.client(provider)
    if client is None:
        detail = f"provider {provider!r} is not configured on this worker"
        _dead_letter(rt, INGEST_TASK, "provider_not_configured", detail, raw, provider=provider)
        return Result(Outcome.FAILED, detail)

    try:
        delivery = client.parse_delivery(envelope)
    except MalformedDelivery as exc:
        return _store_malformed(rt, envelope, raw, str(exc))

    with transaction(rt.sessions) as session:
        payment = _resolve(session, provider, delivery)
        status, detail = InboxStatus.RECEIVED, ""
        if delivery.kind is DeliveryKind.PING:
            status = InboxStatus.PING
        elif delivery.kind is DeliveryKind.IGNORED:
            status = InboxStatus.IGNORED
        else:
            status, detail = _authenticate(client, envelope, delivery, payment)
        stored = inbox.store(
            session,
            envelope,
            raw,
            dedupe_key=delivery.dedupe_key,
            reference=payment.reference if payment is not None else delivery.reference,
            status=status,
            detail=detail,
            now=rt.context().now,
        )
        retry_given_up = not stored.is_new and stored.status is InboxStatus.FAILED and inbox.reopen(session, stored.id)
    reference = payment.reference if payment is not None else delivery.reference
    if retry_given_up:
        log.info("%s delivery %s arrived again after a give-up: verifying again", provider, stored.id)
    elif not stored.is_new:
        return Result(Outcome.DUPLICATE, f"repeat of inbox delivery {stored.id}", stored.id, reference)
    if status is InboxStatus.FORGED:
        log.warning("forged %s delivery for %s quarantined: %s", provider, reference or "-", detail)
        return Result(Outcome.FORGED, detail, stored.id, reference)
    if status is InboxStatus.PING:
        return Result(Outcome.PING, "", stored.id)
    if status is InboxStatus.IGNORED:
        return Result(Outcome.ACCEPTED, "authentic delivery about nothing we track", stored.id)
    if detail:  # awaiting its registration to be authenticated
        return Result(Outcome.RETRY, detail, stored.id, reference, delay=AWAIT_REGISTRATION_DELAY)
    return _verify_delivery(rt, client, delivery, payment, stored.id)


#: How long a delivery that needs its registration to be authenticated waits between tries.
AWAIT_REGISTRATION_DELAY = 30.0


def _resolve(session: Session, provider: str, delivery: Delivery) -> Payment | None:
    """The payment a delivery is about: by our reference, else by a provider-side token."""
    if delivery.reference is not None:
        return payments.find(session, provider, delivery.reference)
    if delivery.lookup is not None:
        return payments.find_by_provider_data(session, provider, *delivery.lookup)
    return None


def _authenticate(
    client: ProviderClient, envelope: WebhookEnvelope, delivery: Delivery, payment: Payment | None
) -> tuple[InboxStatus, str]:
    """(RECEIVED, "") if authentic; (FORGED, why); (RECEIVED, why) if it must wait for its registration."""
    registration = payments.registration_view(payment) if payment is not None and not payment.is_orphan else None
    try:
        client.authenticate(envelope, delivery, registration)
    except ForgedDelivery as exc:
        return InboxStatus.FORGED, str(exc)
    except AwaitingRegistration as exc:
        return InboxStatus.RECEIVED, f"awaiting registration: {exc}"
    if delivery.reference is None and payment is None:
        return InboxStatus.RECEIVED, "awaiting registration: the delivery does not name its payment"
    return InboxStatus.RECEIVED, ""


def _store_malformed(rt: Runtime, envelope: WebhookEnvelope, raw: str, detail: str) -> Result:
    log.warning("malformed %s delivery kept and dead-lettered: %s", envelope.provider.value, detail)
    digest = hashlib.sha256(f"{envelope.method}\n{envelope.body}".encode()).hexdigest()
    with transaction(rt.sessions) as session:
        stored = inbox.store(
            session,
            envelope,
            raw,
            dedupe_key=f"malformed:{digest}",
            reference=None,
            status=InboxStatus.MALFORMED,
            detail=detail,
            now=rt.context().now,
        )
        if stored.is_new:
            deadletters.record(
                session,
                task=INGEST_TASK,
                reason="malformed_body",
                detail=detail,
                payload=raw,
                provider=envelope.provider.value,
                now=rt.context().now,
            )
    return Result(Outcome.MALFORMED, detail, stored.id)


def retry_delivery(rt: Runtime, inbox_id: int, *, final_attempt: bool) -> Result:
    """A stored delivery, again: after a transient provider error, an exhausted budget, or while
    it waited for the registration it is authenticated against."""
    with transaction(rt.sessions) as session:
        row = session.get(InboxDelivery, inbox_id)
        if row is None or row.status is not InboxStatus.RECEIVED:
            return Result(Outcome.DUPLICATE, "already settled", inbox_id, provider=row.provider if row else None)
        provider = row.provider
        envelope = WebhookEnvelope.model_validate_json(row.envelope_raw)
        client = rt.client(provider)
        if client is None:
            return Result(Outcome.FAILED, f"provider {provider!r} is not configured", inbox_id, provider=provider)
        delivery = client.parse_delivery(envelope)
        payment = _resolve(session, provider, delivery)
        status, detail = _authenticate(client, envelope, delivery, payment)
        if status is InboxStatus.FORGED:
            inbox.mark(session, inbox_id, InboxStatus.FORGED, detail)
            return Result(Outcome.FORGED, detail, inbox_id, delivery.reference, provider=provider)
    if detail:
        result = Result(
            Outcome.RETRY, detail, inbox_id, delivery.reference, delay=AWAIT_REGISTRATION_DELAY, provider=provider
        )
    else:
        result = _verify_delivery(rt, client, delivery, payment, inbox_id)
    if result.outcome is Outcome.RETRY and final_attempt:
        why = "provider still unavailable after retries" if not detail else "its registration never arrived"
        detail = f"{why}: {result.detail}"
        with transaction(rt.sessions) as session:
            inbox.mark(session, inbox_id, InboxStatus.FAILED, detail)
            deadletters.record(
                session,
                task=INGEST_TASK,
                reason="provider_unavailable" if not result.detail.startswith("awaiting") else "unauthenticated",
                detail=detail,
                payload=row.envelope_raw,
                provider=row.provider,
                reference=row.reference,
                now=rt.context().now,
            )
        return Result(Outcome.FAILED, detail, inbox_id, delivery.reference, provider=provider)
    return result


def _verify_delivery(
    rt: Runtime, client: ProviderClient, delivery: Delivery, payment: Payment | None, inbox_id: int
) -> Result:
    """Gates (finality, budgets), the provider call, then settlement; the result names its provider."""
    return replace(_verify_and_settle(rt, client, delivery, payment, inbox_id), provider=client.name)


def _verify_and_settle(
    rt: Runtime, client: ProviderClient, delivery: Delivery, payment: Payment | None, inbox_id: int
) -> Result:
    provider = client.name
    profile = rt.profile(provider)
    reference = payment.reference if payment is not None else delivery.reference
    assert reference is not None  # noqa: S101 - resolved or named by the delivery
    if not profile.callbacks_authenticated:
        if payment is not None and payment.status in UNAUTHENTICATED_FINAL:
            detail = f"payment already {payment.status.value}: an unauthenticated callback spends no API call"
            with transaction(rt.sessions) as session:
                inbox.mark(session, inbox_id, InboxStatus.PROCESSED, detail)
            return Result(Outcome.DUPLICATE, detail, inbox_id, reference)
        assert profile.callback_rate is not None and profile.callback_burst is not None  # noqa: S101
        wait = rt.budget.take(f"callbacks:{provider}", profile.callback_rate, profile.callback_burst)
        if wait > 0:
            metrics.BUDGET_WAITS.labels(provider, "callbacks").inc()
            return _deferred(inbox_id, reference, wait, "unauthenticated callbacks are rate-limited")
    wait = rt.budget.take(f"api:{provider}", profile.api_rate, profile.api_burst)
    if wait > 0:
        metrics.BUDGET_WAITS.labels(provider, "api").inc()
        return _deferred(inbox_id, reference, wait, f"{provider} call budget exhausted")
    view = (
        payments.registration_view(payment)
        if payment is not None and not payment.is_orphan
        else RegistrationView(reference=reference)
    )
    try:
        answer = timed_call(provider, "status", lambda: client.check(view))
    except ProviderError as exc:
        return _verification_failed(rt, provider, reference, delivery, exc, inbox_id=inbox_id)
    with transaction(rt.sessions) as session:
        ctx = rt.context(provider)
        locked = payments.lock_or_create_orphan(session, provider, reference, ctx)
        verification = payments.apply_answer(
            session, locked, answer, ctx, trigger="webhook", claim=delivery, inbox_id=inbox_id
        )
        inbox.mark(session, inbox_id, InboxStatus.PROCESSED, verification.decision)
        outcome = _classify(locked, answer)
    return Result(outcome, verification.decision, inbox_id, reference)


#: Statuses an unauthenticated callback cannot change (a provider's own final answers).
UNAUTHENTICATED_FINAL = frozenset({PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.REFUNDED})


def _deferred(inbox_id: int, reference: str, wait: float, why: str) -> Result:
    delay = rounded_wait(wait)
    return Result(Outcome.RETRY, f"{why}: deferred {delay:.2f} s", inbox_id, reference, delay=delay)


def _classify(payment: Payment, answer: VerifiedStatus) -> Outcome:
    if payment.is_orphan:
        return Outcome.ORPHAN
    if payment.status is PaymentStatus.SUCCEEDED and not payment.settled:
        return Outcome.MISMATCH
    return Outcome.ACCEPTED


def _not_yet_visible(rt: Runtime, provider: str, payment: Payment | None, exc: ProviderError, now: datetime) -> bool:
    """A "not found" right after registration (MoMo's 202-then-404 window) is not a failure."""
    grace = rt.profile(provider).not_found_grace
    if not isinstance(exc, ProviderNotFound) or not grace or payment is None or payment.registered_at is None:
        return False
    return now < payment.registered_at + timedelta(seconds=grace)


def _verification_failed(
    rt: Runtime, provider: str, reference: str, delivery: Delivery, exc: ProviderError, *, inbox_id: int
) -> Result:
    with transaction(rt.sessions) as session:
        ctx = rt.context(provider)
        payment = payments.find(session, provider, reference, lock=True)
        if payment is not None:
            payments.record_error(
                session, payment, str(exc), ctx, trigger="webhook", claim=delivery, inbox_id=inbox_id, reschedule=False
            )
        if not exc.retryable and not _not_yet_visible(rt, provider, payment, exc, ctx.now):
            detail = f"provider refused the verification: {exc}"
            inbox.mark(session, inbox_id, InboxStatus.FAILED, detail)
            row = session.get(InboxDelivery, inbox_id)
            deadletters.record(
                session,
                task=INGEST_TASK,
                reason="provider_error",
                detail=detail,
                payload=row.envelope_raw if row else "",
                provider=provider,
                reference=reference,
                now=ctx.now,
            )
            return Result(Outcome.FAILED, detail, inbox_id, reference)
    return Result(Outcome.RETRY, str(exc), inbox_id, reference)


# --------------------------------------------------------------------------- registrations


def register_payment(rt: Runtime, payload: Any) -> Result:
    raw = _raw(payload)
    try:
        registration = PaymentRegistration.model_validate(payload)
    except ValidationError as exc:
        detail = f"invalid payment registration: {_errors(exc)}"
        _dead_letter(rt, REGISTER_TASK, "invalid_registration", detail, raw)
        return Result(Outcome.MALFORMED, detail)
    try:
        with transaction(rt.sessions) as session:
            outcome, payment = payments.register(session, registration, raw, rt.context(registration.provider.value))
            reference = payment.reference
    except (UnknownPlan, payments.RegistrationConflict) as exc:
        reason = "unknown_plan" if isinstance(exc, UnknownPlan) else "registration_conflict"
        _dead_letter(
            rt,
            REGISTER_TASK,
            reason,
            str(exc),
            raw,
            provider=registration.provider.value,
            reference=registration.reference,
        )
        return Result(Outcome.FAILED, str(exc), reference=registration.reference)
    mapped = {
        payments.RegisterOutcome.CREATED: Outcome.CREATED,
        payments.RegisterOutcome.DUPLICATE: Outcome.DUPLICATE,
        payments.RegisterOutcome.ADOPTED: Outcome.ADOPTED,
    }[outcome]
    return Result(mapped, reference=reference)


# --------------------------------------------------------------------------- janitor


def claim_due(rt: Runtime, *, limit: int = 500, lease: int = 300, now: datetime | None = None) -> list[int]:
    """Ids of non-final payments due for a re-check, leased so that no other janitor takes them."""
    ctx = rt.context(now=now)
    with transaction(rt.sessions) as session:
        due = (
            select(Payment.id)
            .where(
                Payment.status.in_([PaymentStatus.REGISTERED, PaymentStatus.PENDING]),
                Payment.next_check_at <= ctx.now,
            )
            .order_by(Payment.next_check_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        ids = list(session.scalars(due))
        if ids:
            session.execute(
                update(Payment).where(Payment.id.in_(ids)).values(next_check_at=ctx.now + timedelta(seconds=lease))
            )
    return ids


def verify_payment(rt: Runtime, payment_id: int, *, now: datetime | None = None, trigger: str = "recheck") -> Result:
    """Ask the provider about one payment and settle the answer (no callback needed)."""
    with transaction(rt.sessions) as session:
        payment = session.get(Payment, payment_id)
        if payment is None:
            return Result(Outcome.FAILED, f"no payment {payment_id}")
        if payment.status in FINAL_STATUSES:
            return Result(Outcome.DUPLICATE, f"already {payment.status.value}", reference=payment.reference)
        provider, reference = payment.provider, payment.reference
        view = payments.registration_view(payment)
    client = rt.client(provider)
    error: ProviderError | str | None = None
    answer: VerifiedStatus | None = None
    deferred = 0.0
    if client is None:
        error = f"provider {provider!r} is not configured on this worker"
    else:
        profile = rt.profile(provider)
        deferred = rt.budget.take(f"api:{provider}", profile.api_rate, profile.api_burst)
        if deferred:
            metrics.BUDGET_WAITS.labels(provider, "api").inc()
        else:
            try:
                answer = timed_call(provider, "status", lambda: client.check(view))
            except ProviderError as exc:
                error = exc
    with transaction(rt.sessions) as session:
        ctx = rt.context(provider, now)
        locked = payments.find(session, provider, reference, lock=True)
        assert locked is not None  # noqa: S101 - payments are never deleted
        if deferred:
            delay = rounded_wait(deferred)
            verification = payments.record_deferral(
                session,
                locked,
                f"{provider} call budget exhausted: deferred {delay:.2f} s",
                ctx,
                delay,
                trigger=trigger,
            )
            return Result(Outcome.RETRY, verification.decision, reference=reference, delay=delay)
        if answer is None:
            message = str(error)
            if isinstance(error, ProviderError) and _not_yet_visible(rt, provider, locked, error, ctx.now):
                message = f"not visible at the provider yet (normal shortly after registration): {error}"
            verification = payments.record_error(session, locked, message, ctx, trigger=trigger)
            return Result(Outcome.RETRY, verification.decision, reference=reference)
        verification = payments.apply_answer(session, locked, answer, ctx, trigger=trigger)
        return Result(_classify(locked, answer), verification.decision, reference=reference)


def expire_subscriptions(rt: Runtime, *, now: datetime | None = None) -> int:
    with transaction(rt.sessions) as session:
        return len(expire_due(session, rt.context(now=now).now))
