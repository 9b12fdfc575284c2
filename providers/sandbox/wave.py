"""Wave Checkout and Balance & Reconciliation APIs, sandboxed: real wire format, in-memory wallet.

Its wire API (what a merchant's code calls) and control API (how a test scripts a transaction) are
documented in docs/sandbox-api.md; keep that page true to this module.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any, Final
from urllib.parse import quote

from providers.sandbox import wire
from providers.sandbox.state import ControlError, SandboxState, Transaction
from providers.sandbox.web import Notifier, Request, Response, Router, json_response
from providers.sandbox.wire import WireSandbox, advance_fate, slowed, take_fault
from providers.wave import signature_header
from schemas.currency import AmountError, to_major, to_minor

NAME: Final = "wave"
PROCESSING: Final = "processing"
SUCCEEDED: Final = "succeeded"
CANCELLED: Final = "cancelled"
EXPIRED: Final = "expired"
STATUSES: Final = (PROCESSING, SUCCEEDED, CANCELLED, EXPIRED)
#: ``status`` → ``(checkout_status, payment_status)`` on the wire.
WIRE_STATUS: Final = {
    PROCESSING: ("open", "processing"),
    SUCCEEDED: ("complete", "succeeded"),
    CANCELLED: ("complete", "cancelled"),
    EXPIRED: ("expired", "processing"),
}
START_STATUS: Final = {
    "accepted": SUCCEEDED,
    "refused": CANCELLED,
    "waiting": PROCESSING,
    "waiting_then_accepted": PROCESSING,
    "waiting_then_refused": PROCESSING,
}
NOTIFY_PATH: Final = "/wave/webhook"
COMPLETED_EVENT: Final = "checkout.session.completed"
PAYMENT_FAILED_EVENT: Final = "checkout.session.payment_failed"
#: Currencies of Wave wallets (SN/CI/ML/BF in XOF, The Gambia, Uganda).
CURRENCIES: Final = ("XOF", "GMD", "UGX")
_TOKEN_ALPHABET: Final = string.ascii_uppercase + string.digits


def now() -> datetime:
    """The current UTC time to the second, as Wave's timestamps carry no fraction."""
    return datetime.now(UTC).replace(microsecond=0)


def wire_time(value: datetime | None) -> str | None:
    """``2022-12-18T01:17:09Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def major(minor: int, currency: str) -> str:
    """Minor units → Wave's major-unit string (``"5000"``, ``"-3366"``, ``"12.50"``)."""
    return format(to_major(minor, currency), "f")


def new_session_id() -> str:
    """``cos-1bsdxe8p8108y``-shaped."""
    alphabet = string.ascii_lowercase + string.digits
    return "cos-" + "".join(secrets.choice(alphabet) for _ in range(13))


def new_transaction_id() -> str:
    """``T_E4PDZ6KN4Q``-shaped (Wave's ids are up to 20 characters)."""
    return "T_" + "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(10))


def new_event_id() -> str:
    """``AE_…``-shaped."""
    return "AE_" + "".join(secrets.choice(_TOKEN_ALPHABET + string.ascii_lowercase) for _ in range(16))


def wave_error(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> Response:
    """Wave's error shape."""
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return json_response(status, body)


def _http_error_body(status: int) -> dict[str, Any]:
    codes = {429: "too-many-requests", 500: "internal-server-error", 503: "service-unavailable"}
    return {"code": codes.get(status, f"http-{status}"), "message": f"injected HTTP {status}"}


@dataclass(frozen=True, slots=True)
class WaveConfig:
    """Merchant credentials and behaviour of the Wave sandbox (defaults for offline use)."""

    api_key: str = "wave_sn_prod_sandbox-api-key"
    #: Signing secrets; the sandbox signs with the first (configure two to test a rotation).
    webhook_secrets: tuple[str, ...] = ("wave_sn_WHS_sandbox-secret",)
    #: The Bearer secret of the shared-secret strategy (``"strategy": "bearer"``).
    shared_secret: str = "wave_sn_WHS_sandbox-shared"  # noqa: S105 - a published test value
    #: Statement items per page of ``GET /v1/transactions``.
    page_size: int = 50
    #: Default fee of a checkout, in basis points of its amount (100 = 1 %), rounded half up.
    fee_basis_points: int = 100
    #: Wallet balance before the first statement line (minor units).
    opening_balance: int = 0
    #: Seconds between ``when_created`` and ``when_expires``.
    session_ttl: int = 1800
    business_name: str = "payrecon sandbox"

    def __post_init__(self) -> None:
        if not self.webhook_secrets or isinstance(self.webhook_secrets, str):
            raise ValueError("webhook_secrets must be a non-empty tuple of secrets")
        if self.page_size < 1:
            raise ValueError("page_size must be >= 1")


@dataclass
class WaveSession:
    """One checkout session. Mutate only under the state lock, through ``WaveSandbox.transition``."""

    id: str
    client_reference: str | None
    amount: int  # minor units, gross
    currency: str
    status: str  # one of STATUSES
    created_at: datetime
    expires_at: datetime
    success_url: str
    error_url: str
    completed_at: datetime | None = None
    transaction_id: str | None = None
    last_payment_error: dict[str, str] | None = None
    restrict_payer_mobile: str | None = None
    aggregated_merchant_id: str | None = None
    #: Event type → the event id notifications carry until the status changes.
    event_ids: dict[str, str] = field(default_factory=dict)


@dataclass
class WaveTransaction(Transaction):
    """A reference (client_reference) and its sessions; ``status`` mirrors the current (last) session.

    Inherited ``payment_token`` holds the first session's id, ``operator_id`` the current
    session's Wave transaction id and ``paid_at`` its completion time once succeeded.
    """

    sessions: list[WaveSession] = field(default_factory=list)
    fee: int | None = None
    last_payment_error: dict[str, str] | None = None
    when_completed: datetime | None = None
    wave_transaction_id: str | None = None
    refused_status: str = CANCELLED
    refunded_at: datetime | None = None
    refund_transaction_id: str | None = None

    @property
    def current(self) -> WaveSession:
        """The newest session: the one the fate and forced statuses act on."""
        return self.sessions[-1]

    def fee_of(self, config: WaveConfig) -> int:
        """The fee Wave keeps on this payment (minor units)."""
        if self.fee is not None:
            return self.fee
        return (self.reported_amount * config.fee_basis_points + 5000) // 10000

    def to_json(self) -> dict[str, Any]:
        """The transaction as the control API shows it."""
        out = super().to_json()
        checkout_status, payment_status = WIRE_STATUS[self.status]
        out.update(
            reference=self.transaction_id,
            checkout_session_id=self.current.id,
            checkout_status=checkout_status,
            payment_status=payment_status,
            provider_data={"checkout_session_id": self.current.id},
            wave_transaction_id=self.current.transaction_id,
            fee=self.fee,
            last_payment_error=self.last_payment_error,
            when_completed=wire_time(self.current.completed_at),
            refused_status=self.refused_status,
            refunded_at=wire_time(self.refunded_at),
            sessions=[{"id": s.id, "status": s.status, "event_ids": dict(s.event_ids)} for s in self.sessions],
        )
        for key in ("payment_method", "phone", "description", "metadata", "payment_token", "operator_id"):
            out.pop(key, None)
        return out


class WaveSandbox(WireSandbox):
    """Wave's wire API and the sandbox's Wave control API over one state."""

    name = NAME

    def __init__(
        self, state: SandboxState, notifier: Notifier, config: WaveConfig, *, base_url: Callable[[], str]
    ) -> None:
        """Serve Wave for one wallet (``config``: its API key, webhook secrets, statement paging)."""
        super().__init__(state, notifier, base_url=base_url)
        self.config = config

    def register(self, router: Router) -> None:
        """Add the wire routes and the ``/_sandbox/wave/...`` control routes."""
        # "search" before "{id}": the first matching route wins.
        router.add("GET", "/v1/checkout/sessions/search", self.wire_search, wire=True)
        router.add("POST", "/v1/checkout/sessions", self.wire_create, wire=True)
        router.add("GET", "/v1/checkout/sessions", self.wire_by_transaction, wire=True)
        router.add("GET", "/v1/checkout/sessions/{id}", self.wire_get, wire=True)
        router.add("GET", "/v1/transactions", self.wire_transactions, wire=True)
        # Late import: the control module builds on this one.
        from providers.sandbox.wave_control import WaveControl

        WaveControl(self).register(router)

    # ------------------------------------------------------------------ store

    def store(self) -> dict[str, Transaction]:
        """The reference → transaction store (caller holds the lock)."""
        return self.state.transactions(NAME)

    def transactions(self) -> Iterator[WaveTransaction]:
        """Every Wave transaction (caller holds the lock)."""
        for txn in self.store().values():
            if isinstance(txn, WaveTransaction):
                yield txn

    def find_session(self, session_id: str) -> tuple[WaveTransaction, WaveSession] | None:
        """A session and its transaction by session id (caller holds the lock)."""
        for txn in self.transactions():
            for session in txn.sessions:
                if session.id == session_id:
                    return txn, session
        return None

    def new_session(
        self, reference: str | None, amount: int, currency: str, created: datetime, **extra: Any
    ) -> WaveSession:
        """A fresh open session (not stored)."""
        base = self._base_url()
        session_id = new_session_id()
        return WaveSession(
            id=session_id,
            client_reference=reference,
            amount=amount,
            currency=currency,
            status=PROCESSING,
            created_at=created,
            expires_at=created + timedelta(seconds=self.config.session_ttl),
            success_url=extra.pop("success_url", None) or f"{base}/_sandbox/wave/return/success",
            error_url=extra.pop("error_url", None) or f"{base}/_sandbox/wave/return/error",
            **extra,
        )

    # ------------------------------------------------------------------ wire API

    def _auth_error(self, request: Request) -> Response | None:
        header = request.header("authorization")
        if header is None or not header.strip():
            return wave_error(401, "missing-auth-header", "Missing Authorization header")
        scheme, _, key = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return wave_error(401, "invalid-auth", "Authorization header must be 'Bearer <api key>'")
        if not secrets.compare_digest(key.strip().encode(), self.config.api_key.encode()):
            return wave_error(401, "no-matching-api-key", "No API key matches the one given")
        return None

    def wire_create(self, request: Request) -> Response:
        """``POST /v1/checkout/sessions``: a new open session (200)."""
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        try:
            body = json.loads(request.body or b"null")
        except ValueError:
            return wave_error(400, "request-not-json", "Request body is not valid JSON")
        if not isinstance(body, dict):
            return wave_error(400, "request-not-json", "Request body must be a JSON object")
        details, fields = self._validate_create(body)
        if details:
            return wave_error(400, "request-validation-error", "Request validation error", details)
        reference: str | None = fields.pop("client_reference")
        with self.state.lock:
            session = self.new_session(reference, created=now(), **fields)
            store = self.store()
            key = reference or session.id
            txn = store.get(key)
            if isinstance(txn, WaveTransaction):
                # Another session for a known reference: the script was about the earlier one.
                txn.sessions.append(session)
                txn.scripted = False
                txn.status = session.status
                txn.paid_at, txn.operator_id = None, None
            else:
                txn = self._wire_transaction(key, session)
                store[key] = txn
            return json_response(200, self.session_json(txn, session))

    def _wire_transaction(self, key: str, session: WaveSession) -> WaveTransaction:
        return WaveTransaction(
            provider=NAME,
            transaction_id=key,
            amount=session.amount,
            currency=session.currency,
            fate="waiting",
            status=session.status,
            created_at=session.created_at,
            payment_token=session.id,
            sessions=[session],
        )

    @staticmethod
    def _validate_create(body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        details: list[dict[str, Any]] = []

        def bad(name: str, message: str) -> None:
            details.append({"loc": ["body", name], "msg": message})

        for name in ("amount", "currency", "success_url", "error_url"):
            if body.get(name) in (None, ""):
                bad(name, "field required")
        currency, amount = body.get("currency"), body.get("amount")
        if currency not in (None, "") and currency not in CURRENCIES:
            bad("currency", f"currency must be one of {', '.join(CURRENCIES)}")
        minor = 0
        if amount not in (None, ""):
            if not isinstance(amount, str):
                bad("amount", "amount must be a string")
            elif currency in CURRENCIES:
                try:
                    minor = to_minor(amount, str(currency))
                except AmountError:
                    bad("amount", f"amount must be a valid {currency} amount")
                else:
                    if minor <= 0:
                        bad("amount", "amount must be positive")
        for name in ("success_url", "error_url"):
            value = body.get(name)
            if value not in (None, "") and (not isinstance(value, str) or not re.match(r"^https?://\S+$", value)):
                bad(name, "must be an http(s) URL")
        reference = body.get("client_reference")
        if reference is not None and (not isinstance(reference, str) or not 1 <= len(reference) <= 255):
            bad("client_reference", "client_reference must be a string of 1-255 characters")
        mobile = body.get("restrict_payer_mobile")
        if mobile is not None and (not isinstance(mobile, str) or not re.fullmatch(r"\+\d{6,15}", mobile)):
            bad("restrict_payer_mobile", "must be an E.164 phone number")
        merchant = body.get("aggregated_merchant_id")
        if merchant is not None and not isinstance(merchant, str):
            bad("aggregated_merchant_id", "must be a string")
        fields = {
            "client_reference": reference,
            "amount": minor,
            "currency": currency,
            "success_url": body.get("success_url"),
            "error_url": body.get("error_url"),
            "restrict_payer_mobile": mobile,
            "aggregated_merchant_id": merchant,
        }
        return details, fields

    def wire_get(self, request: Request) -> Response:
        """``GET /v1/checkout/sessions/{id}``."""
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        with self.state.lock:
            found = self.find_session(request.params["id"])
            if found is None:
                return _not_found()
            txn, session = found
            return self._status_call(txn, lambda: self.session_json(txn, session))

    def wire_search(self, request: Request) -> Response:
        """``GET /v1/checkout/sessions/search?client_reference=…``: every session of that reference."""
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        values = request.query.get("client_reference") or []
        if len(values) != 1 or not values[0]:
            detail = [{"loc": ["query", "client_reference"], "msg": "field required"}]
            return wave_error(400, "request-validation-error", "Request validation error", detail)
        with self.state.lock:
            txn = self.store().get(values[0])
            if not isinstance(txn, WaveTransaction) or txn.current.client_reference is None:
                return json_response(200, {"result": []})
            found = txn
            return self._status_call(found, lambda: {"result": [self.session_json(found, s) for s in found.sessions]})

    def wire_by_transaction(self, request: Request) -> Response:
        """``GET /v1/checkout/sessions?transaction_id=T_…``: the session that transaction paid."""
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        values = request.query.get("transaction_id") or []
        if len(values) != 1 or not values[0]:
            detail = [{"loc": ["query", "transaction_id"], "msg": "field required"}]
            return wave_error(400, "request-validation-error", "Request validation error", detail)
        with self.state.lock:
            found = next(
                ((txn, s) for txn in self.transactions() for s in txn.sessions if s.transaction_id == values[0]),
                None,
            )
            if found is None:
                return _not_found()
            txn, session = found
            return self._status_call(txn, lambda: self.session_json(txn, session))

    def _status_call(self, txn: WaveTransaction, answer: Callable[[], Any]) -> Response:
        """Count the call, apply the next per-transaction fault, advance the fate (lock held)."""
        fault, forced = take_fault(txn, _http_error_body)
        if forced is not None:
            return forced
        final = {"waiting_then_accepted": SUCCEEDED, "waiting_then_refused": txn.refused_status}
        advance_fate(txn, waiting=(PROCESSING,), final=final, transition=partial(self.transition, txn))
        return slowed(json_response(200, answer()), fault)

    def session_json(self, txn: WaveTransaction, session: WaveSession) -> dict[str, Any]:
        """The session object as Wave shows it (amount and currency as ``confirm_*`` say)."""
        checkout_status, payment_status = WIRE_STATUS[session.status]
        currency = txn.confirm_currency or session.currency
        amount = txn.confirm_amount if txn.confirm_amount is not None else session.amount
        launch = f"{self._base_url()}/_sandbox/wave/pay/{session.id}"
        return {
            "id": session.id,
            "amount": major(amount, currency),
            "checkout_status": checkout_status,
            "client_reference": session.client_reference,
            "currency": currency,
            "error_url": session.error_url,
            "last_payment_error": None if session.status == SUCCEEDED else session.last_payment_error,
            "business_name": self.config.business_name,
            "payment_status": payment_status,
            "transaction_id": session.transaction_id,
            "aggregated_merchant_id": session.aggregated_merchant_id,
            "restrict_payer_mobile": session.restrict_payer_mobile,
            "success_url": session.success_url,
            "wave_launch_url": launch,
            "when_completed": wire_time(session.completed_at),
            "when_created": wire_time(session.created_at),
            "when_expires": wire_time(session.expires_at),
        }

    # ------------------------------------------------------------------ statement

    def statement(self) -> list[dict[str, Any]]:
        """Every statement line of every day, oldest first, with running ``balance`` (lock held)."""
        lines: list[tuple[datetime, dict[str, Any]]] = []
        for txn in self.transactions():
            for session in txn.sessions:
                if session.status != SUCCEEDED or session.completed_at is None:
                    continue
                currency = txn.confirm_currency or session.currency
                gross = txn.confirm_amount if txn.confirm_amount is not None else session.amount
                fee = txn.fee_of(self.config) if session is txn.sessions[0] else self._default_fee(gross)
                common = {
                    "currency": currency,
                    "counterparty_name": "Sandbox Payer",
                    "counterparty_mobile": "+221770000000",
                    "client_reference": session.client_reference,
                    "payment_reason": None,
                    "checkout_api_session_id": session.id,
                    "aggregated_merchant_id": session.aggregated_merchant_id,
                }
                lines.append(
                    (
                        session.completed_at,
                        {
                            "transaction_id": session.transaction_id,
                            "transaction_type": "api_checkout",
                            "net": gross - fee,
                            "fee": fee,
                            "is_reversal": False,
                            **common,
                        },
                    )
                )
                if txn.refunded_at is not None and session is txn.sessions[0] and txn.refund_transaction_id:
                    refund = {
                        "transaction_id": txn.refund_transaction_id,
                        "transaction_type": "api_checkout_refund",
                        "net": -(gross - fee),
                        "fee": -fee,
                        "is_reversal": True,
                        **common,
                    }
                    lines.append((txn.refunded_at, refund))
        lines.sort(key=lambda pair: (pair[0], pair[1]["transaction_id"] or ""))
        balance = self.config.opening_balance
        out: list[dict[str, Any]] = []
        for when, line in lines:
            currency = line["currency"]
            net = line.pop("net")
            balance += net
            out.append(
                {
                    "timestamp": wire_time(when),
                    "transaction_id": line.pop("transaction_id"),
                    "transaction_type": line.pop("transaction_type"),
                    "amount": major(net, currency),
                    "fee": major(line.pop("fee"), currency),
                    "balance": major(balance, currency),
                    **line,
                }
            )
        return out

    def _default_fee(self, gross: int) -> int:
        return (gross * self.config.fee_basis_points + 5000) // 10000

    def wire_transactions(self, request: Request) -> Response:
        """``GET /v1/transactions?date=&after=``: one UTC day of the statement, cursor-paginated."""
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        raw_day = (request.query.get("date") or [""])[-1]
        try:
            day = date.fromisoformat(raw_day) if raw_day else now().date()
        except ValueError:
            detail = [{"loc": ["query", "date"], "msg": "date must be YYYY-MM-DD"}]
            return wave_error(400, "request-validation-error", "Request validation error", detail)
        after = (request.query.get("after") or [""])[-1]
        start = 0
        if after:
            start_or_none = _decode_cursor(after, day)
            if start_or_none is None:
                detail = [{"loc": ["query", "after"], "msg": "invalid cursor"}]
                return wave_error(400, "request-validation-error", "Request validation error", detail)
            start = start_or_none
        with self.state.lock:
            lines = [line for line in self.statement() if line["timestamp"].startswith(day.isoformat())]
        page = lines[start : start + self.config.page_size]
        end = start + len(page)
        page_info = {
            "start_cursor": _encode_cursor(day, start) if page else None,
            "end_cursor": _encode_cursor(day, end) if page else None,
            "has_next_page": end < len(lines),
        }
        return json_response(200, {"page_info": page_info, "date": day.isoformat(), "items": page})

    # ------------------------------------------------------------------ state changes

    def transition(self, txn: WaveTransaction, status: str, *, notify: bool = True) -> None:
        """Change the current session's status (lock held) and notify ``notify_url`` if Wave would."""
        session = txn.current
        if session.status == status:
            return
        session.status = status
        session.event_ids.clear()  # a new status is a new event
        txn.status = status
        if status == PROCESSING:
            session.completed_at = None
        else:
            first = session is txn.sessions[0]
            override = txn.when_completed if first else None
            session.completed_at = override or max(now(), session.created_at)
        if status == SUCCEEDED:
            if session.transaction_id is None:
                first = session is txn.sessions[0]
                session.transaction_id = (txn.wave_transaction_id if first else None) or new_transaction_id()
            txn.paid_at, txn.operator_id = session.completed_at, session.transaction_id
        else:
            txn.paid_at, txn.operator_id = None, None
        if notify:
            self._auto_notify(txn)

    def event_type(self, txn: WaveTransaction) -> str | None:
        """The event Wave sends about the current session now, or None when it sends none."""
        session = txn.current
        checkout_status, _ = WIRE_STATUS[session.status]
        if checkout_status == "complete":
            return COMPLETED_EVENT
        if checkout_status == "open" and session.last_payment_error:
            return PAYMENT_FAILED_EVENT
        return None

    def event(self, txn: WaveTransaction, event_type: str) -> dict[str, Any]:
        """The event envelope about the current session; its id is stable until the status changes."""
        session = txn.current
        event_id = session.event_ids.setdefault(event_type, new_event_id())
        return {"id": event_id, "type": event_type, "data": self.session_json(txn, session)}

    def signed_headers(
        self, body: str, *, forged: bool = False, stale: bool = False, rotate: bool = False, bearer: bool = False
    ) -> dict[str, str]:
        """Headers Wave would send with ``body`` (signature strategy, or Bearer shared secret)."""
        headers = {"Content-Type": "application/json"}
        if bearer:
            secret = secrets.token_hex(16) if forged else self.config.shared_secret
            headers["Authorization"] = f"Bearer {secret}"
            return headers
        key = secrets.token_hex(16) if forged else self.config.webhook_secrets[0]
        keys = [key]
        if rotate:
            old = self.config.webhook_secrets[1] if len(self.config.webhook_secrets) > 1 else secrets.token_hex(16)
            keys = [old, key]
        timestamp = int(now().timestamp()) - (600 if stale else 0)
        headers["Wave-Signature"] = signature_header(keys, timestamp, body)
        return headers

    def _auto_notify(self, txn: WaveTransaction) -> None:
        if not txn.notify_url:
            return
        event_type = self.event_type(txn)
        if event_type is None:
            return
        event = self.event(txn, event_type)
        body = json.dumps(event)
        headers = self.signed_headers(body)
        record: dict[str, Any] = {"kind": "auto", "status": txn.status, "type": event_type, "url": txn.notify_url}
        record["event_id"] = event["id"]
        envelope = webhook_envelope("POST", body, headers)
        self.notify_later(txn, record, method="POST", url=txn.notify_url, body=body, headers=headers, envelope=envelope)

    def pay_path(self, reference: str) -> str:
        """The control path that completes a payment."""
        return f"/_sandbox/wave/transactions/{quote(reference, safe='')}/status"


def webhook_envelope(method: str, body: str, headers: dict[str, str]) -> dict[str, Any]:
    """The ``payrecon.webhook/1`` envelope payrecon's receiver would build for this event."""
    return wire.webhook_envelope(NAME, method, NOTIFY_PATH, body, headers)


def _not_found() -> Response:
    return wave_error(404, "checkout-session-not-found", "Checkout session not found")


def _encode_cursor(day: date, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{day.isoformat()}:{offset}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, day: date) -> int | None:
    """The offset a cursor points at, or None if it is not one of ours for ``day``."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    cursor_day, _, offset = text.partition(":")
    if cursor_day != day.isoformat() or not offset.isdigit():
        return None
    return int(offset)


def parse_time(value: Any, key: str) -> datetime | None:
    """An optional ISO-8601 timestamp with an offset (``Z`` allowed), for the control API."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ControlError(f"{key} must be an ISO-8601 timestamp with an offset, got {value!r}")
    return parsed.astimezone(UTC).replace(microsecond=0)
