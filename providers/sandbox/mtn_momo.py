"""MTN MoMo Collection API (Request to Pay), sandboxed: the real wire format, in memory.

Its wire API (what a merchant's code calls) and control API (how a test scripts a transaction) are
documented in docs/sandbox-api.md; keep that page true to this module.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from providers.auth import basic_authorization
from providers.mtn_momo import (
    FAILED,
    PENDING,
    REQUEST_TO_PAY_PATH,
    SUCCESSFUL,
    TOKEN_PATH,
    is_uuid4,
)
from providers.sandbox import wire
from providers.sandbox.state import ControlError, SandboxState, Transaction, check_url
from providers.sandbox.web import Notifier, Request, Response, Router, json_response
from providers.sandbox.wire import ENQUEUE, WireSandbox, advance_fate, slowed, take_fault
from schemas.currency import MINOR_UNIT_EXPONENT, AmountError, to_major, to_minor

NAME: Final = "mtn_momo"
STATUSES: Final = (PENDING, SUCCESSFUL, FAILED)
DEFAULT_API_USER: Final = "00000000-0000-4000-8000-000000000001"
DEFAULT_API_KEY: Final = "sandbox-momo-api-key"
DEFAULT_SUBSCRIPTION_KEY: Final = "sandbox-momo-subscription-key"
DEFAULT_PAYER: Final = "46733123453"
DEFAULT_REASON: Final = "APPROVAL_REJECTED"
#: Path of a notification's envelope when it is not delivered to a URL.
CALLBACK_PATH: Final = "/momo/callback"
FORGED_HOST: Final = "forged.invalid"

START_STATUS: Final = {
    "accepted": SUCCESSFUL,
    "refused": FAILED,
    "waiting": PENDING,
    "waiting_then_accepted": PENDING,
    "waiting_then_refused": PENDING,
}
FINAL_STATUS: Final = {"waiting_then_accepted": SUCCESSFUL, "waiting_then_refused": FAILED}

#: MTN's sandbox payer numbers (MTN notebook): partyId → (fate, reason).
MAGIC_PAYERS: Final[dict[str, tuple[str, str | None]]] = {
    "46733123450": ("waiting_then_refused", "INTERNAL_PROCESSING_ERROR"),
    "46733123451": ("waiting_then_refused", "APPROVAL_REJECTED"),
    "46733123452": ("waiting_then_refused", "EXPIRED"),
    "46733123454": ("waiting", None),
}

#: Messages of the ``{"code", "message"}`` reason form.
REASON_MESSAGES: Final = {
    "APPROVAL_REJECTED": "The payer rejected the request.",
    "EXPIRED": "The payer did not approve the request in time.",
    "INTERNAL_PROCESSING_ERROR": "An internal error occurred while processing.",
    "NOT_ENOUGH_FUNDS": "The payer does not have enough funds.",
    "PAYER_NOT_FOUND": "The payer could not be found.",
}

PARTY_ID_TYPES: Final = ("MSISDN", "EMAIL", "PARTY_CODE", "ALIAS")
_MAX_TOKENS = 10_000
_REASON = re.compile(r"^[A-Za-z0-9_ .:\-]{1,100}$")

_SUBSCRIPTION_MISSING: Final = (
    "Access denied due to missing subscription key. "
    "Make sure to include subscription key when making requests to an API."
)
_SUBSCRIPTION_INVALID: Final = (
    "Access denied due to invalid subscription key. Make sure to provide a valid key for an active subscription."
)


@dataclass(frozen=True, slots=True)
class MtnMomoConfig:
    """Merchant credentials and behaviour of the MtnMomo sandbox (defaults for offline use).

    ``token_ttl``: seconds a token is accepted (``expires_in`` says the same, rounded up);
    ``not_found_window``: seconds after creation during which a GET answers 404;
    ``callback_method``: how status changes are called back (MoMo uses PUT or POST);
    ``clock``: monotonic seconds for token expiry and the 404 window (tests pass a fake).
    """

    api_user: str = DEFAULT_API_USER
    api_key: str = DEFAULT_API_KEY
    subscription_key: str = DEFAULT_SUBSCRIPTION_KEY
    target_environment: str = "sandbox"
    token_ttl: float = 3600.0
    not_found_window: float = 0.0
    callback_method: str = "PUT"
    clock: Callable[[], float] = time.monotonic


@dataclass
class MomoTransaction(Transaction):
    """A request to pay: the shared ``Transaction`` (``transaction_id`` = X-Reference-Id) plus MoMo's fields."""

    payer: str = DEFAULT_PAYER
    party_id_type: str = "MSISDN"
    external_id: str = ""
    payer_message: str = ""
    payee_note: str = ""
    reason: str = DEFAULT_REASON
    reason_format: str = "string"
    not_found_checks: int = 0
    not_found_answers: int = 0
    callbacks: bool = True
    #: ``MtnMomoConfig.clock()`` at creation (the 404 window counts from it).
    created_clock: float = 0.0
    financial_transaction_id: str | None = None
    tokens_used: set[str] = field(default_factory=set)

    @property
    def reference(self) -> str:
        """The X-Reference-Id."""
        return self.transaction_id

    def to_json(self) -> dict[str, Any]:
        """The transaction as the control API shows it."""
        return {
            "provider": self.provider,
            "reference": self.transaction_id,
            "amount": self.amount,
            "currency": self.currency,
            "fate": self.fate,
            "status": self.status,
            "reason": self.reason,
            "reason_format": self.reason_format,
            "pending_checks": self.pending_checks,
            "confirm_amount": self.confirm_amount,
            "confirm_currency": self.confirm_currency,
            "payer": self.payer,
            "party_id_type": self.party_id_type,
            "external_id": self.external_id,
            "payer_message": self.payer_message,
            "payee_note": self.payee_note,
            "notify_url": self.notify_url,
            "callbacks": self.callbacks,
            "not_found_checks": self.not_found_checks,
            "not_found_answers": self.not_found_answers,
            "financial_transaction_id": self.financial_transaction_id,
            "created_at": self.created_at.isoformat(),
            "paid_at": self.paid_at.isoformat() if self.paid_at else None,
            "check_count": self.check_count,
            "waiting_answers": self.waiting_answers,
            "scripted": self.scripted,
            "tokens_used": len(self.tokens_used),
            "faults_left": [fault.to_json() for fault in self.faults],
            "notifications": list(self.notifications),
            "provider_data": {"external_id": self.external_id},
        }


def now() -> datetime:
    """The current UTC time, to the millisecond."""
    at = datetime.now(UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def major(minor: int, currency: str) -> str:
    """Minor units → MoMo's major-unit string (``"100"``, ``"12.50"``)."""
    return format(to_major(minor, currency), "f")


def financial_transaction_id() -> str:
    """A numeric id shaped like MoMo's ``financialTransactionId``."""
    return str(100_000_000 + secrets.randbelow(900_000_000))


def reason_value(txn: MomoTransaction) -> str | dict[str, str]:
    """The ``reason`` as this transaction's market reports it: a string or ``{code, message}``."""
    if txn.reason_format == "object":
        return {"code": txn.reason, "message": REASON_MESSAGES.get(txn.reason, txn.reason.replace("_", " ").lower())}
    return txn.reason


def status_body(txn: MomoTransaction) -> dict[str, Any]:
    """The ``GET requesttopay/{ref}`` answer (and callback body) for ``txn`` now (caller holds the lock)."""
    body: dict[str, Any] = {
        "amount": major(txn.reported_amount, txn.reported_currency),
        "currency": txn.reported_currency,
    }
    if txn.status == SUCCESSFUL and txn.financial_transaction_id:
        body["financialTransactionId"] = txn.financial_transaction_id
    body |= {
        "externalId": txn.external_id,
        "payer": {"partyIdType": txn.party_id_type, "partyId": txn.payer},
        "payerMessage": txn.payer_message,
        "payeeNote": txn.payee_note,
        "status": txn.status,
    }
    if txn.status == FAILED:
        body["reason"] = reason_value(txn)
    return body


def error_body(status: int) -> dict[str, Any]:
    """MoMo-flavoured JSON for an injected HTTP error."""
    if status == 401:
        return {"statusCode": 401, "message": "Unauthorized. Access token is missing or invalid."}
    if status == 429:
        return {"statusCode": 429, "message": "Rate limit is exceeded. Try again later."}
    codes = {
        400: ("BAD_REQUEST", "Bad request."),
        404: ("RESOURCE_NOT_FOUND", "Requested resource was not found."),
        409: ("RESOURCE_ALREADY_EXIST", "Duplicated reference id. Creation of resource failed."),
        503: ("SERVICE_UNAVAILABLE", "Service is unavailable."),
    }
    code, message = codes.get(status, ("INTERNAL_PROCESSING_ERROR", "An internal error occurred while processing."))
    return {"code": code, "message": message}


def _error(status: int, code: str, message: str) -> Response:
    return json_response(status, {"code": code, "message": message})


def _apim_401(message: str) -> Response:
    return json_response(401, {"statusCode": 401, "message": message})


def callback_target(url: str | None, reference: str) -> tuple[str, dict[str, str | list[str]], str | None]:
    """``(path, query, host)`` a receiver sees for a callback sent to ``url`` (None: not sent)."""
    if not url or url == ENQUEUE:
        return f"{CALLBACK_PATH}/{reference}", {}, None
    split = urlsplit(url)
    query: dict[str, str | list[str]] = {
        key: values[0] if len(values) == 1 else values
        for key, values in parse_qs(split.query, keep_blank_values=True).items()
    }
    return split.path or "/", query, split.netloc


def webhook_envelope(
    method: str, path: str, query: dict[str, str | list[str]], body: str, headers: dict[str, str]
) -> dict[str, Any]:
    """The ``payrecon.webhook/1`` envelope payrecon's receiver would build for this callback."""
    return wire.webhook_envelope(NAME, method, path, body, headers, query=query)


class MtnMomoSandbox(WireSandbox):
    """MoMo's Collection wire API and the sandbox's ``/_sandbox/mtn_momo`` control API over one state."""

    name = NAME

    def __init__(
        self, state: SandboxState, notifier: Notifier, config: MtnMomoConfig, *, base_url: Callable[[], str]
    ) -> None:
        """Serve MoMo Collection for one API user and subscription (``config``)."""
        super().__init__(state, notifier, base_url=base_url)
        self.config = config
        #: Issued tokens → the ``config.clock()`` value at which they expire. Under ``state.lock``.
        self.tokens: dict[str, float] = {}
        self.tokens_issued = 0
        self.tokens_refused = 0

    def register(self, router: Router) -> None:
        """Add the wire routes and the ``/_sandbox/mtn_momo/...`` control routes."""
        router.add("POST", TOKEN_PATH, self.wire_token, wire=True)
        router.add("POST", TOKEN_PATH.rstrip("/"), self.wire_token, wire=True)
        router.add("POST", REQUEST_TO_PAY_PATH, self.wire_request_to_pay, wire=True)
        router.add("GET", f"{REQUEST_TO_PAY_PATH}/{{reference}}", self.wire_status, wire=True)
        # Late import: the control module builds on this one.
        from providers.sandbox.mtn_momo_control import MtnMomoControl

        MtnMomoControl(self).register(router)

    # ------------------------------------------------------------------ auth

    def _subscription_error(self, request: Request) -> Response | None:
        key = request.header("ocp-apim-subscription-key")
        if not key:
            return _apim_401(_SUBSCRIPTION_MISSING)
        if not hmac.compare_digest(key.encode(), self.config.subscription_key.encode()):
            return _apim_401(_SUBSCRIPTION_INVALID)
        return None

    def _business_auth(self, request: Request) -> tuple[Response | None, str]:
        """``(error response or None, bearer token)`` for a business call."""
        error = self._subscription_error(request)
        if error is not None:
            return error, ""
        scheme, _, token = (request.header("authorization") or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return _apim_401("Unauthorized. Access token is missing or invalid."), ""
        with self.state.lock:
            expires = self.tokens.get(token)
            if expires is not None and self.config.clock() >= expires:
                self.tokens_refused += 1
                return _apim_401("Unauthorized. Access token has expired."), token
        if expires is None:
            return _apim_401("Unauthorized. Access token is missing or invalid."), token
        if request.header("x-target-environment") != self.config.target_environment:
            return _error(500, "NOT_ALLOWED_TARGET_ENVIRONMENT", "Access to target environment is forbidden."), token
        return None, token

    # ------------------------------------------------------------------ wire API

    def wire_token(self, request: Request) -> Response:
        """``POST /collection/token/``: a bearer token for ``token_ttl`` seconds."""
        error = self._subscription_error(request)
        if error is not None:
            return error
        expected = basic_authorization(self.config.api_user, self.config.api_key)
        given = request.header("authorization") or ""
        if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode()):
            return json_response(401, {"error": "login_failed"})
        token = secrets.token_urlsafe(32)
        ttl = self.config.token_ttl
        with self.state.lock:
            if len(self.tokens) >= _MAX_TOKENS:
                self.tokens.clear()  # a long-running sandbox: forget old tokens rather than grow
            self.tokens[token] = self.config.clock() + ttl
            self.tokens_issued += 1
        return json_response(200, {"access_token": token, "token_type": "access_token", "expires_in": math.ceil(ttl)})

    def wire_request_to_pay(self, request: Request) -> Response:
        """``POST /collection/v1_0/requesttopay``: 202 and a PENDING transaction."""
        error, _ = self._business_auth(request)
        if error is not None:
            return error
        reference = request.header("x-reference-id") or ""
        if not is_uuid4(reference):
            return _error(400, "BAD_REQUEST", "X-Reference-Id must be a UUID version 4.")
        try:
            body = json.loads(request.body)
        except ValueError:
            return _error(400, "BAD_REQUEST", "The body must be JSON.")
        if not isinstance(body, dict):
            return _error(400, "BAD_REQUEST", "The body must be a JSON object.")
        problem = _request_problem(body, request.header("x-callback-url"))
        if problem is not None:
            return problem
        currency = body["currency"]
        if currency not in MINOR_UNIT_EXPONENT:
            return _error(500, "INVALID_CURRENCY", "Currency not supported.")
        try:
            amount = to_minor(str(body["amount"]), currency)
        except AmountError:
            return _error(400, "BAD_REQUEST", f"amount is not a valid {currency} amount.")
        if amount <= 0:
            return _error(400, "BAD_REQUEST", "amount must be positive.")
        payer = body["payer"]
        fate, reason = MAGIC_PAYERS.get(payer["partyId"], ("waiting_then_accepted", None))
        txn = MomoTransaction(
            provider=NAME,
            transaction_id=reference,
            amount=amount,
            currency=currency,
            fate=fate,
            status=START_STATUS[fate],
            created_at=now(),
            payment_token="",
            notify_url=request.header("x-callback-url") or None,
            payer=payer["partyId"],
            party_id_type=payer["partyIdType"],
            external_id=str(body.get("externalId") or ""),
            payer_message=str(body.get("payerMessage") or ""),
            payee_note=str(body.get("payeeNote") or ""),
            reason=reason or DEFAULT_REASON,
            created_clock=self.config.clock(),
        )
        try:
            self.state.add(txn)
        except ControlError:
            return _error(409, "RESOURCE_ALREADY_EXIST", "Duplicated reference id. Creation of resource failed.")
        return Response(202)

    def wire_status(self, request: Request) -> Response:
        """``GET /collection/v1_0/requesttopay/{reference}``: the status answer, or 404."""
        error, token = self._business_auth(request)
        if error is not None:
            return error
        not_found = _error(404, "RESOURCE_NOT_FOUND", "Requested resource was not found.")
        with self.state.lock:
            txn = self.state.transactions(NAME).get(request.params["reference"])
            if not isinstance(txn, MomoTransaction):
                return not_found
            txn.tokens_used.add(token)
            fault, forced = take_fault(txn, error_body)
            if forced is not None:
                return forced
            if txn.not_found_answers < txn.not_found_checks or (
                self.config.clock() - txn.created_clock < self.config.not_found_window
            ):
                txn.not_found_answers += 1
                return slowed(not_found, fault)
            advance_fate(txn, waiting=(PENDING,), final=FINAL_STATUS, transition=partial(self.transition, txn))
            response = json_response(200, status_body(txn))
        return slowed(response, fault)

    # ------------------------------------------------------------------ state changes

    def transition(self, txn: MomoTransaction, status: str, reason: str | None = None) -> None:
        """Change status (caller holds the lock) and call back ``notify_url`` if it changed."""
        if reason is not None:
            txn.reason = reason
        if txn.status == status:
            return
        txn.status = status
        if status == SUCCESSFUL:
            txn.paid_at = now()
            txn.financial_transaction_id = txn.financial_transaction_id or financial_transaction_id()
        if not txn.notify_url or not txn.callbacks:
            return
        method = self.config.callback_method
        envelope, body, headers = self.callback(txn, method=method, url=txn.notify_url)
        record: dict[str, Any] = {"kind": "auto", "status": status, "method": method, "url": txn.notify_url}
        self.notify_later(txn, record, method=method, url=txn.notify_url, body=body, headers=headers, envelope=envelope)

    def callback(
        self,
        txn: MomoTransaction,
        *,
        method: str,
        url: str | None,
        forged: bool = False,
        tamper: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], str, dict[str, str]]:
        """``(envelope, body, headers)`` of a MoMo callback about ``txn`` sent to ``url`` (caller holds the lock).

        MoMo signs nothing: a ``forged`` callback differs only by who sends it (here: a
        ``Host`` no merchant registers) and by what it claims (SUCCESSFUL).
        """
        payload = status_body(txn)
        if forged:
            payload.pop("reason", None)
            payload["status"] = SUCCESSFUL
        payload |= tamper or {}
        body = json.dumps(payload)
        path, query, host = callback_target(url, txn.reference)
        headers = {"Content-Type": "application/json"}
        if forged:
            headers["Host"] = FORGED_HOST
        elif host:
            headers["Host"] = host
        return webhook_envelope(method, path, query, body, headers), body, headers


def _request_problem(body: dict[str, Any], callback_url: str | None) -> Response | None:
    """A 400 for a request-to-pay body or callback URL MoMo would refuse, else None."""
    for key in ("amount", "currency", "payer"):
        if body.get(key) in (None, ""):
            return _error(400, "BAD_REQUEST", f"{key} is required.")
    if not isinstance(body["amount"], str | int) or isinstance(body["amount"], bool):
        return _error(400, "BAD_REQUEST", "amount must be a string.")
    if not isinstance(body["currency"], str):
        return _error(400, "BAD_REQUEST", "currency must be a string.")
    payer = body["payer"]
    if (
        not isinstance(payer, dict)
        or payer.get("partyIdType") not in PARTY_ID_TYPES
        or not isinstance(payer.get("partyId"), str)
        or not payer["partyId"]
    ):
        return _error(400, "BAD_REQUEST", f"payer must be {{partyIdType: {'|'.join(PARTY_ID_TYPES)}, partyId}}.")
    for key in ("externalId", "payerMessage", "payeeNote"):
        value = body.get(key)
        if value is not None and not isinstance(value, str):
            return _error(400, "BAD_REQUEST", f"{key} must be a string.")
        if key != "externalId" and isinstance(value, str) and any(char in value for char in "&<>"):
            return _error(400, "BAD_REQUEST", f"{key} must not contain & < >.")
    if callback_url:
        try:
            check_url(callback_url, "X-Callback-Url")
        except ControlError as exc:
            return _error(400, "BAD_REQUEST", exc.message)
    return None


def check_reason(value: Any) -> str:
    """A failure reason code such as ``APPROVAL_REJECTED``."""
    if not isinstance(value, str) or not _REASON.match(value):
        raise ControlError(f"reason must be a reason code such as APPROVAL_REJECTED, got {value!r}")
    return value
