"""Wave: Checkout API (status of a session), webhooks, Balance & Reconciliation API.

Facts used here (from Wave's API documentation; docs/providers.md sums up what payrecon relies on):

* every call carries ``Authorization: Bearer <api key>``; a key is bound to one wallet;
* a checkout session (``cos-…``) has two statuses: ``checkout_status`` (open, complete,
  expired) and ``payment_status`` (processing, cancelled, succeeded). Paid means
  complete + succeeded; a failed attempt (``last_payment_error``) while the session is
  still open can be retried by the customer, so it is not final;
* sessions are read with ``GET /v1/checkout/sessions/{id}``, or found by our reference
  with ``GET /v1/checkout/sessions/search?client_reference=…`` (several sessions may share
  one reference: the succeeded one wins, else the newest);
* webhooks are JSON events ``{"id": "AE_…", "type", "data"}``, authenticated either by
  ``Wave-Signature: t=<unix>,v1=<hex>[,v1=…]`` (HMAC-SHA256 over ``t`` + raw body, no
  separator; any v1 may match, for secret rotation) or by ``Authorization: Bearer <shared
  secret>``;
* ``GET /v1/transactions?date=YYYY-MM-DD&after=<cursor>`` lists one calendar day of the
  wallet's statement, cursor-paginated; ``amount`` is the signed effect on the wallet
  (net of ``fee``: a 3400 XOF checkout shows amount 3366, fee 34);
* amounts on the wire are major-unit strings; payrecon keeps int minor units.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Final
from urllib.parse import quote

import requests
from tenacity.wait import wait_base

from providers.base import (
    Delivery,
    DeliveryKind,
    ForgedDelivery,
    MalformedDelivery,
    Outcome,
    ProviderBadRequest,
    ProviderNotFound,
    ProviderProtocolError,
    RegistrationView,
    StatementEntry,
    VerifiedStatus,
    bounded_dedupe_key,
    bounded_minor,
    checked_reference,
    claim_text,
    delivery_json,
    unstorable,
)
from providers.http import HttpClient, json_body, json_object, retry_policy
from schemas.currency import MINOR_UNIT_EXPONENT, AmountError
from schemas.messages import WebhookEnvelope

PROVIDER: Final = "wave"
SIGNATURE_HEADER: Final = "Wave-Signature"

CHECKOUT_STATUSES: Final = ("open", "complete", "expired")
PAYMENT_STATUSES: Final = ("processing", "cancelled", "succeeded")
#: Event types about checkout sessions (their ``data`` is the session object).
CHECKOUT_EVENT_PREFIX: Final = "checkout."
#: Keys of ``RegistrationView.provider_data`` that may hold the checkout session id.
SESSION_ID_KEYS: Final = ("checkout_session_id", "session_id")

#: A signature header never needs more than a few v1 values (rotation): refuse floods.
_MAX_SIGNATURES = 16
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_MAX_EVENT_ID = 200


# --------------------------------------------------------------------------- signatures


def compute_signature(secret: str, timestamp: str | int, body: str) -> str:
    """Wave's v1 signature: lowercase hex HMAC-SHA256(secret, ``timestamp`` + raw ``body``).

    No separator between the two (unlike Stripe's ``t.body``).
    """
    message = f"{timestamp}{body}".encode()
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_header(secrets: Sequence[str], timestamp: str | int, body: str) -> str:
    """A ``Wave-Signature`` value: ``t=<timestamp>`` then one ``v1=`` per secret, in order."""
    parts = [f"t={timestamp}"] + [f"v1={compute_signature(secret, timestamp, body)}" for secret in secrets]
    return ",".join(parts)


def parse_signature_header(value: str) -> tuple[str, tuple[str, ...]]:
    """Split ``t=<unix>,v1=<hex>[,v1=<hex>…]`` into ``(t, v1 values)``; ``ForgedDelivery`` if garbled.

    Unknown keys (a future ``v2``) are ignored; a second ``t`` is refused.
    """
    timestamp: str | None = None
    signatures: list[str] = []
    for part in value.split(","):
        key, sep, item = part.strip().partition("=")
        if not sep:
            raise ForgedDelivery(f"garbled {SIGNATURE_HEADER} header: {part.strip()[:20]!r} is not key=value")
        key, item = key.strip(), item.strip()
        if key == "t":
            if timestamp is not None:
                raise ForgedDelivery(f"garbled {SIGNATURE_HEADER} header: two timestamps")
            timestamp = item
        elif key == "v1":
            signatures.append(item)
    if timestamp is None or not _TIMESTAMP.fullmatch(timestamp):
        raise ForgedDelivery(f"garbled {SIGNATURE_HEADER} header: no t=<unix seconds>")
    if not signatures:
        raise ForgedDelivery(f"garbled {SIGNATURE_HEADER} header: no v1 signature")
    if len(signatures) > _MAX_SIGNATURES:
        raise ForgedDelivery(f"garbled {SIGNATURE_HEADER} header: {len(signatures)} signatures")
    return timestamp, tuple(signatures)


# --------------------------------------------------------------------------- sessions


def parse_wave_datetime(value: object) -> datetime | None:
    """Parse Wave's ISO-8601 UTC timestamp (``2022-12-18T01:17:09Z``); None/blank → None.

    A timestamp without an offset is read as UTC. Raise ``ValueError`` on anything else.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ValueError(f"timestamp is not a string: {value!r}")
    parsed = datetime.fromisoformat(value.strip())
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def classify(checkout_status: str, payment_status: str) -> tuple[Outcome, str | None]:
    """Map a session's two statuses to ``(outcome, note)``; ``ValueError`` for unknown values.

    Paid is complete + succeeded. Not paid is a cancelled payment on a closed session, or
    an expired session. An open session is never final, even after a failed attempt
    (``last_payment_error``): the customer may retry. Contradictory pairs (a succeeded
    payment on a session not complete) are reported PENDING with a note, so the payment
    is re-checked rather than credited or failed on a guess.
    """
    if checkout_status not in CHECKOUT_STATUSES:
        raise ValueError(f"unknown checkout_status {checkout_status[:30]!r}")
    if payment_status not in PAYMENT_STATUSES:
        raise ValueError(f"unknown payment_status {payment_status[:30]!r}")
    if payment_status == "succeeded":
        if checkout_status == "complete":
            return Outcome.SUCCEEDED, None
        return Outcome.PENDING, f"payment succeeded but the session is {checkout_status}"
    if checkout_status == "open":
        return Outcome.PENDING, None
    if checkout_status == "expired" or payment_status == "cancelled":
        return Outcome.FAILED, None
    return Outcome.PENDING, "session complete but its payment is still processing"


def _status_label(checkout_status: object, payment_status: object) -> str | None:
    """``"complete/succeeded"``: both statuses in one string, as stored for the history."""
    parts = [str(s)[:30] for s in (checkout_status, payment_status) if s not in (None, "")]
    return "/".join(parts) or None


def _created(session: Mapping[str, Any]) -> datetime:
    try:
        when = parse_wave_datetime(session.get("when_created"))
    except ValueError:
        when = None
    return when or datetime.min.replace(tzinfo=UTC)


def pick_session(sessions: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The session that speaks for a reference: the succeeded one, else the newest by ``when_created``.

    ``when_created`` has whole seconds: on a tie the later one in Wave's list wins.
    """
    if not sessions:
        raise ValueError("no sessions")
    succeeded = [s for s in sessions if s.get("payment_status") == "succeeded"]
    candidates = list(enumerate(succeeded or sessions))
    return max(candidates, key=lambda pair: (_created(pair[1]), pair[0]))[1]


def _error_text(error: object) -> tuple[str | None, str | None]:
    """``(code, "code: message")`` of a ``last_payment_error`` object."""
    if not isinstance(error, Mapping):
        return None, None
    code = str(error["code"]) if error.get("code") else None  # cut, when too long, as every code (``storable``)
    message = str(error["message"])[:200] if error.get("message") else None
    text = ": ".join(part for part in (code, message) if part) or None
    return code, text


def _money(data: Mapping[str, Any], where: str) -> tuple[int | None, str | None]:
    """``(amount in minor units, currency)`` of a session or statement line; ``ValueError`` if bad."""
    currency = data.get("currency")
    raw_amount = data.get("amount")
    if currency is not None and (not isinstance(currency, str) or currency not in MINOR_UNIT_EXPONENT):
        raise ValueError(f"{where}currency {str(currency)[:10]!r} is not supported")
    if raw_amount is None or (isinstance(raw_amount, str) and not raw_amount.strip()):
        return None, currency
    if currency is None:
        raise ValueError(f"{where}amount without currency")
    if isinstance(raw_amount, bool) or not isinstance(raw_amount, str | int | Decimal):
        raise ValueError(f"{where}amount has type {type(raw_amount).__name__}")
    try:
        return bounded_minor(raw_amount, currency), currency
    except AmountError:
        raise ValueError(f"{where}amount {str(raw_amount)[:30]!r} is not an exact {currency} amount") from None


def parse_session(reference: str, session: Mapping[str, Any], *, raw: str) -> VerifiedStatus:
    """Turn one checkout session object into a ``VerifiedStatus``; ``ValueError`` if unreadable."""
    checkout_status = session.get("checkout_status")
    payment_status = session.get("payment_status")
    if not isinstance(checkout_status, str) or not isinstance(payment_status, str):
        raise ValueError("session has no checkout_status or payment_status")
    outcome, note = classify(checkout_status, payment_status)
    amount, currency = _money(session, "")
    code, message = _error_text(session.get("last_payment_error"))
    paid_at = None
    if outcome is Outcome.SUCCEEDED:
        try:
            paid_at = parse_wave_datetime(session.get("when_completed"))
        except ValueError:
            raise ValueError(f"bad when_completed {str(session.get('when_completed'))[:40]!r}") from None
    transaction_id = session.get("transaction_id")
    return VerifiedStatus(
        reference=reference,
        outcome=outcome,
        provider_status=_status_label(checkout_status, payment_status),
        provider_code=code,
        provider_message="; ".join(part for part in (message, note) if part) or None,
        amount=amount,
        currency=currency,
        provider_transaction_id=str(transaction_id) if transaction_id else None,
        paid_at=paid_at,
        raw=raw,
    )


def _error_code(response: requests.Response) -> str | None:
    """Wave's error ``code`` (``checkout-session-not-found``, ``no-matching-api-key``...) if any."""
    body = json_body(response)
    if body is not None and body.get("code") not in (None, ""):
        return str(body["code"])[:64]
    return None


# --------------------------------------------------------------------------- statement


@dataclass(frozen=True, slots=True)
class TransactionItem:
    """One line of the wallet statement (``GET /v1/transactions``), amounts in minor units."""

    timestamp: datetime
    transaction_id: str
    transaction_type: str | None
    #: Signed effect on the wallet, net of ``fee`` (gross of a checkout = amount + fee).
    amount: int
    fee: int
    #: Wallet balance after this line, when Wave gives it.
    balance: int | None
    currency: str
    is_reversal: bool = False
    client_reference: str | None = None
    checkout_api_session_id: str | None = None
    counterparty_name: str | None = None
    counterparty_mobile: str | None = None
    payment_reason: str | None = None
    #: The item exactly as received (every other field Wave sends).
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class TransactionPage:
    """One page of one day's statement; pass ``end_cursor`` as ``after`` for the next one."""

    day: date
    items: tuple[TransactionItem, ...]
    start_cursor: str | None
    end_cursor: str | None
    has_next_page: bool


def _opt_str(item: Mapping[str, Any], key: str) -> str | None:
    value = item.get(key)
    return str(value) if value not in (None, "") else None


def parse_transaction_item(item: Mapping[str, Any]) -> TransactionItem:
    """One statement item; ``ValueError`` naming the field if it cannot be read."""
    transaction_id = item.get("transaction_id")
    if not isinstance(transaction_id, str) or not transaction_id:
        raise ValueError("item without transaction_id")
    where = f"item {transaction_id[:20]}: "
    try:
        timestamp = parse_wave_datetime(item.get("timestamp"))
    except ValueError:
        raise ValueError(f"{where}bad timestamp {str(item.get('timestamp'))[:40]!r}") from None
    if timestamp is None:
        raise ValueError(f"{where}no timestamp")
    amount, currency = _money(item, where)
    if amount is None or currency is None:
        raise ValueError(f"{where}no amount or currency")
    fee = _money({"amount": item.get("fee"), "currency": currency}, f"{where}fee ")[0] or 0
    balance = _money({"amount": item.get("balance"), "currency": currency}, f"{where}balance ")[0]
    is_reversal = item.get("is_reversal", False)
    if not isinstance(is_reversal, bool):
        raise ValueError(f"{where}is_reversal is not a boolean")
    return TransactionItem(
        timestamp=timestamp,
        transaction_id=transaction_id,
        transaction_type=_opt_str(item, "transaction_type"),
        amount=amount,
        fee=fee,
        balance=balance,
        currency=currency,
        is_reversal=is_reversal,
        client_reference=_opt_str(item, "client_reference"),
        checkout_api_session_id=_opt_str(item, "checkout_api_session_id"),
        counterparty_name=_opt_str(item, "counterparty_name"),
        counterparty_mobile=_opt_str(item, "counterparty_mobile"),
        payment_reason=_opt_str(item, "payment_reason"),
        raw=dict(item),
    )


def parse_transactions_page(day: date, text: str, *, http_status: int = 200) -> TransactionPage:
    """Turn a ``/v1/transactions`` answer into a ``TransactionPage``; ``ProviderProtocolError`` if bad."""
    body = json_object(text, "transactions answer", provider=PROVIDER, http_status=http_status)
    items, page_info = body.get("items"), body.get("page_info")
    where: dict[str, Any] = {"provider": PROVIDER, "http_status": http_status}
    if not isinstance(items, list) or not isinstance(page_info, dict):
        raise ProviderProtocolError("transactions answer has no items list or page_info object", **where)
    has_next = page_info.get("has_next_page")
    if not isinstance(has_next, bool):
        raise ProviderProtocolError("page_info.has_next_page is not a boolean", **where)
    answered_day = body.get("date")
    if answered_day is not None and answered_day != day.isoformat():
        raise ProviderProtocolError(f"asked for {day.isoformat()}, got date {str(answered_day)[:12]!r}", **where)
    try:
        parsed = tuple(parse_transaction_item(item) for item in items if _is_object(item))
    except ValueError as exc:
        raise ProviderProtocolError(f"transactions answer: {str(exc)[:150]}", **where) from None
    if len(parsed) != len(items):
        raise ProviderProtocolError("transactions answer has a non-object item", **where)
    return TransactionPage(
        day=day,
        items=parsed,
        start_cursor=_opt_str(page_info, "start_cursor"),
        end_cursor=_opt_str(page_info, "end_cursor"),
        has_next_page=has_next,
    )


def _is_object(value: object) -> bool:
    return isinstance(value, dict)


# --------------------------------------------------------------------------- client


class WaveClient(HttpClient):
    """``ProviderClient`` for Wave's Checkout API, plus the statement for nightly reconciliation."""

    name = PROVIDER

    def __init__(
        self,
        *,
        api_url: str,
        api_key: str,
        webhook_secrets: Sequence[str] = (),
        webhook_shared_secret: str | None = None,
        tolerance: int = 300,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (3.05, 10.0),
        max_attempts: int = 3,
        deadline: float = 20.0,
        wait: wait_base | None = None,
    ) -> None:
        """Configure the client.

        ``webhook_secrets``: the signing secrets (``wave_…_WHS_…``) a ``Wave-Signature`` may
        use; give the new and the old one during a rotation. ``webhook_shared_secret``: the
        Bearer secret of the shared-secret strategy. ``tolerance``: seconds a signature's
        timestamp may be away from the delivery's arrival (the envelope's ``received_at``, stamped by the
        receiver), however long after it is read. ``wait`` replaces the jittered backoff
        (tests pass ``wait_none()``).
        """
        if isinstance(webhook_secrets, str):
            raise TypeError("webhook_secrets must be a sequence of secrets, not one string")
        self.api_url = api_url.rstrip("/")
        # Secrets live in underscored attributes that __repr__ never shows.
        self._api_key = api_key
        self._webhook_secrets = tuple(s for s in webhook_secrets if s)
        self._shared_secret = webhook_shared_secret or None
        self.tolerance = tolerance
        super().__init__(_error_code, session, timeout, retry_policy(max_attempts, deadline, wait))

    def __repr__(self) -> str:
        strategies = [
            f"{len(self._webhook_secrets)} signing secret(s)" if self._webhook_secrets else "",
            "shared secret" if self._shared_secret else "",
        ]
        return f"WaveClient(api_url={self.api_url!r}, webhooks={', '.join(s for s in strategies if s) or 'none'})"

    # ----------------------------------------------------------------- webhooks

    def parse_delivery(self, envelope: WebhookEnvelope) -> Delivery:
        """Parse a Wave event (no network): checkout events are PAYMENT, the rest IGNORED."""
        event = delivery_json(envelope.body, "body is not JSON; Wave posts a JSON event")
        if not isinstance(event, dict):
            raise MalformedDelivery("body is not a JSON object")
        event_id, event_type, data = event.get("id"), event.get("type"), event.get("data")
        if not isinstance(event_id, str) or not event_id.strip():
            raise MalformedDelivery("missing or bad event id")
        if len(event_id) > _MAX_EVENT_ID:
            raise MalformedDelivery(
                f"missing or bad event id: {len(event_id)} characters long; the limit is {_MAX_EVENT_ID}"
            )
        if (problem := unstorable(event_id)) is not None:
            raise MalformedDelivery(f"missing or bad event id: it contains {problem}")
        if not isinstance(event_type, str) or not event_type.strip():
            raise MalformedDelivery(f"event {event_id[:40]}: missing type")
        if not isinstance(data, dict):
            raise MalformedDelivery(f"event {event_id[:40]}: data is not an object")
        # The signature covers timestamp + the whole body, and Wave resends an event under its id
        # (signed anew): the id is the key. Ids near the 200-character column are hashed.
        dedupe_key = bounded_dedupe_key(f"event:{event_id}")
        if not event_type.startswith(CHECKOUT_EVENT_PREFIX):
            # merchant.payment_received, b2b.*, the portal's test event: authentic or not,
            # nothing payrecon registered.
            return Delivery(kind=DeliveryKind.IGNORED, dedupe_key=dedupe_key, claimed_status=claim_text(event_type))
        reference = data.get("client_reference")
        if not isinstance(reference, str) or not reference.strip():
            raise MalformedDelivery(f"no client_reference: {event_type[:40]} event {event_id[:40]} names no payment")
        checked_reference(reference, "data.client_reference")
        try:
            amount, currency = _money(data, "data.")
        except ValueError as exc:
            raise MalformedDelivery(str(exc)) from None
        provider_ids = {
            key: str(data[source])
            for key, source in (("checkout_session_id", "id"), ("transaction_id", "transaction_id"))
            if data.get(source) not in (None, "")
        }
        return Delivery(
            kind=DeliveryKind.PAYMENT,
            dedupe_key=dedupe_key,
            reference=reference,
            claimed_status=claim_text(_status_label(data.get("checkout_status"), data.get("payment_status"))),
            claimed_amount=amount,
            claimed_currency=currency,
            provider_ids=provider_ids,
        )

    def authenticate(
        self, envelope: WebhookEnvelope, delivery: Delivery, registration: RegistrationView | None
    ) -> None:
        """Accept a valid ``Wave-Signature`` or a valid Bearer shared secret; else ``ForgedDelivery``.

        Either configured strategy may pass. No API call.
        """
        if not self._webhook_secrets and not self._shared_secret:
            raise ForgedDelivery("no webhook secret configured")
        failures: list[str] = []
        signature = envelope.header(SIGNATURE_HEADER)
        authorization = envelope.header("Authorization")
        if self._webhook_secrets:
            if signature is None:
                failures.append(f"missing {SIGNATURE_HEADER} header")
            else:
                try:
                    self._check_signature(signature, envelope.body, received=envelope.received_at.timestamp())
                    return
                except ForgedDelivery as exc:
                    failures.append(str(exc))
        if self._shared_secret:
            if authorization is None:
                failures.append("missing Authorization header")
            elif self._check_bearer(authorization):
                return
            else:
                failures.append("Authorization bearer secret does not match")
        # The most telling reason first: a header that was sent beats one that was not.
        failures.sort(key=lambda reason: reason.startswith("missing"))
        raise ForgedDelivery("; ".join(failures))

    def _check_signature(self, header: str, body: str, *, received: float) -> None:
        """The header's signature of ``body`` by one of the secrets, dated within ``tolerance`` of ``received`` (when
        the receiver took the delivery: a delivery read late, after an outage or a backlog, or again after its
        verification was put off, is as fresh as when it came; a replay reaches the receiver late)."""
        timestamp, candidates = parse_signature_header(header)
        expected = [compute_signature(secret, timestamp, body).encode() for secret in self._webhook_secrets]
        # Bytes, not str: compare_digest refuses non-ASCII str, and the header is attacker-controlled.
        offered = [candidate.lower().encode("utf-8", "replace") for candidate in candidates]
        if not any(hmac.compare_digest(want, got) for want in expected for got in offered):
            raise ForgedDelivery(f"{SIGNATURE_HEADER} does not match any configured secret")
        age = received - int(timestamp)
        if abs(age) > self.tolerance:
            when = f"signed {age:.0f} s ago" if age > 0 else f"dated {-age:.0f} s in the future"
            raise ForgedDelivery(f"stale timestamp: {when}, tolerance {self.tolerance} s")

    def _check_bearer(self, authorization: str) -> bool:
        scheme, _, secret = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or self._shared_secret is None:
            return False
        return hmac.compare_digest(secret.strip().encode("utf-8", "replace"), self._shared_secret.encode())

    # ----------------------------------------------------------------- status API

    def check(self, registration: RegistrationView) -> VerifiedStatus:
        """Read the registered checkout session, or search the reference's sessions."""
        session_id = self._session_id(registration)
        if session_id is not None:
            response = self._get(f"/v1/checkout/sessions/{quote(session_id, safe='')}")
            body = json_object(response.text, "session answer", provider=PROVIDER, http_status=response.status_code)
            owner = body.get("client_reference")
            if owner not in (None, "", registration.reference):
                raise ProviderProtocolError(
                    f"session {session_id[:40]} belongs to client_reference {str(owner)[:40]!r}, "
                    f"not {registration.reference[:40]!r}",
                    provider=PROVIDER,
                    http_status=response.status_code,
                )
            return self._verified(registration.reference, body, response)
        response = self._get("/v1/checkout/sessions/search", params={"client_reference": registration.reference})
        body = json_object(response.text, "search answer", provider=PROVIDER, http_status=response.status_code)
        result = body.get("result")
        if not isinstance(result, list) or not all(isinstance(s, dict) for s in result):
            raise ProviderProtocolError(
                "search answer has no result list of sessions", provider=PROVIDER, http_status=response.status_code
            )
        if not result:
            raise ProviderNotFound(
                f"no checkout session has client_reference {registration.reference[:40]!r}",
                provider=PROVIDER,
                http_status=response.status_code,
                code="checkout-session-not-found",
            )
        return self._verified(registration.reference, pick_session(result), response)

    @staticmethod
    def _session_id(registration: RegistrationView) -> str | None:
        for key in SESSION_ID_KEYS:
            value = registration.provider_data.get(key)
            if value in (None, ""):
                continue
            if not isinstance(value, str) or len(value) > 200:
                raise ProviderBadRequest(f"provider_data {key} must be a session id string", provider=PROVIDER)
            return value
        return None

    @staticmethod
    def _verified(reference: str, session: Mapping[str, Any], response: requests.Response) -> VerifiedStatus:
        try:
            return parse_session(reference, session, raw=response.text)
        except ValueError as exc:
            raise ProviderProtocolError(
                f"session answer: {str(exc)[:150]}", provider=PROVIDER, http_status=response.status_code
            ) from None

    def _get(self, path: str, *, params: Mapping[str, str] | None = None) -> requests.Response:
        # No redirects (HttpClient._send): one would carry the key elsewhere or answer from somewhere else.
        return self._send(
            "GET",
            f"{self.api_url}{path}",
            redact=(self._api_key,),
            params=params,
            headers={"Authorization": f"Bearer {self._api_key}"},
        )

    # ----------------------------------------------------------------- statement

    def list_transactions(self, day: date, *, after: str | None = None) -> TransactionPage:
        """One page of ``day``'s wallet statement (``after``: the previous page's ``end_cursor``)."""
        params = {"date": day.isoformat()}
        if after is not None:
            params["after"] = after
        response = self._get("/v1/transactions", params=params)
        return parse_transactions_page(day, response.text, http_status=response.status_code)

    def iter_transactions(self, day: date) -> Iterator[TransactionItem]:
        """Every statement line of ``day``, following the cursor until ``has_next_page`` is false."""
        after: str | None = None
        seen: set[str] = set()
        while True:
            page = self.list_transactions(day, after=after)
            yield from page.items
            if not page.has_next_page:
                return
            if page.end_cursor is None or page.end_cursor in seen:
                raise ProviderProtocolError(
                    f"transactions of {day.isoformat()}: has_next_page without a new end_cursor", provider=PROVIDER
                )
            seen.add(page.end_cursor)
            after = page.end_cursor

    def statement(self, day: date) -> Iterator[StatementEntry]:
        """The reconciliation's view of ``day``: checkout payments and their refunds, gross, with fees.

        Wave's ``amount`` is the signed, net effect on the wallet; a checkout's gross is
        ``amount + fee``. Other lines (payouts, sweeps, merchant payments) are not ours to match.
        """
        for item in self.iter_transactions(day):
            kind = item.transaction_type or ("api_checkout" if item.checkout_api_session_id else None)
            if kind not in ("api_checkout", "api_checkout_refund"):
                continue
            refund = kind == "api_checkout_refund" or item.is_reversal
            yield StatementEntry(
                reference=item.client_reference,
                provider_transaction_id=item.transaction_id,
                outcome=Outcome.REFUNDED if refund else Outcome.SUCCEEDED,
                amount=abs(item.amount + item.fee),
                currency=item.currency,
                fee=abs(item.fee),
                occurred_at=item.timestamp,
                raw=json.dumps(dict(item.raw), sort_keys=True, default=str),
            )
