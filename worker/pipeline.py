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
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import InterfaceError, OperationalError
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
from providers.profiles import TrustProfile
from reconciliation import deadletters, inbox, payments
from reconciliation.db import storable_text, transaction
from reconciliation.models import FINAL_STATUSES, InboxStatus, Payment, PaymentStatus
from reconciliation.subscriptions import UnknownPlan, expire_due
from schemas.messages import PaymentRegistration, WebhookEnvelope
from worker import metrics
from worker.budget import BudgetUnavailable, rounded_wait
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
    #: For RETRY: the delivery waits in the inbox this long, until ``due`` (the schedule a wake-up
    #: message names; the janitor finds it then in any case).
    delay: float | None = None
    provider: str | None = None
    due: datetime | None = None
    #: Deliveries a registration made due at once: (inbox id, schedule) pairs to wake.
    wake: tuple[tuple[int, datetime], ...] = ()


def _raw(payload: Any) -> str:
    """The input as JSON text PostgreSQL can store whole: a lone surrogate (a receiver that
    decoded with ``surrogateescape``) is written as its ``\\udXXX`` escape, which reads back the same."""
    try:
        raw = json.dumps(payload, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        try:
            return storable_text(repr(payload))
        except RecursionError:
            return f"<{type(payload).__name__} nested too deeply to write out>"
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(payload, ensure_ascii=True, sort_keys=True)
    return raw


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

#: Seconds before the n-th retry of a verification the provider did not answer (jittered); the
#: last repeats until the provider's give-up window (its trust profile) has passed.
RETRY_DELAYS = (5, 15, 30, 60, 120, 300, 600, 900)
#: Seconds between tries of a delivery that waits for its registration to be authenticated.
AWAIT_REGISTRATION_DELAYS = (30, 60, 120, 300, 600, 900)
#: How long a delivery waits when the call budget's store does not answer.
BUDGET_OUTAGE_WAIT = 5.0
#: Bytes of an oversized envelope kept in its dead letter (with its size and SHA-256).
OVERSIZED_HEAD = 4096


def retry_delay(attempt: int) -> float:
    base = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
    return base * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not security


def ingest_webhook(rt: Runtime, payload: Any) -> Result:
    """Steps 1-6 for one delivery. RETRY: the delivery waits in the inbox, due at ``due``."""
    raw = _raw(payload)
    size = len(raw.encode("utf-8"))
    if size > rt.settings.max_envelope_bytes:
        return _oversized(rt, payload, raw, size)
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
    except RecursionError:
        return _store_malformed(rt, envelope, raw, "body nested too deeply to read")

    now = rt.context().now
    with transaction(rt.sessions) as session:
        payment = _resolve(session, provider, delivery)
        status, detail = InboxStatus.RECEIVED, ""
        if delivery.kind is DeliveryKind.PING:
            status = InboxStatus.PING
        elif delivery.kind is DeliveryKind.IGNORED:
            status = InboxStatus.IGNORED
        else:
            status, detail = _authenticate(client, envelope, delivery, payment)
        reference = payment.reference if payment is not None else delivery.reference
        stored = inbox.store(
            session,
            envelope,
            raw,
            dedupe_key=delivery.dedupe_key,
            reference=reference,
            status=status,
            detail=detail,
            now=now,
            awaiting=status is InboxStatus.RECEIVED and bool(detail),
        )
        work: inbox.Work | None = None
        if stored.is_new:
            work = inbox.Work.opened(stored.id, provider, raw, now) if status is InboxStatus.RECEIVED else None
        elif stored.status is InboxStatus.FAILED and inbox.reopen(session, stored.id, now):
            log.info("%s delivery %s arrived again after a give-up: verifying again", provider, stored.id)
            work = inbox.Work.opened(stored.id, provider, stored.envelope_raw, now, first_seen_at=stored.first_seen_at)
        elif stored.status is InboxStatus.RECEIVED and status is InboxStatus.RECEIVED:
            # A redelivery (the broker's, after a worker died; or the provider's) of unfinished
            # work goes on with it, unless a live worker holds it or it is not due yet. (A copy
            # that does not authenticate takes nothing: it cannot hold up the real one.)
            work = inbox.take(session, stored.id, now)
            if work is not None and not detail:
                inbox.authenticated(session, stored.id)
        # (A delivery stored just now cannot have been answered by a question asked after it arrived.)
        asked = payments.last_asked(session, payment) if work is not None and not stored.is_new else None
    if not stored.is_new and work is None:
        return Result(Outcome.DUPLICATE, f"repeat of inbox delivery {stored.id}", stored.id, reference)
    if status is InboxStatus.FORGED:
        log.warning("forged %s delivery for %s quarantined: %s", provider, reference or "-", detail)
        return Result(Outcome.FORGED, detail, stored.id, reference)
    if status is InboxStatus.PING:
        return Result(Outcome.PING, "", stored.id)
    if status is InboxStatus.IGNORED:
        return Result(Outcome.ACCEPTED, "authentic delivery about nothing we track", stored.id)
    assert work is not None  # noqa: S101 - a received delivery this worker holds
    return _work(rt, client, work, lambda: _process(rt, client, delivery, payment, work, awaiting=detail, asked=asked))


def _oversized(rt: Runtime, payload: Any, raw: str, size: int) -> Result:
    limit = rt.settings.max_envelope_bytes
    digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()
    detail = (
        f"envelope of {size} bytes is over PAYRECON_MAX_ENVELOPE_BYTES ({limit}); "
        f"its first {OVERSIZED_HEAD} characters are kept, SHA-256 of the whole {digest}"
    )
    provider = payload.get("provider") if isinstance(payload, dict) else None
    _dead_letter(
        rt,
        INGEST_TASK,
        "oversized_envelope",
        detail,
        raw[:OVERSIZED_HEAD],
        provider=provider if isinstance(provider, str) and len(provider) <= 32 else None,
    )
    return Result(Outcome.MALFORMED, detail)


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


def retry_delivery(rt: Runtime, inbox_id: int, *, version: datetime | None = None) -> Result:
    """A stored delivery, again, if it is due (or ``version`` is the schedule this call was sent
    for): after a provider failure, a deferral, a wait for its registration, or a dead worker."""
    with transaction(rt.sessions) as session:
        work = inbox.take(session, inbox_id, rt.context().now, version=version)
    if work is None:
        return Result(Outcome.DUPLICATE, "finished, held by another worker, or not due", inbox_id)
    client = rt.client(work.provider)
    if client is None:  # this worker lacks the provider's settings: the delivery waits for one that has them
        detail = f"provider {work.provider!r} is not configured on this worker"
        return replace(
            _put_off(rt, work, None, retry_delay(work.attempts), detail, failed=True), provider=work.provider
        )
    return _work(rt, client, work, lambda: _resume(rt, client, work))


def _resume(rt: Runtime, client: ProviderClient, work: inbox.Work) -> Result:
    envelope = WebhookEnvelope.model_validate_json(work.envelope_raw)
    delivery = client.parse_delivery(envelope)
    with transaction(rt.sessions) as session:
        payment = _resolve(session, work.provider, delivery)
        status, detail = _authenticate(client, envelope, delivery, payment)
        if status is InboxStatus.FORGED:
            if not inbox.finish(session, work, InboxStatus.FORGED, detail):
                return Result(Outcome.DUPLICATE, "taken over by another worker", work.id, delivery.reference)
            return Result(Outcome.FORGED, detail, work.id, delivery.reference)
        if not detail:
            inbox.authenticated(session, work.id)
        if payment is not None and payment.reference != delivery.reference:  # found by a provider token
            inbox.name_reference(session, work.id, payment.reference)
        asked = payments.last_asked(session, payment)
    return _process(rt, client, delivery, payment, work, awaiting=detail, asked=asked)


def _work(rt: Runtime, client: ProviderClient, work: inbox.Work, process: Callable[[], Result]) -> Result:
    """The work on a delivery this worker holds. An error that is not an outage (a bug) puts it off
    like a provider failure and, after PAYRECON_VERIFY_MAX_RETRIES of them, dead-letters it."""
    try:
        return replace(process(), provider=client.name)
    except (OperationalError, InterfaceError):
        raise  # an outage: the row keeps its lease and is taken again when the lease ends
    except Exception as exc:
        log.exception("%s delivery %s: unexpected error", client.name, work.id)
        return replace(_internal_error(rt, work, exc), provider=client.name)


def _process(
    rt: Runtime,
    client: ProviderClient,
    delivery: Delivery,
    payment: Payment | None,
    work: inbox.Work,
    *,
    awaiting: str,
    asked: datetime | None,
) -> Result:
    """``asked``: when the provider was last asked about the payment (read by the caller)."""
    provider = client.name
    if awaiting:
        return _await_registration(rt, client, delivery, work, awaiting)

    profile = rt.profile(provider)
    reference = payment.reference if payment is not None else delivery.reference
    assert reference is not None  # noqa: S101 - resolved or named by the delivery
    if payment is not None:
        known = _already_answered(payment, delivery, work, asked, authenticated=profile.callbacks_authenticated)
        if known:
            with transaction(rt.sessions) as session:
                finished = inbox.finish(session, work, InboxStatus.PROCESSED, known)
            if not finished:
                return Result(Outcome.DUPLICATE, "taken over by another worker", work.id, reference)
            _release(rt, provider, work.budget_slot)
            return Result(Outcome.DUPLICATE, known, work.id, reference)

    slot = work.budget_slot
    stages = _stages(profile)
    names = [name for name, _, _ in stages]
    for name, rate, burst in stages[names.index(slot) + 1 if slot else 0 :]:
        try:
            wait, own = rt.budget.reserve(f"{name}:{provider}", rate, burst)
        except BudgetUnavailable as exc:
            return _put_off(rt, work, reference, BUDGET_OUTAGE_WAIT, str(exc), deferred=True, budget_slot=slot)
        if own:
            slot = name
        if wait > 0:
            metrics.BUDGET_WAITS.labels(provider, name).inc()
            why = "unauthenticated callbacks are rate-limited" if name == "callbacks" else f"{provider} call budget"
            turn = rounded_wait(wait)
            detail = (
                f"{why}: its turn in {turn:.2f} s" if own else f"{why}: no turn free yet, asks again in {turn:.2f} s"
            )
            result = _put_off(rt, work, reference, turn, detail, deferred=True, budget_slot=slot)
            if result.outcome is not Outcome.RETRY:  # the lease was lost: the slots taken here go back
                _release(rt, provider, slot, after=work.budget_slot)
            return result

    view = (
        payments.registration_view(payment)
        if payment is not None and not payment.is_orphan
        else RegistrationView(reference=reference)
    )
    asked_at = rt.context().now
    try:
        answer = timed_call(provider, "status", lambda: client.check(view))
    except ProviderError as exc:
        return _verification_failed(rt, provider, reference, delivery, exc, work=work)
    with transaction(rt.sessions) as session:
        ctx = rt.context(provider)
        locked = payments.lock_or_create_orphan(session, provider, reference, ctx)
        verification = payments.apply_answer(
            session, locked, answer, ctx, trigger="webhook", claim=delivery, inbox_id=work.id, asked_at=asked_at
        )
        inbox.mark(session, work.id, InboxStatus.PROCESSED, verification.decision)
        unused = inbox.coalesce(
            session,
            provider,
            reference,
            asked_at=asked_at,
            done=work.id,
            detail=f"answered by the provider at {asked_at.isoformat()} for delivery {work.id}, after this one arrived",
        )
        outcome = _classify(locked, answer)
    for held in unused:
        _release(rt, provider, held)
    return Result(outcome, verification.decision, work.id, reference)


def _await_registration(
    rt: Runtime, client: ProviderClient, delivery: Delivery, work: inbox.Work, awaiting: str
) -> Result:
    """A delivery that can only be authenticated against its registration waits for it, then gives up."""
    now = rt.context().now
    limit = timedelta(seconds=rt.settings.await_registration)
    if now - work.opened_at >= limit:
        detail = (
            f"not authenticated: no registration arrived within {_duration(limit)} "
            f"(PAYRECON_AWAIT_REGISTRATION); {awaiting}"
        )
        with transaction(rt.sessions) as session:
            if not inbox.finish(session, work, InboxStatus.FORGED, detail):
                return Result(Outcome.DUPLICATE, "taken over by another worker", work.id, delivery.reference)
        log.warning("%s delivery %s quarantined: %s", client.name, work.id, detail)
        return Result(Outcome.FORGED, detail, work.id, delivery.reference)
    # A registration that commits meanwhile wakes the row (it is marked as not authenticated from its
    # arrival): this worker then finds its lease gone, and the wake-up message takes the row.
    delay = AWAIT_REGISTRATION_DELAYS[min(work.deferrals, len(AWAIT_REGISTRATION_DELAYS) - 1)]
    return _put_off(rt, work, delivery.reference, delay, awaiting, deferred=True)


def _stages(profile: TrustProfile) -> list[tuple[str, float, int]]:
    """The call-budget buckets a delivery passes, in order: unauthenticated callbacks first, if any."""
    stages: list[tuple[str, float, int]] = [("api", profile.api_rate, profile.api_burst)]
    if not profile.callbacks_authenticated:
        assert profile.callback_rate is not None and profile.callback_burst is not None  # noqa: S101
        stages.insert(0, ("callbacks", profile.callback_rate, profile.callback_burst))
    return stages


def _release(rt: Runtime, provider: str, slot: str | None, *, after: str | None = None) -> None:
    """Give back the call-budget tokens a delivery held up to ``slot`` (those after ``after``), unused."""
    if slot is None:
        return
    names = [name for name, _, _ in _stages(rt.profile(provider))]
    start = names.index(after) + 1 if after else 0
    for name, rate, burst in _stages(rt.profile(provider))[start : names.index(slot) + 1]:
        try:
            rt.budget.release(f"{name}:{provider}", rate, burst)
        except BudgetUnavailable:
            log.info("%s: an unused %s token could not be given back (budget store unavailable)", provider, name)


#: Statuses an unauthenticated callback cannot change (a provider's own final answers).
UNAUTHENTICATED_FINAL = frozenset({PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.REFUNDED})


def _already_answered(
    payment: Payment, delivery: Delivery, work: inbox.Work, asked: datetime | None, *, authenticated: bool
) -> str:
    """Why this delivery needs no provider call of its own ("" if it does)."""
    if not authenticated and payment.status in UNAUTHENTICATED_FINAL:
        return f"payment already {payment.status.value}: an unauthenticated callback spends no API call"
    claimed = payments.normalize_claim(delivery.claimed_status) if delivery.claimed_status else None
    if authenticated and payment.status in FINAL_STATUSES and claimed == payment.status.value:
        return f"payment already {payment.status.value}, as the delivery says: no API call spent"
    if asked is not None and asked >= work.first_seen_at:
        return f"answered by the provider at {asked.isoformat()}, after this delivery arrived: no API call spent"
    return ""


def _put_off(
    rt: Runtime,
    work: inbox.Work,
    reference: str | None,
    delay: float,
    detail: str,
    *,
    failed: bool = False,
    errored: bool = False,
    deferred: bool = False,
    budget_slot: str | None = None,
) -> Result:
    """The delivery waits in the inbox until ``now + delay`` (a wake-up message may come then)."""
    with transaction(rt.sessions) as session:
        due = inbox.schedule(
            session,
            work,
            rt.context().now + timedelta(seconds=delay),
            detail,
            failed=failed,
            errored=errored,
            deferred=deferred,
            budget_slot=budget_slot,
        )
    if due is None:
        return Result(Outcome.DUPLICATE, "taken over by another worker", work.id, reference)
    return Result(Outcome.RETRY, detail, work.id, reference, delay=delay, due=due)


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


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
    rt: Runtime, provider: str, reference: str, delivery: Delivery, exc: ProviderError, *, work: inbox.Work
) -> Result:
    """No answer: a refusal ends the delivery; an outage is a wait, until the provider's give-up window."""
    profile = rt.profile(provider)
    with transaction(rt.sessions) as session:
        ctx = rt.context(provider)
        payment = payments.find(session, provider, reference, lock=True)
        if payment is not None:
            payments.record_error(
                session, payment, str(exc), ctx, trigger="webhook", claim=delivery, inbox_id=work.id, reschedule=False
            )
        if not exc.retryable and not _not_yet_visible(rt, provider, payment, exc, ctx.now):
            if not profile.callbacks_authenticated and isinstance(exc, ProviderNotFound) and payment is None:
                detail = f"the provider does not know this payment: an unsigned callback about nothing ({exc})"
                if not inbox.finish(session, work, InboxStatus.FORGED, detail):
                    return Result(Outcome.DUPLICATE, "taken over by another worker", work.id, reference)
                log.warning("%s delivery %s quarantined: %s", provider, work.id, detail)
                return Result(Outcome.FORGED, detail, work.id, reference)
            return _give_up(session, work, "provider_error", f"provider refused the verification: {exc}", reference)
        window = timedelta(seconds=profile.give_up_after)
        if ctx.now - work.opened_at >= window:
            detail = f"provider still unavailable after {_duration(window)}: {exc}"
            return _give_up(session, work, "provider_unavailable", detail, reference)
    return _put_off(rt, work, reference, retry_delay(work.attempts), str(exc), failed=True)


def _give_up(session: Session, work: inbox.Work, reason: str, detail: str, reference: str | None) -> Result:
    """End the delivery's work and dead-letter it, replayable (a repeat reopens it); only while the
    caller still holds it (the worker that took it over decides instead)."""
    if not inbox.finish(session, work, InboxStatus.FAILED, detail):
        return Result(Outcome.DUPLICATE, "taken over by another worker", work.id, reference)
    deadletters.record(
        session,
        task=INGEST_TASK,
        reason=reason,
        detail=detail,
        payload=work.envelope_raw,
        provider=work.provider,
        reference=reference,
        now=datetime.now(UTC),
    )
    log.warning("delivery %s dead-lettered (%s): %s", work.id, reason, detail)
    return Result(Outcome.FAILED, detail, work.id, reference)


def _internal_error(rt: Runtime, work: inbox.Work, exc: Exception) -> Result:
    detail = f"{type(exc).__name__}: {exc}"[:2000]
    if work.errors + 1 >= rt.settings.verify_max_retries:
        with transaction(rt.sessions) as session:
            return _give_up(session, work, "internal_error", detail, None)
    return _put_off(rt, work, None, retry_delay(work.errors), detail, errored=True, budget_slot=work.budget_slot)


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
            ctx = rt.context(registration.provider.value)
            outcome, payment = payments.register(session, registration, raw, ctx)
            reference = payment.reference
            # Deliveries that waited for this registration (to be authenticated) are due now.
            wake = inbox.wake(session, payment.provider, reference, ctx.now)
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
    return Result(mapped, reference=reference, wake=tuple(wake))


# --------------------------------------------------------------------------- janitor


def claim_due_deliveries(rt: Runtime, *, limit: int = 1000, now: datetime | None = None) -> list[tuple[int, datetime]]:
    """Deliveries whose work is due (put off, or left by a worker that died), oldest first, leased
    for the janitor's messages: (inbox id, schedule) pairs."""
    with transaction(rt.sessions) as session:
        return inbox.claim_due(session, now or rt.context().now, limit=limit)


def claim_due(
    rt: Runtime, *, limit: int = 500, lease: int = int(inbox.LEASE.total_seconds()), now: datetime | None = None
) -> list[int]:
    """Ids of non-final payments due for a re-check, leased so that no other janitor takes them
    (a lost message only delays a re-check by the lease)."""
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
    asked_at: datetime | None = None
    deferred = 0.0
    if client is None:
        error = f"provider {provider!r} is not configured on this worker"
    else:
        profile = rt.profile(provider)
        try:
            deferred = rt.budget.take(f"api:{provider}", profile.api_rate, profile.api_burst)
        except BudgetUnavailable:
            deferred = BUDGET_OUTAGE_WAIT
        if deferred:
            metrics.BUDGET_WAITS.labels(provider, "api").inc()
        else:
            asked_at = datetime.now(UTC)
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
        verification = payments.apply_answer(session, locked, answer, ctx, trigger=trigger, asked_at=asked_at)
        assert asked_at is not None  # noqa: S101 - an answer was asked for
        unused = inbox.coalesce(
            session,
            provider,
            reference,
            asked_at=asked_at,
            done=0,
            detail=f"answered by the provider at {asked_at.isoformat()} (a re-check), after this delivery arrived",
        )
        result = Result(_classify(locked, answer), verification.decision, reference=reference)
    for held in unused:  # the deliveries it finished give their call-budget slots back
        _release(rt, provider, held)
    return result


def expire_subscriptions(rt: Runtime, *, now: datetime | None = None) -> int:
    with transaction(rt.sessions) as session:
        return len(expire_due(session, rt.context(now=now).now))
