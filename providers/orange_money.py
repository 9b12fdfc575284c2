"""Orange Money Web Payment API ("OM WebPay"): OAuth token, notification parsing, status check.

Facts used here (from Orange's WebPay API documentation; docs/providers.md sums up what payrecon relies on):

* every call carries an OAuth 2.0 client-credentials token from ``POST /oauth/v3/token``
  (``Authorization: Basic base64(client_id:client_secret)``, form
  ``grant_type=client_credentials``), answered ``{"token_type": "Bearer",
  "access_token", "expires_in"}``; ``expires_in`` is reported as ``"7776000"`` (a
  string, 90 days) but may be an int, and Orange's generic guide says 60 minutes: the
  client caches the token until shortly before the announced expiry and, whatever the
  value, refreshes once on a 401 from a business call (Orange gateway codes 40/41/42);
* the status call ``POST /orange-money-webpay/{cc}/v1/transactionstatus`` needs
  ``order_id``, ``amount`` (integer, major units) **and** ``pay_token``, and answers
  ``{"status", "order_id", "txnid"}`` with HTTP 200 or 201; statuses are INITIATED,
  PENDING, SUCCESS, FAILED and EXPIRED;
* the notification is a JSON POST ``{"status", "notif_token", "txnid"}`` to the
  ``notif_url`` given at init. It names no order: its only authenticity proof is the
  ``notif_token`` the init answer returned for that order (no HMAC, no timestamp).

What the merchant must register in ``provider_data``: ``pay_token`` (for ``check``) and
``notif_token`` (for ``authenticate`` and for finding the payment from a notification
whose URL does not carry the order id).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Unpack
from urllib.parse import unquote

import requests

from providers.auth import TokenClient, Transport
from providers.base import (
    AwaitingRegistration,
    Delivery,
    DeliveryKind,
    ForgedDelivery,
    JsonTooDeep,
    MalformedDelivery,
    Outcome,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderProtocolError,
    ProviderRefusedQuestion,
    ProviderUnreadableAnswer,
    RegistrationView,
    VerifiedStatus,
    bounded_dedupe_key,
    bounded_minor,
    checked_reference,
    claim_text,
    delivery_json,
    load_json,
    query_value,
    unstorable,
)
from providers.http import json_body, json_object
from schemas.currency import MINOR_UNIT_EXPONENT, AmountError, to_major
from schemas.messages import WebhookEnvelope

PROVIDER: Final = "orange_money"

#: ``transactionstatus`` statuses → outcome. EXPIRED (the payer confirmed after the
#: pay_token expired) is final and unpaid, hence FAILED; ``provider_status`` keeps "EXPIRED".
STATUS_TABLE: Final[Mapping[str, Outcome]] = {
    "INITIATED": Outcome.PENDING,
    "PENDING": Outcome.PENDING,
    "SUCCESS": Outcome.SUCCEEDED,
    "FAILED": Outcome.FAILED,
    "EXPIRED": Outcome.FAILED,
}

#: The play-money currency of Orange's ``dev`` environment. It has no ISO code; when
#: the status answer echoes it, the amount is read in the registration's currency.
DEV_CURRENCY: Final = "OUV"

#: Used when the token answer has no readable ``expires_in`` (Orange's generic guide: 60 min).
DEFAULT_TOKEN_TTL: Final = 3600.0
#: Refresh this long before the announced expiry (at most; 10 % of short lifetimes).
TOKEN_REFRESH_MARGIN: Final = 300.0

_REFERENCE = re.compile(r"^[A-Za-z0-9._:\-]{1,100}$")
_MAX_TOKEN_CHARS = 256
#: The path segment after which a notif_url carries the order id: ``.../notify/{order_id}``.
NOTIFY_SEGMENT: Final = "notify"


def _error_code(response: requests.Response) -> str | None:
    """Orange's error code from an error body: gateway ``code`` (40, 41, 42...) or OAuth ``error``."""
    body = json_body(response)
    if body is None:
        return None
    for key in ("code", "error"):
        value = body.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()[:40]
    return None


def parse_token_response(text: str) -> tuple[str, float]:
    """``(access_token, lifetime in seconds)`` from the token answer; ``ProviderProtocolError``.

    ``expires_in`` may be an int or a digit string; missing or unreadable, the
    lifetime is :data:`DEFAULT_TOKEN_TTL` (a 401 triggers a refresh anyway).
    """
    where: dict[str, Any] = {"provider": PROVIDER}
    try:
        body = load_json(text)
    except JsonTooDeep as exc:
        raise ProviderProtocolError(f"token answer is {exc}", **where) from None
    except ValueError:
        raise ProviderUnreadableAnswer("token answer is not JSON", **where) from None
    if not isinstance(body, dict):
        raise ProviderProtocolError("token answer is not a JSON object", **where)
    token = body.get("access_token")
    if not isinstance(token, str) or not token.strip():
        raise ProviderProtocolError("token answer has no access_token", **where)
    token_type = body.get("token_type")
    if token_type is not None and str(token_type).lower() != "bearer":
        raise ProviderProtocolError(f"token_type {str(token_type)[:20]!r} is not Bearer", **where)
    raw_ttl = body.get("expires_in")
    ttl = DEFAULT_TOKEN_TTL
    if isinstance(raw_ttl, int) and not isinstance(raw_ttl, bool):
        ttl = float(raw_ttl)
    elif isinstance(raw_ttl, str) and raw_ttl.strip().isdigit():
        ttl = float(raw_ttl.strip())
    return token.strip(), max(ttl, 0.0)


def major_amount(amount: int, currency: str) -> int:
    """Minor units → Orange's integer major-unit amount; ``ValueError`` if not whole."""
    major = to_major(amount, currency)  # AmountError (a ValueError) for an unknown currency
    if major != major.to_integral_value():
        raise ValueError(f"{amount} {currency} minor units is not a whole number of {currency}")
    return int(major)


# --------------------------------------------------------------------------- status answer


def parse_status_response(registration: RegistrationView, text: str, *, http_status: int = 201) -> VerifiedStatus:
    """Turn the body of a 2xx ``transactionstatus`` answer into a ``VerifiedStatus``.

    Amount: Orange's documented answer is ``{status, order_id, txnid}``: no amount, no
    currency, so the answer confirms none (``amount`` None). The question named the
    registered amount (``registered_amount_asked``): a SUCCESS is settled at it, and the
    statement confirms it at reconciliation. When the answer echoes an ``amount`` (and
    maybe ``currency``), as some deployments do, that echo is what Orange says was paid:
    it is recorded as confirmed and the pipeline compares it with the registration
    (tampering).
    """
    where: dict[str, Any] = {"provider": PROVIDER, "http_status": http_status}
    body = json_object(text, "status answer", **where)
    status = body.get("status")
    if not isinstance(status, str) or not status.strip():
        raise ProviderProtocolError(f"status answer has no status string (status={str(status)[:40]!r})", **where)
    status = status.strip().upper()
    outcome = STATUS_TABLE.get(status)
    if outcome is None:
        raise ProviderProtocolError(f"unknown transaction status {status[:40]!r}", code=status[:40], **where)
    order_id = body.get("order_id")
    if order_id is not None and str(order_id) != registration.reference:
        raise ProviderProtocolError(
            f"status answer is about order {str(order_id)[:100]!r}, not {registration.reference!r}", **where
        )
    try:
        amount, currency = _confirmed_money(body, registration)
    except (AmountError, ValueError) as exc:
        raise ProviderProtocolError(f"status answer: {str(exc)[:150]}", **where) from None
    txnid = body.get("txnid")
    message = body.get("message")
    return VerifiedStatus(
        reference=registration.reference,
        outcome=outcome,
        provider_status=status,
        provider_code=None,
        provider_message=str(message)[:200] if message else None,
        amount=amount,
        currency=currency,
        provider_transaction_id=str(txnid) if txnid else None,
        paid_at=None,  # the status answer carries no date; never substitute our clock
        raw=text,
        registered_amount_asked=True,
    )


def _confirmed_money(body: Mapping[str, Any], registration: RegistrationView) -> tuple[int | None, str | None]:
    """The amount and currency the answer itself echoes, or ``(None, None)``: never the registration's."""
    raw_amount = body.get("amount")
    if raw_amount is None or (isinstance(raw_amount, str) and not raw_amount.strip()):
        return None, None
    if isinstance(raw_amount, bool) or not isinstance(raw_amount, str | int | Decimal):
        raise ValueError(f"amount has type {type(raw_amount).__name__}")
    raw_currency = body.get("currency")
    if raw_currency is None or str(raw_currency) == DEV_CURRENCY:
        currency = registration.currency
    elif str(raw_currency) in MINOR_UNIT_EXPONENT:
        currency = str(raw_currency)
    else:
        raise ValueError(f"currency {str(raw_currency)[:10]!r} is not supported")
    if currency is None:
        raise ValueError("amount without a currency")
    return bounded_minor(raw_amount, currency), currency


# --------------------------------------------------------------------------- notifications


def notification_fields(body: str) -> dict[str, Any]:
    """The JSON object of a notification body; ``MalformedDelivery`` unless it has a ``notif_token``."""
    fields = delivery_json(body, "body is not JSON; Orange notifications are JSON objects")
    if not isinstance(fields, dict):
        raise MalformedDelivery("body is not a JSON object")
    token = fields.get("notif_token")
    if not isinstance(token, str) or not token.strip():
        raise MalformedDelivery("missing notif_token")
    if len(token) > _MAX_TOKEN_CHARS:
        raise MalformedDelivery(f"notif_token is longer than {_MAX_TOKEN_CHARS} characters")
    problem = unstorable(token)  # it is looked up in the payments' provider_data: PostgreSQL text
    if problem is not None:
        raise MalformedDelivery(f"notif_token contains {problem}")
    for name in ("status", "txnid"):
        if fields.get(name) is not None and not isinstance(fields[name], str):
            raise MalformedDelivery(f"{name} must be a string")
    return fields


def _checked(value: str, where: str) -> str:
    checked_reference(value, where)  # names the length limit, NUL characters
    if not _REFERENCE.fullmatch(value):
        raise MalformedDelivery(f"{where} is not a valid reference")
    return value


#: The placeholder of ``ORANGE_MONEY_NOTIF_URL`` that stands for the order id.
ORDER_ID_PLACEHOLDER: Final = "{order_id}"


@dataclass(frozen=True, slots=True)
class NotifUrl:
    """Where the merchant's ``notif_url`` carries the order id (``ORANGE_MONEY_NOTIF_URL``).

    Orange posts to whatever ``notif_url`` the merchant gave at init, and its body names no
    order, so the operator declares the shape: a path with ``{order_id}`` in one segment
    (``/orange/notif/{order_id}``, ``/om/order-{order_id}/callback``) or a query parameter
    whose value is ``{order_id}`` (``/orange/notif?order={order_id}``). A scheme and host, if
    given, are ignored: the receiver's envelope has the path and query it received.
    """

    template: str
    #: The path pattern (the order id in group ``order_id``), or None for a query parameter.
    path: re.Pattern[str] | None
    #: The query parameter holding the order id, or None for a path template.
    query: str | None

    @classmethod
    def parse(cls, template: str) -> NotifUrl:
        """``ValueError`` with a sentence saying what is wrong with ``template``."""
        text = template.strip()
        example = "e.g. /orange/notif/{order_id} or /orange/notif?order_id={order_id}"
        if "://" in text:
            scheme, rest = text.split("://", 1)
            if scheme.lower() not in ("http", "https"):
                raise ValueError(f"must be a URL path starting with / or an http(s) URL, {example}")
            text = rest[rest.index("/") :] if "/" in rest else "/"
        if not text.startswith("/"):
            raise ValueError(f"must be a URL path starting with / or an http(s) URL, {example}")
        if "#" in text:
            raise ValueError("must not have a #fragment: Orange never sends one")
        if text.count(ORDER_ID_PLACEHOLDER) != 1:
            raise ValueError(f"must contain {ORDER_ID_PLACEHOLDER} exactly once, {example}")
        path, _, query = text.partition("?")
        if ORDER_ID_PLACEHOLDER in query:
            for pair in query.split("&"):
                name, _, value = pair.partition("=")
                if ORDER_ID_PLACEHOLDER in pair:
                    if value != ORDER_ID_PLACEHOLDER or not name:
                        raise ValueError(f"a query parameter must be NAME={ORDER_ID_PLACEHOLDER} as a whole, {example}")
                    return cls(template=template.strip(), path=None, query=unquote(name))
        if "{" in path.replace(ORDER_ID_PLACEHOLDER, "") or "}" in path.replace(ORDER_ID_PLACEHOLDER, ""):
            raise ValueError(f"the only placeholder is {ORDER_ID_PLACEHOLDER}, {example}")
        before, after = path.rstrip("/").split(ORDER_ID_PLACEHOLDER)
        pattern = re.compile(f"{re.escape(unquote(before))}(?P<order_id>[^/]+){re.escape(unquote(after))}/?")
        return cls(template=template.strip(), path=pattern, query=None)

    def reference(self, envelope: WebhookEnvelope) -> str | None:
        """The order id this URL shape finds in ``envelope``, or None if its URL has another shape."""
        if self.query is not None:
            value = query_value(envelope.query, self.query)
            return None if value is None else _checked(value, f"query parameter {self.query}")
        found = self.path.fullmatch(unquote(envelope.path)) if self.path is not None else None
        if found is None:
            return None
        return _checked(found.group("order_id"), "the notification path's order id")


def reference_of(envelope: WebhookEnvelope, notif_url: NotifUrl | None = None) -> str | None:
    """The order id a notification's URL carries, or None.

    Orange's body names no order, so merchants put it in their ``notif_url``. With
    ``notif_url`` (``ORANGE_MONEY_NOTIF_URL``) it is read where that shape says; without,
    from query ``order_id`` (or ``reference``), else the segment after ``notify`` when it
    is the last one (``https://host/orange/notify/{order_id}``).
    """
    if notif_url is not None:
        return notif_url.reference(envelope)
    for name in ("order_id", "reference"):
        value = query_value(envelope.query, name)
        if value is not None:
            return _checked(value, f"query parameter {name}")
    segments = [segment for segment in envelope.path.split("/") if segment]
    if len(segments) >= 2 and segments[-2] == NOTIFY_SEGMENT:
        return _checked(unquote(segments[-1]), "the notification path's order id")
    return None


# --------------------------------------------------------------------------- client


class OrangeMoneyClient(TokenClient):
    """``ProviderClient`` for Orange Money's Web Payment API."""

    name = PROVIDER
    token_margin = TOKEN_REFRESH_MARGIN
    token_margin_divisor = 10
    forget_refused_token = False  # a 401'd token is kept until a new one replaces it

    def __init__(
        self,
        *,
        api_url: str,
        client_id: str,
        client_secret: str,
        merchant_key: str,
        country: str = "dev",
        token_url: str | None = None,
        notif_url: str | None = None,
        **transport: Unpack[Transport],
    ) -> None:
        """Configure the client; nothing is sent until the first ``check``.

        ``country`` is the path's country code (``dev`` in Orange's sandbox, ``ci``,
        ``sn``, ``cm``... in production); ``notif_url`` is where the merchant's notif_url
        carries the order id (see :class:`NotifUrl`; None: today's rules, :func:`reference_of`);
        ``transport``: see ``providers.auth.Transport``. ``ValueError`` if ``notif_url`` is not a valid shape.
        """
        self.notif_url = NotifUrl.parse(notif_url) if notif_url is not None else None
        self.country = country
        self.client_id = client_id
        # The merchant key is only needed to initiate payments; it is kept for redaction.
        self._client_secret = client_secret
        self._merchant_key = merchant_key
        super().__init__(_error_code, api_url=api_url, user=client_id, secret=client_secret, **transport)
        self.token_url = token_url or f"{self.api_url}/oauth/v3/token"
        self.status_url = f"{self.api_url}/orange-money-webpay/{country}/v1/transactionstatus"

    def __repr__(self) -> str:
        return f"OrangeMoneyClient(api_url={self.api_url!r}, country={self.country!r}, client_id={self.client_id!r})"

    # ----------------------------------------------------------------- webhooks

    def parse_delivery(self, envelope: WebhookEnvelope) -> Delivery:
        """Parse a notification without any network call.

        The reference comes from the notification URL (see :func:`reference_of`);
        ``lookup=("notif_token", token)`` lets the pipeline find the payment registered
        with that ``notif_token`` when the URL names none, or names an order that is not
        registered (then ``authenticate`` refuses a token of another order).
        """
        fields = notification_fields(envelope.body)
        reference = reference_of(envelope, self.notif_url)
        token = str(fields["notif_token"]).strip()
        # Orange signs nothing: the key is simply this body at this URL's order id (hex SHA-256).
        digest = hashlib.sha256(f"{reference or ''}\n{envelope.body}".encode()).hexdigest()
        txnid = str(fields.get("txnid") or "").strip()
        return Delivery(
            kind=DeliveryKind.PAYMENT,
            dedupe_key=bounded_dedupe_key(digest),
            reference=reference,
            claimed_status=claim_text(fields.get("status")),
            provider_ids={"txnid": txnid} if txnid else {},
            lookup=("notif_token", token),
        )

    def authenticate(
        self, envelope: WebhookEnvelope, delivery: Delivery, registration: RegistrationView | None
    ) -> None:
        """Compare the body's ``notif_token`` with the registered one; raise ``ForgedDelivery``. No API call.

        With no registration yet (the merchant's registration and Orange's notification race),
        raise ``AwaitingRegistration``: the pipeline authenticates it again once it arrives. A
        delivery whose URL names one order and whose token is another order's (the registration
        the pipeline found by the token) is forged.
        """
        if registration is None:
            named = delivery.reference or "a notification without order id"
            raise AwaitingRegistration(f"cannot authenticate yet: no registration known for {named[:100]}")
        expected = registration.provider_data.get("notif_token")
        if not isinstance(expected, str) or not expected:
            raise ForgedDelivery(f"cannot authenticate: no notif_token registered for {registration.reference}")
        try:
            received = str(notification_fields(envelope.body)["notif_token"]).strip()
        except MalformedDelivery as exc:
            raise ForgedDelivery(f"no usable notif_token: {exc}") from None
        # Bytes, not str: compare_digest refuses non-ASCII str, and the body is attacker-controlled.
        if not hmac.compare_digest(expected.encode(), received.encode("utf-8", "replace")):
            raise ForgedDelivery("notif_token does not match")
        if delivery.reference is not None and delivery.reference != registration.reference:
            raise ForgedDelivery(
                f"the notif_url names order {delivery.reference!r} but the notif_token is that of order "
                f"{registration.reference!r}"
            )

    # ----------------------------------------------------------------- status API

    def check(self, registration: RegistrationView) -> VerifiedStatus:
        """Ask ``transactionstatus`` about ``registration`` (order_id, amount, pay_token).

        An HTTP 400 is Orange refusing this order's question (its pay_token or amount is not the
        order's): ``ProviderRefusedQuestion``, which asking again would not change.
        """
        payload = self.status_request(registration)
        try:
            response = self._post(self.status_url, payload)
        except ProviderBadRequest as exc:
            if exc.http_status != 400:
                raise
            raise exc.restated(
                ProviderRefusedQuestion,
                f"Orange refused the status question about {registration.reference} (is the registered pay_token "
                f"and amount the order's?): {exc.message}",
            ) from exc
        return parse_status_response(registration, response.text, http_status=response.status_code)

    def status_request(self, registration: RegistrationView) -> dict[str, Any]:
        """The ``transactionstatus`` body; ``ProviderBadRequest`` (no network) if it cannot be built."""
        pay_token = registration.provider_data.get("pay_token")
        if not isinstance(pay_token, str) or not pay_token.strip():
            raise ProviderBadRequest(
                f"cannot check {registration.reference}: provider_data has no pay_token "
                "(register the pay_token the webpayment init returned)",
                provider=PROVIDER,
            )
        if registration.amount is None or registration.currency is None:
            raise ProviderBadRequest(
                f"cannot check {registration.reference}: Orange's status call needs the registered amount and currency",
                provider=PROVIDER,
            )
        try:
            amount = major_amount(registration.amount, registration.currency)
        except ValueError as exc:
            raise ProviderBadRequest(f"cannot check {registration.reference}: {exc}", provider=PROVIDER) from None
        return {"order_id": registration.reference, "amount": amount, "pay_token": pay_token.strip()}

    def _post(self, url: str, payload: Mapping[str, Any]) -> requests.Response:
        """POST with the cached token; on a 401 get a fresh token once and try once more."""
        return self._tokens.call(lambda token: self._send_authorized(url, payload, token))

    def _send_authorized(self, url: str, payload: Mapping[str, Any], token: str) -> requests.Response:
        return self._send(
            "POST",
            url,
            redact=(token, self._client_secret, self._merchant_key),
            headers={"Authorization": f"Bearer {token}"},
            json=dict(payload),
        )

    # ----------------------------------------------------------------- token

    def _fetch_token(self) -> tuple[str, float]:
        """``POST /oauth/v3/token`` (the cache holds its lock): ``(token, lifetime)``."""
        try:
            response = self._send(
                "POST",
                self.token_url,
                redact=(self._client_secret, self._basic.removeprefix("Basic "), self._merchant_key),
                headers={"Authorization": self._basic},
                data={"grant_type": "client_credentials"},
            )
        except ProviderAuthError as exc:
            raise exc.restated(
                ProviderAuthError,
                f"token request refused (check client_id/client_secret): {exc.message}",
            ) from exc
        return parse_token_response(response.text)
