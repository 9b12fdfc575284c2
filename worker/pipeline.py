"""The pipeline of one webhook (README, "How it works"), as plain functions the Celery tasks wrap.

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
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
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
    ProviderRefusedQuestion,
    RegistrationView,
    VerifiedStatus,
)
from providers.hub import Hub
from providers.profiles import TrustProfile
from reconciliation import deadletters, facts, inbox, payments, subscriptions
from reconciliation.db import DB_UNAVAILABLE, storable_text, transaction
from reconciliation.models import FINAL_STATUSES, InboxStatus, Payment, PaymentStatus
from reconciliation.retries import AWAIT_REGISTRATION, BUDGET_OUTAGE_WAIT, PROVIDER_FAILURE
from reconciliation.subscriptions import UnknownPlan, expire_due
from schemas.messages import PaymentRegistration, WebhookEnvelope
from schemas.producer import INGEST_TASK, REGISTER_TASK
from worker import metrics
from worker.budget import Budget, BudgetUnavailable, rounded_wait
from worker.observability import timed_call
from worker.runtime import Runtime

log = logging.getLogger(__name__)

T = TypeVar("T")


class Disposition(StrEnum):
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
    outcome: Disposition
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

#: Bytes of an oversized envelope kept in its dead letter (with its size and SHA-256).
OVERSIZED_HEAD = 4096


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A delivery read from its envelope, not stored yet."""

    client: ProviderClient
    envelope: WebhookEnvelope
    delivery: Delivery
    raw: str

    @property
    def provider(self) -> str:
        return self.client.name


@dataclass(frozen=True, slots=True)
class _Admitted:
    """A delivery stored in the inbox (or counted as a repeat), and the work this worker took on it."""

    parsed: _Parsed
    payment: Payment | None
    stored: inbox.Stored
    status: InboxStatus
    detail: str  # why it is forged, or (status received) why it must wait for its registration
    reference: str | None
    work: inbox.Work | None
    asked: datetime | None  # when the provider was last asked about its payment (work taken again only)


def ingest_webhook(rt: Runtime, payload: Any) -> Result:
    """Steps 1-6 for one delivery. RETRY: the delivery waits in the inbox, due at ``due``."""
    parsed = _parse(rt, payload)
    if isinstance(parsed, Result):
        return parsed
    now = rt.context().now
    with transaction(rt.sessions) as session:
        payment = _resolve(session, parsed.provider, parsed.delivery)
        admitted = _admit(session, parsed, payment, now)
    early = _after_admission(admitted)
    if early is not None:
        return early
    assert admitted.work is not None  # noqa: S101 - held by this worker
    return _work(rt, parsed.client, admitted.work, lambda: _process_admitted(rt, admitted))


def _parse(rt: Runtime, payload: Any) -> Result | _Parsed:
    """Steps 1-2: the envelope validated and its body read, or the Result of input that cannot be."""
    raw = _raw(payload)
    size = len(raw.encode("utf-8"))
    if size > rt.settings.max_envelope_bytes:
        return _oversized(rt, payload, raw, size)
    try:
        envelope = WebhookEnvelope.model_validate(payload)
    except ValidationError as exc:
        detail = f"invalid webhook envelope: {_errors(exc)}"
        _dead_letter(rt, INGEST_TASK, "invalid_envelope", detail, raw)
        return Result(Disposition.MALFORMED, detail)
    provider = envelope.provider.value
    client = rt.client(provider)
    if client is None:
        detail = f"provider {provider!r} is not configured on this worker"
        _dead_letter(rt, INGEST_TASK, "provider_not_configured", detail, raw, provider=provider)
        return Result(Disposition.FAILED, detail)
    try:
        delivery = client.parse_delivery(envelope)
    except MalformedDelivery as exc:
        return _store_malformed(rt, envelope, raw, str(exc))
    except RecursionError:
        return _store_malformed(rt, envelope, raw, "body nested too deeply to read")
    return _Parsed(client, envelope, delivery, raw)


def _admit(session: Session, parsed: _Parsed, payment: Payment | None, now: datetime) -> _Admitted:
    """Steps 3-4 in the caller's transaction: authenticate, store (or count a repeat), take the work."""
    screened = _screen(parsed, payment)
    stored = inbox.store(session, parsed.envelope, parsed.raw, **screened.as_row(), now=now)
    return _take(session, parsed, payment, screened=screened, stored=stored, now=now)


@dataclass(frozen=True, slots=True)
class _Screened:
    """What authentication made of a delivery, before it is stored."""

    dedupe_key: str
    status: InboxStatus
    detail: str
    reference: str | None

    def as_row(self) -> dict[str, Any]:
        return {
            "dedupe_key": self.dedupe_key,
            "reference": self.reference,
            "status": self.status,
            "detail": self.detail,
            "awaiting": self.status is InboxStatus.RECEIVED and bool(self.detail),
        }


def _screen(parsed: _Parsed, payment: Payment | None) -> _Screened:
    delivery = parsed.delivery
    status, detail = InboxStatus.RECEIVED, ""
    if delivery.kind is DeliveryKind.PING:
        status = InboxStatus.PING
    elif delivery.kind is DeliveryKind.IGNORED:
        status = InboxStatus.IGNORED
    else:
        status, detail = _authenticate(parsed.client, parsed.envelope, delivery, payment)
    reference = delivery.reference if delivery.reference is not None or payment is None else payment.reference
    return _Screened(delivery.dedupe_key, status, detail, reference)


def _take(
    session: Session,
    parsed: _Parsed,
    payment: Payment | None,
    *,
    screened: _Screened,
    stored: inbox.Stored,
    now: datetime,
) -> _Admitted:
    """The work on a stored delivery this worker takes (a new one is its own; a repeat may reopen or
    go on with unfinished work)."""
    status, detail = screened.status, screened.detail
    work: inbox.Work | None = None
    if stored.is_new:
        work = (
            inbox.Work.opened(stored.id, parsed.provider, parsed.raw, now) if status is InboxStatus.RECEIVED else None
        )
    elif (
        stored.status is InboxStatus.FAILED and status is InboxStatus.RECEIVED and inbox.reopen(session, stored.id, now)
    ):
        # (Only a copy that authenticates: a forged one with a known key must not make us ask the provider again.)
        log.info("%s delivery %s arrived again after a give-up: verifying again", parsed.provider, stored.id)
        work = inbox.Work.opened(
            stored.id, parsed.provider, stored.envelope_raw, now, first_seen_at=stored.first_seen_at
        )
    elif stored.status is InboxStatus.RECEIVED and status is InboxStatus.RECEIVED:
        # A redelivery (the broker's, after a worker died; or the provider's) of unfinished
        # work goes on with it, unless a live worker holds it or it is not due yet. (A copy
        # that does not authenticate takes nothing: it cannot hold up the real one.)
        work = inbox.take(session, stored.id, now)
        if work is not None and not detail:
            inbox.authenticated(session, stored.id)
    # (A delivery stored just now cannot have been answered by a question asked after it arrived.)
    asked = payments.last_asked(session, payment) if work is not None and not stored.is_new else None
    return _Admitted(parsed, payment, stored, status, detail, screened.reference, work, asked)


def _after_admission(admitted: _Admitted) -> Result | None:
    """The Result of a delivery that needs no work (a repeat, forged, a ping, about nothing we
    track); None if this worker holds its work."""
    stored, reference, detail, provider = admitted.stored, admitted.reference, admitted.detail, admitted.parsed.provider
    if not stored.is_new and admitted.work is None:
        return Result(
            Disposition.DUPLICATE, f"repeat of inbox delivery {stored.id}", stored.id, reference, provider=provider
        )
    if admitted.status is InboxStatus.FORGED:
        log.warning("forged %s delivery for %s quarantined: %s", provider, reference or "-", detail)
        return Result(Disposition.FORGED, detail, stored.id, reference, provider=provider)
    if admitted.status is InboxStatus.PING:
        return Result(Disposition.PING, "", stored.id, provider=provider)
    if admitted.status is InboxStatus.IGNORED:
        return Result(Disposition.ACCEPTED, "authentic delivery about nothing we track", stored.id, provider=provider)
    assert admitted.work is not None  # noqa: S101 - a received delivery this worker holds
    return None


def _process_admitted(rt: Runtime, admitted: _Admitted) -> Result:
    assert admitted.work is not None  # noqa: S101
    return _process(
        rt,
        admitted.parsed.client,
        admitted.parsed.delivery,
        admitted.payment,
        admitted.work,
        awaiting=admitted.detail,
        asked=admitted.asked,
    )


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
    return Result(Disposition.MALFORMED, detail)


def _resolve(session: Session, provider: str, delivery: Delivery) -> Payment | None:
    """The payment a delivery is about: by our reference, else by a provider-side token (also when
    the reference is not registered: the token may be another payment's, which authentication refuses)."""
    if delivery.reference is not None:
        found = payments.find(session, provider, delivery.reference)
        if found is not None:
            return found
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
    return Result(Disposition.MALFORMED, detail, stored.id)


def retry_delivery(rt: Runtime, inbox_id: int, *, version: datetime | None = None) -> Result:
    """A stored delivery, again, if it is due (or ``version`` is the schedule this call was sent
    for): after a provider failure, a deferral, a wait for its registration, or a dead worker."""
    with transaction(rt.sessions) as session:
        work = inbox.take(session, inbox_id, rt.context().now, version=version)
    if work is None:
        return Result(Disposition.DUPLICATE, "finished, held by another worker, or not due", inbox_id)
    client = rt.client(work.provider)
    if client is None:  # this worker lacks the provider's settings: the delivery waits for one that has them
        detail = f"provider {work.provider!r} is not configured on this worker"
        return replace(
            _put_off(rt, work, None, PROVIDER_FAILURE.delay(work.attempts), detail, failed=True), provider=work.provider
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
                return Result(Disposition.DUPLICATE, "taken over by another worker", work.id, delivery.reference)
            return Result(Disposition.FORGED, detail, work.id, delivery.reference)
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
    except DB_UNAVAILABLE:
        raise  # an outage: the row keeps its lease and is taken again when the lease ends
    except Exception as exc:
        log.exception("%s delivery %s: unexpected error", client.name, work.id)
        return replace(_internal_error(rt, work, exc), provider=client.name)


@dataclass(frozen=True, slots=True)
class _Call:
    """A delivery cleared to ask its provider: budget reserved, what to ask for."""

    reference: str
    view: RegistrationView


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
    step = _before_call(rt, client, delivery, payment, work, awaiting=awaiting, asked=asked)
    if isinstance(step, Result):
        return step
    provider = client.name
    asked_at = rt.context().now
    try:
        answer = timed_call(provider, "status", lambda: client.check(step.view))
    except ProviderError as exc:
        return _verification_failed(rt, provider, step.reference, delivery, exc, work=work)
    with transaction(rt.sessions) as session:
        locked = payments.lock_or_create_orphan(session, provider, step.reference, rt.context(provider))
        result, unused = _settle(session, rt, locked, delivery, work, answer=answer, asked_at=asked_at)
    for _, held in unused:
        _release(rt, provider, held)
    return result


def _before_call(
    rt: Runtime,
    client: ProviderClient,
    delivery: Delivery,
    payment: Payment | None,
    work: inbox.Work,
    *,
    awaiting: str,
    asked: datetime | None,
    budget: Budget | None = None,
) -> Result | _Call:
    """Everything before the provider call: the Result of a delivery that needs none (waits for its
    registration, already answered, put off by the call budget), else the call to make. ``budget``:
    the call budget to reserve from (a batch's own, see ``_BatchBudget``; else the runtime's)."""
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
                return Result(Disposition.DUPLICATE, "taken over by another worker", work.id, reference)
            _release(rt, provider, work.budget_slot)
            return Result(Disposition.DUPLICATE, known, work.id, reference)

    slot = work.budget_slot
    stages = _stages(profile)
    names = [name for name, _, _ in stages]
    for name, rate, burst in stages[names.index(slot) + 1 if slot else 0 :]:
        try:
            wait, own = (budget or rt.budget).reserve(f"{name}:{provider}", rate, burst)
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
            if result.outcome is not Disposition.RETRY:  # the lease was lost: the slots taken here go back
                _release(rt, provider, slot, after=work.budget_slot)
            return result

    view = (
        payments.registration_view(payment)
        if payment is not None and not payment.is_orphan
        else RegistrationView(reference=reference)
    )
    return _Call(reference, view)


def _settle(
    session: Session,
    rt: Runtime,
    locked: Payment,
    delivery: Delivery,
    work: inbox.Work,
    *,
    answer: VerifiedStatus,
    asked_at: datetime,
) -> tuple[Result, list[tuple[int, str | None]]]:
    """Step 6 in the caller's transaction, the payment row locked: the answer moves the payment, the
    delivery is done, and so is every other delivery of the payment that arrived before the provider
    was asked. Returns the Result and those others (inbox id, call-budget slot held, to give back)."""
    provider = locked.provider
    ctx = rt.context(provider)
    verification = payments.apply_answer(
        session, locked, answer, ctx, trigger="webhook", claim=delivery, inbox_id=work.id, asked_at=asked_at
    )
    inbox.mark(session, work.id, InboxStatus.PROCESSED, verification.decision)
    others = inbox.coalesce(
        session,
        provider,
        locked.reference,
        asked_at=asked_at,
        done=work.id,
        detail=f"answered by the provider at {asked_at.isoformat()} for delivery {work.id}, after this one arrived",
    )
    return Result(_classify(locked, answer), verification.decision, work.id, locked.reference), others


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
                return Result(Disposition.DUPLICATE, "taken over by another worker", work.id, delivery.reference)
        log.warning("%s delivery %s quarantined: %s", client.name, work.id, detail)
        return Result(Disposition.FORGED, detail, work.id, delivery.reference)
    # A registration that commits meanwhile wakes the row (it is marked as not authenticated from its
    # arrival): this worker then finds its lease gone, and the wake-up message takes the row.
    delay = AWAIT_REGISTRATION.delay(work.deferrals)
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
        return Result(Disposition.DUPLICATE, "taken over by another worker", work.id, reference)
    return Result(Disposition.RETRY, detail, work.id, reference, delay=delay, due=due)


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def _classify(payment: Payment, answer: VerifiedStatus) -> Disposition:
    if payment.is_orphan:
        return Disposition.ORPHAN
    if payment.status is PaymentStatus.SUCCEEDED and not payment.settled:
        return Disposition.MISMATCH
    return Disposition.ACCEPTED


def _not_yet_visible(rt: Runtime, provider: str, payment: Payment | None, exc: ProviderError, now: datetime) -> bool:
    """A "not found" right after registration (MoMo's 202-then-404 window) is not a failure."""
    grace = rt.profile(provider).not_found_grace
    if not isinstance(exc, ProviderNotFound) or not grace or payment is None or payment.registered_at is None:
        return False
    return now < payment.registered_at + timedelta(seconds=grace)


def refused_question(exc: ProviderError) -> bool:
    """The provider refused the question for the payment's own data (``ProviderRefusedQuestion``: Orange's
    HTTP 400 when the registered pay_token or amount is not the order's): asking again changes nothing.
    Other refusals (credentials, a request error that may be our configuration) keep the re-checks."""
    return isinstance(exc, ProviderRefusedQuestion)


def _verification_failed(
    rt: Runtime, provider: str, reference: str, delivery: Delivery, exc: ProviderError, *, work: inbox.Work
) -> Result:
    """No answer: a refusal ends the delivery; an outage is a wait, until the provider's give-up window."""
    profile = rt.profile(provider)
    with transaction(rt.sessions) as session:
        ctx = rt.context(provider)
        payment = payments.find(session, provider, reference, lock=True)
        if payment is not None and refused_question(exc):
            payments.record_refusal(
                session, payment, str(exc), ctx, trigger="webhook", claim=delivery, inbox_id=work.id
            )
        elif payment is not None:
            payments.record_error(
                session, payment, str(exc), ctx, trigger="webhook", claim=delivery, inbox_id=work.id, reschedule=False
            )
        if not exc.retryable and not _not_yet_visible(rt, provider, payment, exc, ctx.now):
            if not profile.callbacks_authenticated and isinstance(exc, ProviderNotFound) and payment is None:
                detail = f"the provider does not know this payment: an unsigned callback about nothing ({exc})"
                if not inbox.finish(session, work, InboxStatus.FORGED, detail):
                    return Result(Disposition.DUPLICATE, "taken over by another worker", work.id, reference)
                log.warning("%s delivery %s quarantined: %s", provider, work.id, detail)
                return Result(Disposition.FORGED, detail, work.id, reference)
            return _give_up(session, work, "provider_error", f"provider refused the verification: {exc}", reference)
        window = timedelta(seconds=profile.give_up_after)
        if ctx.now - work.opened_at >= window:
            detail = f"provider still unavailable after {_duration(window)}: {exc}"
            return _give_up(session, work, "provider_unavailable", detail, reference)
    return _put_off(rt, work, reference, PROVIDER_FAILURE.delay(work.attempts), str(exc), failed=True)


def _give_up(session: Session, work: inbox.Work, reason: str, detail: str, reference: str | None) -> Result:
    """End the delivery's work and dead-letter it, replayable (a repeat reopens it); only while the
    caller still holds it (the worker that took it over decides instead)."""
    if not inbox.finish(session, work, InboxStatus.FAILED, detail):
        return Result(Disposition.DUPLICATE, "taken over by another worker", work.id, reference)
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
    return Result(Disposition.FAILED, detail, work.id, reference)


def _internal_error(rt: Runtime, work: inbox.Work, exc: Exception) -> Result:
    detail = f"{type(exc).__name__}: {exc}"[:2000]
    if work.errors + 1 >= rt.settings.verify_max_retries:
        with transaction(rt.sessions) as session:
            return _give_up(session, work, "internal_error", detail, None)
    return _put_off(
        rt, work, None, PROVIDER_FAILURE.delay(work.errors), detail, errored=True, budget_slot=work.budget_slot
    )


# --------------------------------------------------------------------------- batches


class NotStored(Exception):
    """A delivery of a batch that could not be stored (PostgreSQL away): its message must be retried.

    ``cause`` is the error; the message is the delivery's only copy until it is in the inbox."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def ingest_batch(rt: Runtime, payloads: Sequence[Any]) -> list[Result | NotStored]:
    """Steps 1-6 for many deliveries at once, each with the same outcome as ``ingest_webhook``.

    The deliveries are stored in one transaction, their payments read with one query per provider,
    the provider asked about them side by side (in this thread: ``providers.hub``), and the
    answers settled in one transaction with the payment rows locked in id order. What is unusual
    (a delivery that cannot be read, waits for its registration, is already answered, is put off
    by the call budget, or whose provider does not answer) goes its own way, as in
    ``ingest_webhook``. A second delivery of a payment in the same batch spends no call: the first
    one's answer finishes it, or, if there was none, it is worked on alone afterwards.

    Returns one item per payload, in order: its Result, or NotStored if PostgreSQL was away before
    it was stored (the caller retries its message). Once stored, an outage leaves the delivery's
    work leased in the inbox, taken up again when the lease ends.
    """
    results: list[Result | NotStored | None] = [None] * len(payloads)
    admitted = _store_batch(rt, payloads, results)
    if admitted:
        _work_batch(rt, admitted, results)
    return _complete(results)


def _store_batch(
    rt: Runtime, payloads: Sequence[Any], results: list[Result | NotStored | None]
) -> list[tuple[int, _Admitted]]:
    """Steps 1-4 of a batch: read each delivery, store them all in one transaction. Fills ``results``
    for those that need no more; returns the others, in payload order."""
    parsed: list[tuple[int, _Parsed]] = []
    for i, payload in enumerate(payloads):
        try:
            item = _parse(rt, payload)
        except DB_UNAVAILABLE as exc:
            results[i] = NotStored(exc)
            continue
        except Exception as exc:  # a bug reading this one: its input is kept, the others go on
            results[i] = _unexpected(rt, payload, exc)
            continue
        if isinstance(item, Result):
            results[i] = item
        else:
            parsed.append((i, item))
    if not parsed:
        return []
    try:
        admitted = _store_together(rt, parsed)
    except DB_UNAVAILABLE as exc:
        for i, _ in parsed:
            results[i] = NotStored(exc)
        return []
    except Exception:
        # One delivery the batch cannot store (a bug): each goes alone, so the others do not wait on it.
        log.exception("a batch of %d deliveries could not be stored together: storing each alone", len(parsed))
        for i, _ in parsed:
            results[i] = ingest_alone(rt, payloads[i])
        return []
    work: list[tuple[int, _Admitted]] = []
    for i, _ in parsed:
        early = _after_admission(admitted[i])
        if early is not None:
            results[i] = early
        else:
            work.append((i, admitted[i]))
    return work


def _store_together(rt: Runtime, parsed: list[tuple[int, _Parsed]]) -> dict[int, _Admitted]:
    """The batch's deliveries stored in one transaction (again if PostgreSQL chose it as a deadlock's
    victim, against another worker's statements on the same rows)."""
    for attempt in range(SETTLE_RETRIES + 1):
        try:
            return _store_once(rt, parsed)
        except OperationalError as exc:
            if not _deadlock(exc) or attempt == SETTLE_RETRIES:
                raise
            log.info("a batch's store was a deadlock's victim: storing it again")
    raise AssertionError("unreachable")  # pragma: no cover


def _store_once(rt: Runtime, parsed: list[tuple[int, _Parsed]]) -> dict[int, _Admitted]:
    now = rt.context().now
    with transaction(rt.sessions) as session:
        found = _resolve_many(session, parsed)
        screened = {i: _screen(p, found[i]) for i, p in parsed}
        stored = inbox.store_many(session, [(p.envelope, p.raw, screened[i].as_row()) for i, p in parsed], now=now)
        return {
            i: _take(session, p, found[i], screened=screened[i], stored=row, now=now)
            for (i, p), row in zip(parsed, stored, strict=True)
        }


def _work_batch(rt: Runtime, admitted: list[tuple[int, _Admitted]], results: list[Result | NotStored | None]) -> None:
    """Steps 5-6 of a batch: the calls in parallel, the answers settled together."""
    calls: list[tuple[int, _Admitted, _Call]] = []
    later: list[tuple[int, _Admitted]] = []  # a second delivery of a payment asked about in this batch
    asking: set[tuple[str, str]] = set()
    # A second delivery of a payment waits for the first's answer: one call per payment at most.
    distinct = {(adm.parsed.provider, adm.reference if adm.reference is not None else i) for i, adm in admitted}
    budget = _BatchBudget(rt.budget, Counter(provider for provider, _ in distinct))
    try:
        for i, adm in admitted:
            key = (adm.parsed.provider, adm.reference or "")
            if adm.reference is not None and not adm.detail and key in asking:
                later.append((i, adm))
                continue
            step = _held(rt, adm, lambda adm=adm: _before_call_admitted(rt, adm, budget))  # type: ignore[misc]
            if isinstance(step, _Call):
                asking.add(key)
                calls.append((i, adm, step))
            else:
                results[i] = step
    finally:
        budget.give_back()

    answered: list[tuple[int, _Admitted, VerifiedStatus, datetime]] = []
    for (i, adm, call), (asked_at, answer) in zip(calls, _ask_all(rt, calls), strict=True):
        if isinstance(answer, VerifiedStatus):
            answered.append((i, adm, answer, asked_at))
        elif isinstance(answer, ProviderError):
            results[i] = _held(
                rt,
                adm,
                lambda adm=adm, call=call, exc=answer: _verification_failed(  # type: ignore[misc]
                    rt, adm.parsed.provider, call.reference, adm.parsed.delivery, exc, work=adm.work
                ),
            )
        else:
            results[i] = _failed(rt, adm, answer)

    finished = _settle_batch(rt, answered, results)
    for i, adm in later:
        assert adm.work is not None  # noqa: S101
        if adm.work.id in finished:
            detail = f"answered by the provider for delivery {finished[adm.work.id]} of the same batch"
            results[i] = Result(Disposition.DUPLICATE, detail, adm.work.id, adm.reference, provider=adm.parsed.provider)
        else:
            work = adm.work
            results[i] = _held(rt, adm, lambda work=work, adm=adm: _resume(rt, adm.parsed.client, work))  # type: ignore[misc]


def _complete(results: list[Result | NotStored | None]) -> list[Result | NotStored]:
    assert all(r is not None for r in results)  # noqa: S101 - every delivery has its outcome
    return [r for r in results if r is not None]


def ingest_alone(rt: Runtime, payload: Any) -> Result | NotStored:
    """One delivery of a batch on the per-delivery path (a bug there dead-letters its input)."""
    try:
        return ingest_webhook(rt, payload)
    except DB_UNAVAILABLE as exc:
        return NotStored(exc)
    except Exception as exc:
        return _unexpected(rt, payload, exc)


def _unexpected(rt: Runtime, payload: Any, exc: Exception) -> Result | NotStored:
    """A bug on one delivery of a batch: its input is dead-lettered whole, with the error, for replay."""
    log.exception("%s: unexpected error; input dead-lettered", INGEST_TASK)
    detail = f"{type(exc).__name__}: {exc}"[:2000]
    try:
        dead_letter(rt, INGEST_TASK, "internal_error", detail, payload)
    except DB_UNAVAILABLE as inner:
        return NotStored(inner)
    return Result(Disposition.FAILED, detail)


def _resolve_many(session: Session, parsed: list[tuple[int, _Parsed]]) -> dict[int, Payment | None]:
    """The payments the deliveries are about: those named by reference with one query per provider."""
    named: dict[str, dict[str, list[int]]] = {}
    found: dict[int, Payment | None] = {}
    parsed_by_index = dict(parsed)
    for i, p in parsed:
        if p.delivery.reference is not None:
            named.setdefault(p.provider, {}).setdefault(p.delivery.reference, []).append(i)
        else:
            found[i] = _resolve(session, p.provider, p.delivery)
    for provider, refs in named.items():
        by_ref = payments.find_many(session, provider, refs)
        for ref, indices in refs.items():
            for i in indices:
                found[i] = by_ref.get(ref)
                lookup = parsed_by_index[i].delivery.lookup
                if found[i] is None and lookup is not None:  # not registered: the token's payment, if any
                    found[i] = payments.find_by_provider_data(session, provider, *lookup)
    return found


def _before_call_admitted(rt: Runtime, adm: _Admitted, budget: Budget) -> Result | _Call:
    assert adm.work is not None  # noqa: S101
    return _before_call(
        rt,
        adm.parsed.client,
        adm.parsed.delivery,
        adm.payment,
        adm.work,
        awaiting=adm.detail,
        asked=adm.asked,
        budget=budget,
    )


#: Tokens a batch reserves from a bucket in one step (see ``_BatchBudget``).
RESERVE_CHUNK = 8


class _BatchBudget:
    """The call budget as one batch uses it: a reservation from a bucket reserves, in one step (one round
    trip to the budget's store instead of one per delivery), tokens for the next deliveries of the batch
    from that bucket's provider, at most ``RESERVE_CHUNK`` of them, in turn, as if each had asked in its
    turn; they are handed out in that order, and those not handed out (a delivery that needed no call,
    or was put off at an earlier stage) are given back by ``give_back``. Reserving by chunks, not the
    whole batch at once, keeps what other workers see of the bucket close to what it would be one by one
    (a batch of repeats or of deliveries already answered holds no tokens it will not use). An outage of
    the store is the same outage for each delivery of the batch."""

    def __init__(self, budget: Budget, deliveries: Counter[str]) -> None:
        self.budget = budget
        self.deliveries = deliveries  # per provider: an upper bound of the calls the batch may make
        self.reserved: dict[str, tuple[float, int, list[tuple[float, bool]]]] = {}
        self.handed: Counter[str] = Counter()  # tokens handed out per bucket
        self.unavailable: dict[str, BudgetUnavailable] = {}

    def take(self, bucket: str, rate: float, burst: int) -> float:
        return self.budget.take(bucket, rate, burst)

    def reserve(self, bucket: str, rate: float, burst: int) -> tuple[float, bool]:
        if bucket in self.unavailable:
            raise self.unavailable[bucket]
        rate_, burst_, left = self.reserved.get(bucket, (rate, burst, []))
        if (rate_, burst_) != (rate, burst):
            return self.budget.reserve(bucket, rate, burst)
        if not left:
            wanted = self.deliveries[bucket.partition(":")[2]] - self.handed[bucket]
            count = max(1, min(RESERVE_CHUNK, wanted))
            try:
                tokens = self.budget.reserve_many(bucket, rate, burst, count)
            except BudgetUnavailable as exc:
                self.unavailable[bucket] = exc
                raise
            left = tokens[::-1]
            self.reserved[bucket] = (rate, burst, left)
        self.handed[bucket] += 1
        return left.pop()

    def release(self, bucket: str, rate: float, burst: int) -> None:
        self.budget.release(bucket, rate, burst)

    def reserve_many(self, bucket: str, rate: float, burst: int, count: int) -> list[tuple[float, bool]]:
        return [self.reserve(bucket, rate, burst) for _ in range(count)]

    def release_many(self, bucket: str, rate: float, burst: int, count: int) -> None:
        self.budget.release_many(bucket, rate, burst, count)

    def give_back(self) -> None:
        """The tokens reserved and not handed out go back (those the bucket had no room for were not taken)."""
        for bucket, (rate, burst, left) in self.reserved.items():
            unused = sum(1 for _, own in left if own)
            if not unused:
                continue
            try:
                self.budget.release_many(bucket, rate, burst, unused)
            except BudgetUnavailable:
                log.info(
                    "%s: %d unused call-budget token(s) could not be given back (store unavailable)", bucket, unused
                )
            left.clear()


def _held(rt: Runtime, adm: _Admitted, step: Callable[[], T]) -> T | Result:
    """A step of the work on a delivery this worker holds, as ``_work`` does for one delivery."""
    try:
        return step()
    except Exception as exc:
        return _failed(rt, adm, exc)


def _failed(rt: Runtime, adm: _Admitted, exc: Exception) -> Result:
    """What an error on a delivery this worker holds comes to: an outage leaves it leased in the inbox
    (taken up again when the lease ends); anything else (a bug) puts it off as an internal error."""
    assert adm.work is not None  # noqa: S101
    client, work = adm.parsed.client, adm.work
    if isinstance(exc, DB_UNAVAILABLE):
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:200] if str(exc) else type(exc).__name__
        detail = f"database unavailable: taken up again when its lease ends ({reason})"
        return Result(Disposition.RETRY, detail, work.id, adm.reference, provider=client.name)
    log.error("%s delivery %s: unexpected error", client.name, work.id, exc_info=exc)
    try:
        return replace(_internal_error(rt, work, exc), provider=client.name)
    except DB_UNAVAILABLE as outage:
        return _failed(rt, adm, outage)


def _ask_all(
    rt: Runtime, calls: list[tuple[int, _Admitted, _Call]]
) -> list[tuple[datetime, VerifiedStatus | Exception]]:
    """Every call of a batch, side by side over the clients' keep-alive connections: a greenlet each in this
    thread (``providers.hub``), what blocks for long (opening a connection) on the runtime's call pool."""

    def ask(adm: _Admitted, call: _Call) -> tuple[datetime, VerifiedStatus | Exception]:
        client = adm.parsed.client
        asked_at = rt.context().now
        try:
            return asked_at, timed_call(client.name, "status", lambda: client.check(call.view))
        except Exception as exc:  # a ProviderError, or a bug: the caller decides
            return asked_at, exc

    if len(calls) == 1:
        return [ask(calls[0][1], calls[0][2])]
    return Hub(rt.call_pool()).run([partial(ask, adm, call) for _, adm, call in calls])


#: Times a batch's settlement is tried again when PostgreSQL chose it as a deadlock's victim.
SETTLE_RETRIES = 3


def _settle_batch(
    rt: Runtime,
    answered: list[tuple[int, _Admitted, VerifiedStatus, datetime]],
    results: list[Result | NotStored | None],
) -> dict[int, int]:
    """Settle a batch's answers in one transaction, payment rows locked in id order (each alone if
    the batch cannot be: a bug in one must not hold up the others). Fills ``results``; returns the
    other deliveries the answers finished (inbox id -> the delivery whose answer did)."""
    if not answered:
        return {}
    for attempt in range(SETTLE_RETRIES + 1):
        try:
            with transaction(rt.sessions) as session:
                settled, finished, unused = _settle_all(session, rt, answered)
        except OperationalError as exc:
            if _deadlock(exc) and attempt < SETTLE_RETRIES:
                log.info("a batch's settlement was a deadlock's victim: settling it again")
                continue
            if _deadlock(exc):  # the answers are kept: each settled alone
                return _settle_each(rt, answered, results)
            for i, adm, _, _ in answered:
                results[i] = _failed(rt, adm, exc)
            return {}
        except DB_UNAVAILABLE as exc:  # not a deadlock: unreachable, gone, or no connection free in time
            for i, adm, _, _ in answered:
                results[i] = _failed(rt, adm, exc)
            return {}
        except Exception:
            log.exception("a batch of %d answers could not be settled together: settling each alone", len(answered))
            return _settle_each(rt, answered, results)
        break
    for i, result in settled.items():
        results[i] = result
    for provider, held in unused:
        _release(rt, provider, held)
    return finished


def _deadlock(exc: OperationalError) -> bool:
    return getattr(exc.orig, "pgcode", None) in ("40P01", "40001")  # deadlock_detected, serialization_failure


def _settle_all(
    session: Session, rt: Runtime, answered: list[tuple[int, _Admitted, VerifiedStatus, datetime]]
) -> tuple[dict[int, Result], dict[int, int], list[tuple[str, str | None]]]:
    locked = payments.lock_many(session, {adm.payment.id for _, adm, _, _ in answered if adm.payment is not None})
    payments.hold_refunds(session, [(adm.parsed.provider, answer) for _, adm, answer, _ in answered])
    # The plans of the batch, held here: the session's identity map then serves every lookup of
    # them (it keeps objects only while they are referenced).
    codes = {adm.payment.plan_code for _, adm, _, _ in answered if adm.payment is not None and adm.payment.plan_code}
    plans = subscriptions.plans(session, codes)
    # Known payments in id order (locked so above), then orphans created in reference order.
    order = sorted(answered, key=lambda a: (a[1].payment.id if a[1].payment else 1 << 62, a[1].reference))
    settled: dict[int, Result] = {}
    decisions: dict[int, str] = {}
    answers: list[inbox.Answered] = []
    ctx = rt.context()
    plain: list[tuple[int, _Admitted, payments.Answer]] = []
    for i, adm, answer, asked_at in order:
        assert adm.work is not None and adm.reference is not None  # noqa: S101
        provider = adm.parsed.provider
        payment = (
            locked[adm.payment.id]
            if adm.payment is not None
            else payments.lock_or_create_orphan(session, provider, adm.reference, rt.context(provider))
        )
        detail = (
            f"answered by the provider at {asked_at.isoformat()} for delivery {adm.work.id}, after this one arrived"
        )
        answers.append(inbox.Answered(provider, payment.reference, asked_at, adm.work.id, detail))
        if payments.is_plain_success(payment, answer, adm.parsed.delivery, plans):
            plain.append((i, adm, payments.Answer(payment, answer, adm.parsed.delivery, adm.work.id, asked_at)))
            continue
        # Anything unusual (a failure, a mismatch, an orphan, a late success...) one at a time.
        verification = payments.apply_answer(
            session,
            payment,
            answer,
            rt.context(provider),
            trigger="webhook",
            claim=adm.parsed.delivery,
            inbox_id=adm.work.id,
            asked_at=asked_at,
        )
        decisions[adm.work.id] = verification.decision
        outcome = _classify(payment, answer)
        settled[i] = Result(outcome, verification.decision, adm.work.id, payment.reference, provider=provider)
    # The plain successes set-wise, in payment id order (their rows locked above).
    settled_plain = payments.apply_answers(session, [a for _, _, a in plain], ctx, trigger="webhook", plans=plans)
    for (i, adm, a), decision in zip(plain, settled_plain, strict=True):
        assert adm.work is not None  # noqa: S101
        decisions[adm.work.id] = decision
        settled[i] = Result(
            _classify(a.payment, a.answer), decision, adm.work.id, a.payment.reference, provider=a.payment.provider
        )
    facts.note(session, "batch_settled", set_wise=len(plain), one_by_one=len(answered) - len(plain))
    # Each table once for the whole batch: the deliveries answered, then those their answers finish.
    inbox.mark_many(session, decisions)
    finished: dict[int, int] = {}
    unused: list[tuple[str, str | None]] = []
    for other, held, answered_by in inbox.coalesce_many(session, answers):
        finished[other] = answered_by.done
        unused.append((answered_by.provider, held))
    return settled, finished, unused


def _settle_each(
    rt: Runtime,
    answered: list[tuple[int, _Admitted, VerifiedStatus, datetime]],
    results: list[Result | NotStored | None],
) -> dict[int, int]:
    finished: dict[int, int] = {}

    def one(adm: _Admitted, answer: VerifiedStatus, asked_at: datetime) -> Result:
        assert adm.work is not None and adm.reference is not None  # noqa: S101
        provider = adm.parsed.provider
        with transaction(rt.sessions) as session:
            locked = payments.lock_or_create_orphan(session, provider, adm.reference, rt.context(provider))
            result, others = _settle(
                session, rt, locked, adm.parsed.delivery, adm.work, answer=answer, asked_at=asked_at
            )
        for other, held in others:
            finished[other] = adm.work.id
            _release(rt, provider, held)
        return replace(result, provider=provider)

    for i, adm, answer, asked_at in answered:
        results[i] = _held(rt, adm, lambda adm=adm, answer=answer, asked_at=asked_at: one(adm, answer, asked_at))  # type: ignore[misc]
    return finished


# --------------------------------------------------------------------------- registrations


def register_payment(rt: Runtime, payload: Any) -> Result:
    raw = _raw(payload)
    try:
        registration = PaymentRegistration.model_validate(payload)
    except ValidationError as exc:
        detail = f"invalid payment registration: {_errors(exc)}"
        _dead_letter(rt, REGISTER_TASK, "invalid_registration", detail, raw)
        return Result(Disposition.MALFORMED, detail)
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
        return Result(Disposition.FAILED, str(exc), reference=registration.reference)
    mapped = {
        payments.RegisterOutcome.CREATED: Disposition.CREATED,
        payments.RegisterOutcome.DUPLICATE: Disposition.DUPLICATE,
        payments.RegisterOutcome.ADOPTED: Disposition.ADOPTED,
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
        return payments.lease_due(session, ctx.now, limit=limit, lease=timedelta(seconds=lease))


def verify_payment(rt: Runtime, payment_id: int, *, now: datetime | None = None, trigger: str = "recheck") -> Result:
    """Ask the provider about one payment and settle the answer (no callback needed)."""
    with transaction(rt.sessions) as session:
        payment = session.get(Payment, payment_id)
        if payment is None:
            return Result(Disposition.FAILED, f"no payment {payment_id}")
        if payment.status in FINAL_STATUSES:
            return Result(Disposition.DUPLICATE, f"already {payment.status.value}", reference=payment.reference)
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
            return Result(Disposition.RETRY, verification.decision, reference=reference, delay=delay)
        if answer is None:
            message = str(error)
            if isinstance(error, ProviderError) and _not_yet_visible(rt, provider, locked, error, ctx.now):
                message = f"not visible at the provider yet (normal shortly after registration): {error}"
            if isinstance(error, ProviderError) and refused_question(error):
                verification = payments.record_refusal(session, locked, message, ctx, trigger=trigger)
                return Result(Disposition.FAILED, verification.decision, reference=reference)
            verification = payments.record_error(session, locked, message, ctx, trigger=trigger)
            return Result(Disposition.RETRY, verification.decision, reference=reference)
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
    for _, held in unused:  # the deliveries it finished give their call-budget slots back
        _release(rt, provider, held)
    return result


def expire_subscriptions(rt: Runtime, *, now: datetime | None = None) -> int:
    with transaction(rt.sessions) as session:
        return len(expire_due(session, rt.context(now=now).now))
