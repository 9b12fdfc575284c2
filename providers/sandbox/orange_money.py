"""Orange Money Web Payment API ("OM WebPay"), sandboxed: OAuth tokens, init, status, notifications.

Its wire API (what a merchant's code calls) and control API (how a test scripts a transaction) are
documented in docs/sandbox-api.md; keep that page true to this module.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlsplit

from providers.sandbox import wire
from providers.sandbox.state import ControlError, SandboxState, Transaction, check_transaction_id, check_url
from providers.sandbox.web import Notifier, Request, Response, Router, json_response
from providers.sandbox.wire import WireSandbox, advance_fate, slowed, take_fault
from schemas.currency import MINOR_UNIT_EXPONENT, AmountError, to_major, to_minor

NAME: Final = "orange_money"
INITIATED: Final = "INITIATED"
PENDING: Final = "PENDING"
SUCCESS: Final = "SUCCESS"
FAILED: Final = "FAILED"
EXPIRED: Final = "EXPIRED"
STATUSES: Final = (INITIATED, PENDING, SUCCESS, FAILED, EXPIRED)
WAITING_STATUSES: Final = (INITIATED, PENDING)
#: Statuses that trigger a notification (FAILED: UNCONFIRMED at Orange, see the module doc).
NOTIFIED_STATUSES: Final = (SUCCESS, FAILED)
#: The dev environment's play-money currency; the sandbox books it as XOF.
DEV_CURRENCY: Final = "OUV"
DEV_CURRENCY_BOOKED_AS: Final = "XOF"
NOTIFY_PATH: Final = "/orange/notify"
TOKEN_PATH: Final = "/oauth/v3/token"  # noqa: S105 - a URL path, not a secret
API_PREFIX: Final = "/orange-money-webpay"

START_STATUS: Final = {
    "accepted": SUCCESS,
    "refused": FAILED,
    "expired": EXPIRED,
    "waiting": INITIATED,
    "waiting_then_accepted": INITIATED,
    "waiting_then_refused": INITIATED,
    "waiting_then_expired": INITIATED,
}
#: ``state.FATES`` plus Orange's own final state.
FATES: Final = tuple(START_STATUS)
_FINAL_STATUS: Final = {
    "waiting_then_accepted": SUCCESS,
    "waiting_then_refused": FAILED,
    "waiting_then_expired": EXPIRED,
}
_INIT_REQUIRED: Final = (
    "merchant_key",
    "currency",
    "order_id",
    "amount",
    "return_url",
    "cancel_url",
    "notif_url",
    "lang",
    "reference",
)
LANGS: Final = ("fr", "en")
_MAX_TOKENS: Final = 10_000


@dataclass(frozen=True, slots=True)
class OrangeMoneyConfig:
    """Merchant credentials and behaviour of the OrangeMoney sandbox (defaults for offline use)."""

    client_id: str = "sandbox-orange-client-id"
    client_secret: str = "sandbox-orange-client-secret"  # noqa: S105 - a published test value
    merchant_key: str = "sandbox-orange-merchant-key"
    #: The country code in ``/orange-money-webpay/{cc}/v1`` (``dev`` is Orange's sandbox).
    country: str = "dev"
    #: Lifetime of issued tokens, in seconds (Orange reports 7776000, i.e. 90 days).
    token_ttl: float = 7776000


@dataclass
class OrangeTransaction(Transaction):
    """A WebPay order. ``transaction_id`` is the ``order_id``, ``payment_token`` the
    ``pay_token``, ``operator_id`` the ``txnid``."""

    notif_token: str = ""
    #: The currency string on the wire (``OUV`` in dev; ``currency`` is what it is booked as).
    wire_currency: str = ""
    lang: str = "fr"
    #: The init call's other fields (return_url, cancel_url, reference...), for display.
    init: dict[str, Any] = field(default_factory=dict)
    #: The merchant's notif_url as given at init (or its shape, ``{order_id}`` filled in): the
    #: path and query of every notification's envelope. Empty: ``/orange/notify/{order_id}``.
    notif_url: str = ""
    #: Whether SUCCESS answers echo ``amount`` and ``currency`` (some deployments; the documented
    #: ``transactionstatus`` answer has neither).
    echo_amount: bool = False


def now() -> datetime:
    """The current UTC time, to the second."""
    return datetime.now(UTC).replace(microsecond=0)


def txnid(at: datetime) -> str:
    """An Orange transaction id shaped like the documentation's ``MP150709.1341.A00073``."""
    return f"MP{at:%y%m%d.%H%M}.{secrets.choice('ABCDEFGHJKLMNPQRSTUVWXYZ')}{secrets.randbelow(100000):05d}"


def new_pay_token() -> str:
    """A pay_token (64 hex characters, like those seen in traces)."""
    return secrets.token_hex(32)


def new_notif_token() -> str:
    """A notif_token (32 hex characters, like the documentation's ``dd497bda…``)."""
    return secrets.token_hex(16)


def whole_major(minor: int, currency: str, key: str = "amount") -> int:
    """Minor units → Orange's integer major amount; ``ControlError`` unless whole."""
    major = to_major(minor, currency)
    if major != major.to_integral_value():
        raise ControlError(f"{key} {minor} is not a whole number of {currency}: Orange amounts are integers")
    return int(major)


def booked_currency(value: Any, key: str = "currency") -> tuple[str, str]:
    """``(currency booked, currency on the wire)``: ``OUV`` is booked as XOF."""
    if value == DEV_CURRENCY:
        return DEV_CURRENCY_BOOKED_AS, DEV_CURRENCY
    if not isinstance(value, str) or value not in MINOR_UNIT_EXPONENT:
        known = ", ".join([DEV_CURRENCY, *sorted(MINOR_UNIT_EXPONENT)])
        raise ControlError(f"{key} must be one of {known}, got {value!r}")
    return value, value


def check_reference(value: Any) -> str:
    """An order_id as payrecon's registration contract allows them."""
    try:
        return check_transaction_id(value)
    except ControlError:
        raise ControlError("reference (order_id) must be 1-100 characters of A-Z a-z 0-9 . _ : -") from None


def notify_path(order_id: str) -> str:
    """The path of the merchant's notif_url for ``order_id``: ``/orange/notify/{order_id}``."""
    return f"{NOTIFY_PATH}/{quote(order_id, safe='')}"


def check_notif_url(value: Any, key: str = "notif_url") -> str:
    """A merchant's notif_url (or its shape with ``{order_id}``): an http(s) URL or an absolute path."""
    if not isinstance(value, str) or not value.strip():
        raise ControlError(f"{key} must be an http(s) URL or an absolute path, got {value!r}")
    text = value.strip()
    split = urlsplit(text)
    if split.scheme not in ("", "http", "https") or not split.path.startswith("/") or split.fragment:
        raise ControlError(f"{key} must be an http(s) URL or an absolute path without #fragment, got {value!r}")
    if any(c in text for c in " \r\n") or len(text) > 2000:
        raise ControlError(f"{key} must be at most 2000 characters without spaces, got {text[:80]!r}")
    return text


def envelope_url(notif_url: str, order_id: str) -> tuple[str, dict[str, str | list[str]]]:
    """The envelope's ``(path, query)`` of a notification posted to ``notif_url`` (``{order_id}`` filled in)."""
    split = urlsplit((notif_url or f"{NOTIFY_PATH}/{{order_id}}").replace("{order_id}", quote(order_id, safe="")))
    query: dict[str, str | list[str]] = {}
    for name, value in parse_qsl(split.query, keep_blank_values=True):
        previous = query.get(name)
        if previous is None:
            query[name] = value
        else:
            query[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
    return split.path, query


def webhook_envelope(
    method: str, path: str, body: str, headers: dict[str, str], query: dict[str, str | list[str]] | None = None
) -> dict[str, Any]:
    """The ``payrecon.webhook/1`` envelope payrecon's receiver would build for this notification."""
    return wire.webhook_envelope(NAME, method, path, body, headers, query=query)


def _gateway_error(status: int, code: int, message: str, description: str) -> Response:
    """Orange's API gateway error shape (auth, unknown resource, throttling)."""
    return json_response(status, {"code": code, "message": message, "description": description})


def _webpay_error(status: int, message: str, description: str) -> Response:
    """WebPay's own error shape, mirroring its ``{"status": 201, "message": "OK"}`` success (UNCONFIRMED)."""
    return json_response(status, {"status": status, "message": message, "description": description})


def _http_error_body(status: int) -> dict[str, Any]:
    """Body of an injected HTTP error, in the gateway's shape (53 is Orange's throttling code)."""
    if status == 429:
        return {"code": 53, "message": "Too many requests", "description": "injected HTTP 429"}
    return {"code": status, "message": "SANDBOX_FAULT", "description": f"injected HTTP {status}"}


class OrangeMoneySandbox(WireSandbox):
    """Orange WebPay's wire API and the sandbox's ``orange_money`` control API over one state."""

    name = NAME

    def __init__(
        self, state: SandboxState, notifier: Notifier, config: OrangeMoneyConfig, *, base_url: Callable[[], str]
    ) -> None:
        """Serve Orange WebPay for one application (``config``'s credentials)."""
        super().__init__(state, notifier, base_url=base_url)
        self.config = config
        #: access_token → monotonic expiry; guarded by ``state.lock``.
        self.tokens: dict[str, float] = {}
        self.tokens_issued = 0

    def register(self, router: Router) -> None:
        """Add the wire routes and the ``/_sandbox/orange_money/...`` control routes."""
        router.add("POST", TOKEN_PATH, self.wire_token, wire=True)
        router.add("POST", f"{API_PREFIX}/{{cc}}/v1/webpayment", self.wire_init, wire=True)
        router.add("POST", f"{API_PREFIX}/{{cc}}/v1/transactionstatus", self.wire_status, wire=True)
        # Late import: the control module builds on this one.
        from providers.sandbox.orange_money_control import OrangeMoneyControl

        OrangeMoneyControl(self).register(router)

    # ------------------------------------------------------------------ OAuth

    def _basic_ok(self, header: str | None) -> bool:
        scheme, _, value = (header or "").strip().partition(" ")
        if scheme.lower() != "basic" or not value.strip():
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        expected = f"{self.config.client_id}:{self.config.client_secret}".encode()
        return hmac.compare_digest(decoded, expected)

    def wire_token(self, request: Request) -> Response:
        """``POST /oauth/v3/token``: client-credentials grant, Basic auth."""
        if not self._basic_ok(request.header("authorization")):
            return json_response(
                401,
                {
                    "error": "invalid_client",
                    "error_description": "The requested service needs credentials, but the ones provided were invalid.",
                },
                {"WWW-Authenticate": 'Basic realm="Authorization Required"'},
            )
        body = request.form_or_json() or {}
        if body.get("grant_type") != "client_credentials":
            return json_response(
                400,
                {"error": "unsupported_grant_type", "error_description": "grant_type must be client_credentials"},
            )
        token = secrets.token_urlsafe(24)
        with self.state.lock:
            clock = time.monotonic()
            if len(self.tokens) >= _MAX_TOKENS:  # a long-running sandbox: forget expired tokens
                self.tokens = {key: expiry for key, expiry in self.tokens.items() if expiry > clock}
            self.tokens[token] = clock + self.config.token_ttl
            self.tokens_issued += 1
        ttl = self.config.token_ttl
        expires_in = str(int(ttl)) if float(ttl).is_integer() else str(ttl)
        return json_response(200, {"token_type": "Bearer", "access_token": token, "expires_in": expires_in})

    def _bearer_error(self, request: Request) -> Response | None:
        scheme, _, token = (request.header("authorization") or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return _gateway_error(401, 40, "Missing credentials", "The requested service needs credentials.")
        with self.state.lock:
            expiry = self.tokens.get(token)
        if expiry is None:
            return _gateway_error(
                401,
                41,
                "Invalid credentials",
                "The requested service needs credentials, but the ones provided were invalid.",
            )
        if time.monotonic() >= expiry:
            return _gateway_error(
                401,
                42,
                "Expired credentials",
                "The requested service needs credentials, but the ones provided were out-of-date.",
            )
        return None

    def _api_error(self, request: Request) -> Response | None:
        """The gateway's answer when the country or the token is wrong, else None."""
        if request.params.get("cc") != self.config.country:
            return _gateway_error(
                404, 60, "Resource not found", "The requested URI or the requested resource does not exist."
            )
        return self._bearer_error(request)

    def _request_error(
        self, request: Request, body: dict[str, Any] | None, required: tuple[str, ...]
    ) -> Response | None:
        """The answer to a business call refused by the gateway or missing ``required`` fields, else None."""
        error = self._api_error(request)
        if error is not None:
            return error
        if body is None:
            return _webpay_error(400, "Bad Request", "body must be a JSON object")
        missing = [key for key in required if body.get(key) in (None, "")]
        if missing:
            return _webpay_error(400, "Bad Request", f"missing: {', '.join(missing)}")
        return None

    def token_stats(self) -> dict[str, Any]:
        """Issued and still valid tokens."""
        with self.state.lock:
            clock = time.monotonic()
            active = sum(1 for expiry in self.tokens.values() if expiry > clock)
            return {"issued": self.tokens_issued, "active": active, "token_ttl": self.config.token_ttl}

    def expire_tokens(self) -> int:
        """Expire every token now; return how many were still valid."""
        with self.state.lock:
            clock = time.monotonic()
            count = sum(1 for expiry in self.tokens.values() if expiry > clock)
            self.tokens = dict.fromkeys(self.tokens, clock)
            return count

    # ------------------------------------------------------------------ wire API

    def wire_init(self, request: Request) -> Response:
        """``POST .../webpayment``: create an INITIATED order, answer 201 with its tokens."""
        body = request.form_or_json()
        error = self._request_error(request, body, _INIT_REQUIRED)
        if error is not None or body is None:
            return error or _webpay_error(400, "Bad Request", "body must be a JSON object")
        if not hmac.compare_digest(str(body["merchant_key"]).encode(), self.config.merchant_key.encode()):
            return _webpay_error(403, "Forbidden", "invalid merchant_key")
        amount = body["amount"]
        if isinstance(amount, str) and amount.isdigit():
            amount = int(amount)
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            return _webpay_error(400, "Bad Request", "amount must be a positive integer")
        lang = str(body["lang"])
        if lang not in LANGS:
            return _webpay_error(400, "Bad Request", f"lang must be one of {', '.join(LANGS)}")
        try:
            currency, wire_currency = booked_currency(body["currency"])
            order_id = check_reference(str(body["order_id"]))
            notif_url = check_url(body["notif_url"], "notif_url")
            minor = to_minor(amount, currency)
        except (ControlError, AmountError) as exc:
            return _webpay_error(400, "Bad Request", str(exc))
        txn = OrangeTransaction(
            provider=NAME,
            transaction_id=order_id,
            amount=minor,
            currency=currency,
            fate="waiting",
            status=INITIATED,
            created_at=now(),
            payment_token=new_pay_token(),
            notify_url=notif_url,
            notif_token=new_notif_token(),
            wire_currency=wire_currency,
            lang=lang,
            init={key: body[key] for key in ("return_url", "cancel_url", "reference") if key in body},
            notif_url=notif_url or "",
        )
        try:
            self.state.add(txn)
        except ControlError:
            return _webpay_error(409, "Conflict", "order_id already used")
        return json_response(
            201,
            {
                "status": 201,
                "message": "OK",
                "pay_token": txn.payment_token,
                "payment_url": self.payment_url(txn),
                "notif_token": txn.notif_token,
            },
        )

    def wire_status(self, request: Request) -> Response:
        """``POST .../transactionstatus``: answer from the order's status and fate."""
        body = request.form_or_json()
        error = self._request_error(request, body, ("order_id", "amount", "pay_token"))
        if error is not None or body is None:
            return error or _webpay_error(400, "Bad Request", "body must be a JSON object")
        amount = body["amount"]
        if isinstance(amount, str) and amount.isdigit():
            amount = int(amount)
        if isinstance(amount, bool) or not isinstance(amount, int):
            return _webpay_error(400, "Bad Request", "amount must be an integer")
        with self.state.lock:
            txn = self.find(str(body["order_id"]))
            if txn is None:
                return _webpay_error(404, "Not Found", "no transaction for this order_id")
            fault, forced = take_fault(txn, _http_error_body)
            if forced is not None:
                return forced
            if not hmac.compare_digest(str(body["pay_token"]).encode(), txn.payment_token.encode()):
                return _webpay_error(400, "Bad Request", "invalid pay_token for this order_id")
            if to_minor(amount, txn.currency) != txn.amount:
                return _webpay_error(400, "Bad Request", "amount does not match the transaction")
            advance_fate(txn, waiting=WAITING_STATUSES, final=_FINAL_STATUS, transition=partial(self.transition, txn))
            response = self._status_answer(txn)
            if txn.status == INITIATED and txn.scripted:
                txn.status = PENDING  # the payer clicked "Confirmer": Orange is processing (not notified)
        return slowed(response, fault)

    def _status_answer(self, txn: OrangeTransaction) -> Response:
        payload: dict[str, Any] = {"status": txn.status, "order_id": txn.transaction_id, "txnid": txn.operator_id}
        if txn.status == SUCCESS and txn.echo_amount:
            payload["amount"] = whole_major(txn.reported_amount, txn.reported_currency)
            payload["currency"] = txn.confirm_currency or txn.wire_currency or txn.currency
        return json_response(201, payload)

    def find(self, order_id: str) -> OrangeTransaction | None:
        """An order by id (caller holds the lock)."""
        txn = self.state.transactions(NAME).get(order_id)
        return txn if isinstance(txn, OrangeTransaction) else None

    def payment_url(self, txn: OrangeTransaction) -> str:
        """Where the payer would pay (the sandbox shows the order and how to complete it)."""
        return f"{self._base_url()}/_sandbox/{NAME}/pay/{txn.payment_token}"

    def to_json(self, txn: OrangeTransaction) -> dict[str, Any]:
        """The order as the control API shows it (caller holds the lock)."""
        out = txn.to_json()
        for key in ("transaction_id", "payment_token", "operator_id", "payment_method", "phone", "description"):
            out.pop(key, None)
        out.pop("metadata", None)
        return {
            "reference": txn.transaction_id,
            "order_id": txn.transaction_id,
            **out,
            "wire_currency": txn.wire_currency,
            "lang": txn.lang,
            "pay_token": txn.payment_token,
            "notif_token": txn.notif_token,
            "payment_url": self.payment_url(txn),
            "txnid": txn.operator_id,
            "init": dict(txn.init),
            "notif_url": txn.notif_url or notify_path(txn.transaction_id),
            "echo_amount": txn.echo_amount,
            "provider_data": {"pay_token": txn.payment_token, "notif_token": txn.notif_token},
        }

    # ------------------------------------------------------------------ state changes

    def transition(self, txn: OrangeTransaction, status: str) -> None:
        """Change status (caller holds the lock); notify ``notify_url`` on SUCCESS / FAILED.

        ``notify_url`` ``"enqueue"`` publishes the notification on the broker instead.
        """
        if txn.status == status:
            return
        txn.status = status
        if status in (SUCCESS, FAILED) and txn.operator_id is None:
            txn.operator_id = txnid(now())
        if status == SUCCESS:
            txn.paid_at = now()
        if not txn.notify_url or status not in NOTIFIED_STATUSES:
            return
        body = self.notification_body(txn)
        headers = {"Content-Type": "application/json"}
        record: dict[str, Any] = {"kind": "auto", "status": status, "url": txn.notify_url}
        path, query = envelope_url(txn.notif_url, txn.transaction_id)
        envelope = webhook_envelope("POST", path, body, headers, query)
        self.notify_later(txn, record, method="POST", url=txn.notify_url, body=body, headers=headers, envelope=envelope)

    def notification_fields(self, txn: OrangeTransaction) -> dict[str, Any]:
        """The JSON fields Orange would post about ``txn`` now."""
        fields: dict[str, Any] = {"status": txn.status, "notif_token": txn.notif_token}
        if txn.operator_id:
            fields["txnid"] = txn.operator_id
        return fields

    def notification_body(self, txn: OrangeTransaction, fields: dict[str, Any] | None = None) -> str:
        """The raw JSON body of a notification (deterministic: redeliveries are byte-identical)."""
        return json.dumps(fields if fields is not None else self.notification_fields(txn))
