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
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, update

from providers.base import (
    Delivery,
    DeliveryKind,
    ForgedDelivery,
    MalformedDelivery,
    ProviderClient,
    ProviderError,
    RegistrationView,
    VerifiedStatus,
)
from reconciliation import deadletters, inbox, payments
from reconciliation.db import transaction
from reconciliation.models import FINAL_STATUSES, InboxDelivery, InboxStatus, Payment, PaymentStatus
from reconciliation.subscriptions import UnknownPlan, expire_due
from schemas.messages import PaymentRegistration, WebhookEnvelope
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
    """Steps 1-6 for one delivery. Returns RETRY when verification must be tried again later."""
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
        payment = payments.find(session, provider, delivery.reference) if delivery.reference is not None else None
        registration = payments.registration_view(payment) if payment is not None and not payment.is_orphan else None
        status, detail = InboxStatus.RECEIVED, ""
        if delivery.kind is DeliveryKind.PING:
            status = InboxStatus.PING
        elif delivery.kind is DeliveryKind.IGNORED:
            status = InboxStatus.IGNORED
        try:
            client.authenticate(envelope, delivery, registration)
        except ForgedDelivery as exc:
            status, detail = InboxStatus.FORGED, str(exc)
        stored = inbox.store(
            session,
            envelope,
            raw,
            dedupe_key=delivery.dedupe_key,
            reference=delivery.reference,
            status=status,
            detail=detail,
            now=rt.context().now,
        )
        retry_given_up = not stored.is_new and stored.status is InboxStatus.FAILED and inbox.reopen(session, stored.id)
    base = Result(Outcome.ACCEPTED, inbox_id=stored.id, reference=delivery.reference)
    if retry_given_up:
        log.info("%s delivery %s arrived again after a give-up: verifying again", provider, stored.id)
    elif not stored.is_new:
        return Result(Outcome.DUPLICATE, f"repeat of inbox delivery {stored.id}", stored.id, delivery.reference)
    if status is InboxStatus.FORGED:
        log.warning("forged %s delivery for %s quarantined: %s", provider, delivery.reference, detail)
        return Result(Outcome.FORGED, detail, stored.id, delivery.reference)
    if status is InboxStatus.PING:
        return Result(Outcome.PING, "", stored.id)
    if status is InboxStatus.IGNORED or delivery.reference is None:
        return Result(Outcome.ACCEPTED, "authentic delivery about nothing we track", stored.id)
    return _verify_delivery(rt, client, delivery, registration, base)


def _store_malformed(rt: Runtime, envelope: WebhookEnvelope, raw: str, detail: str) -> Result:
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
    """Verification of a stored, authenticated delivery, again (after a transient error)."""
    with transaction(rt.sessions) as session:
        row = session.get(InboxDelivery, inbox_id)
        if row is None or row.status is not InboxStatus.RECEIVED:
            return Result(Outcome.DUPLICATE, "already settled", inbox_id)
        envelope = WebhookEnvelope.model_validate_json(row.envelope_raw)
        client = rt.client(row.provider)
        payment = payments.find(session, row.provider, row.reference) if row.reference else None
        registration = payments.registration_view(payment) if payment is not None and not payment.is_orphan else None
    if client is None:
        return Result(Outcome.FAILED, f"provider {envelope.provider.value!r} is not configured", inbox_id)
    delivery = client.parse_delivery(envelope)
    result = _verify_delivery(rt, client, delivery, registration, Result(Outcome.ACCEPTED, inbox_id=inbox_id))
    if result.outcome is Outcome.RETRY and final_attempt:
        detail = f"provider still unavailable after retries: {result.detail}"
        with transaction(rt.sessions) as session:
            inbox.mark(session, inbox_id, InboxStatus.FAILED, detail)
            deadletters.record(
                session,
                task=INGEST_TASK,
                reason="provider_unavailable",
                detail=detail,
                payload=row.envelope_raw,
                provider=row.provider,
                reference=row.reference,
                now=rt.context().now,
            )
        return Result(Outcome.FAILED, detail, inbox_id, delivery.reference)
    return result


def _verify_delivery(
    rt: Runtime,
    client: ProviderClient,
    delivery: Delivery,
    registration: RegistrationView | None,
    base: Result,
) -> Result:
    assert delivery.reference is not None  # noqa: S101 - only payment deliveries get here
    view = registration or RegistrationView(reference=delivery.reference)
    try:
        answer = client.check(view)
    except ProviderError as exc:
        return _verification_failed(rt, client.name, delivery, exc, base)
    with transaction(rt.sessions) as session:
        ctx = rt.context()
        payment = payments.lock_or_create_orphan(session, client.name, delivery.reference, ctx)
        verification = payments.apply_answer(
            session, payment, answer, ctx, trigger="webhook", claim=delivery, inbox_id=base.inbox_id
        )
        inbox.mark(session, base.inbox_id or 0, InboxStatus.PROCESSED, verification.decision)
        outcome = _classify(payment, answer)
    return Result(outcome, verification.decision, base.inbox_id, delivery.reference)


def _classify(payment: Payment, answer: VerifiedStatus) -> Outcome:
    if payment.is_orphan:
        return Outcome.ORPHAN
    if payment.status is PaymentStatus.SUCCEEDED and not payment.settled:
        return Outcome.MISMATCH
    return Outcome.ACCEPTED


def _verification_failed(rt: Runtime, provider: str, delivery: Delivery, exc: ProviderError, base: Result) -> Result:
    assert delivery.reference is not None  # noqa: S101
    with transaction(rt.sessions) as session:
        payment = payments.find(session, provider, delivery.reference, lock=True)
        if payment is not None:
            payments.record_error(
                session,
                payment,
                str(exc),
                rt.context(),
                trigger="webhook",
                claim=delivery,
                inbox_id=base.inbox_id,
                reschedule=False,
            )
        if not exc.retryable:
            detail = f"provider refused the verification: {exc}"
            inbox.mark(session, base.inbox_id or 0, InboxStatus.FAILED, detail)
            row = session.get(InboxDelivery, base.inbox_id)
            deadletters.record(
                session,
                task=INGEST_TASK,
                reason="provider_error",
                detail=detail,
                payload=row.envelope_raw if row else "",
                provider=provider,
                reference=delivery.reference,
                now=rt.context().now,
            )
            return Result(Outcome.FAILED, detail, base.inbox_id, delivery.reference)
    return Result(Outcome.RETRY, str(exc), base.inbox_id, delivery.reference)


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
            outcome, payment = payments.register(session, registration, raw, rt.context())
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
    ctx = rt.context(now)
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
    error: str | None = None
    answer: VerifiedStatus | None = None
    if client is None:
        error = f"provider {provider!r} is not configured on this worker"
    else:
        try:
            answer = client.check(view)
        except ProviderError as exc:
            error = str(exc)
    with transaction(rt.sessions) as session:
        ctx = rt.context(now)
        locked = payments.find(session, provider, reference, lock=True)
        assert locked is not None  # noqa: S101 - payments are never deleted
        if answer is None:
            verification = payments.record_error(session, locked, error or "", ctx, trigger=trigger)
            return Result(Outcome.RETRY, verification.decision, reference=reference)
        verification = payments.apply_answer(session, locked, answer, ctx, trigger=trigger)
        return Result(_classify(locked, answer), verification.decision, reference=reference)


def expire_subscriptions(rt: Runtime, *, now: datetime | None = None) -> int:
    with transaction(rt.sessions) as session:
        return len(expire_due(session, rt.context(now).now))
