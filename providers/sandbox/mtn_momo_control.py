"""The sandbox's MTN MoMo control API: script requests to pay, force statuses, build callbacks.

Routes (JSON in and out; bad input → 400 ``{"error": ...}``, unknown reference → 404,
existing reference → 409) are documented in ``providers/sandbox/mtn_momo.py``.
"""

from __future__ import annotations

import re
from typing import Any, Final

from providers.mtn_momo import SUCCESSFUL, is_uuid4
from providers.sandbox.mtn_momo import (
    DEFAULT_PAYER,
    DEFAULT_REASON,
    ENQUEUE,
    NAME,
    START_STATUS,
    STATUSES,
    MomoTransaction,
    MtnMomoSandbox,
    check_reason,
    financial_transaction_id,
    now,
)
from providers.sandbox.state import (
    FATES,
    ControlError,
    check_currency,
    check_keys,
    check_url,
    get_int,
    get_str,
    parse_faults,
)
from providers.sandbox.web import Request, Response, Router, json_response

_CREATE_KEYS: Final = {
    "reference",
    "amount",
    "currency",
    "fate",
    "pending_checks",
    "confirm_amount",
    "confirm_currency",
    "faults",
    "notify_url",
    "payer",
    "external_id",
    "payer_message",
    "payee_note",
    "reason",
    "reason_format",
    "not_found_checks",
    "callbacks",
}
_NOTIFICATION_KEYS: Final = {"forged", "tamper", "deliver_to", "enqueue", "method"}
_MSISDN = re.compile(r"^\d{6,15}$")


def check_reference(value: Any) -> str:
    """An X-Reference-Id: a UUID v4."""
    if not isinstance(value, str) or not is_uuid4(value):
        raise ControlError(f"reference must be a UUID v4 (MoMo's X-Reference-Id), got {value!r}")
    return value


def _bool(payload: dict[str, Any], key: str, default: bool) -> bool:
    value = payload.get(key, default)
    if not isinstance(value, bool):
        raise ControlError(f"{key} must be true or false")
    return value


def _no_broker(what: str) -> ControlError:
    return ControlError(f"{what} needs a sandbox started with a broker_url (SandboxServer(broker_url=...))")


class MtnMomoControl:
    """Control routes over one ``MtnMomoSandbox`` (its state, config and notifier)."""

    def __init__(self, wire: MtnMomoSandbox) -> None:
        """Control ``wire``'s transactions and tokens."""
        self.wire = wire

    def register(self, router: Router) -> None:
        """Add the ``/_sandbox/mtn_momo/...`` routes."""
        control = f"/_sandbox/{NAME}"
        router.add("GET", f"{control}/transactions", self.list_transactions)
        router.add("POST", f"{control}/transactions", self.create_transaction)
        router.add("GET", f"{control}/transactions/{{reference}}", self.get_transaction)
        router.add("POST", f"{control}/transactions/{{reference}}/status", self.force_status)
        router.add("POST", f"{control}/transactions/{{reference}}/notification", self.notification)
        router.add("GET", f"{control}/tokens", self.tokens)
        router.add("POST", f"{control}/tokens/expire", self.expire_tokens)

    # ------------------------------------------------------------------ transactions

    def create_transaction(self, request: Request) -> Response:
        """``POST /_sandbox/mtn_momo/transactions``: script a request to pay (201)."""
        payload = request.json_object()
        check_keys(payload, set(_CREATE_KEYS), "transaction")
        fate = payload.get("fate", "accepted")
        if fate not in FATES:
            raise ControlError(f"fate must be one of {', '.join(FATES)}, got {fate!r}")
        amount = get_int(payload, "amount", minimum=1)
        if amount is None:
            raise ControlError("amount (integer, minor units) is required")
        reference = check_reference(payload.get("reference"))
        confirm_currency = payload.get("confirm_currency")
        payer = get_str(payload, "payer", default=DEFAULT_PAYER) or ""
        if not _MSISDN.match(payer):
            raise ControlError(f"payer must be an MSISDN (6-15 digits, no +), got {payer!r}")
        reason_format = payload.get("reason_format", "string")
        if reason_format not in ("string", "object"):
            raise ControlError(f'reason_format must be "string" or "object", got {reason_format!r}')
        created = now()
        txn = MomoTransaction(
            provider=NAME,
            transaction_id=reference,
            amount=amount,
            currency=check_currency(payload.get("currency", "XOF")),
            fate=fate,
            status=START_STATUS[fate],
            created_at=created,
            payment_token="",
            pending_checks=get_int(payload, "pending_checks", default=1) or 0,
            confirm_amount=get_int(payload, "confirm_amount"),
            confirm_currency=None if confirm_currency is None else check_currency(confirm_currency, "confirm_currency"),
            notify_url=self._notify_url(payload.get("notify_url")),
            payer=payer,
            external_id=get_str(payload, "external_id", default=reference) or "",
            payer_message=get_str(payload, "payer_message", default="") or "",
            payee_note=get_str(payload, "payee_note", default="") or "",
            reason=check_reason(payload.get("reason", DEFAULT_REASON)),
            reason_format=reason_format,
            not_found_checks=get_int(payload, "not_found_checks", default=0) or 0,
            callbacks=_bool(payload, "callbacks", True),
            created_clock=self.wire.config.clock(),
        )
        txn.faults.extend(parse_faults(payload.get("faults")))
        if txn.status == SUCCESSFUL:
            txn.paid_at, txn.financial_transaction_id = created, financial_transaction_id()
        self.wire.state.add(txn)
        with self.wire.state.lock:
            return json_response(201, txn.to_json())

    def list_transactions(self, request: Request) -> Response:
        """``GET /_sandbox/mtn_momo/transactions``: every transaction."""
        with self.wire.state.lock:
            store = self.wire.state.transactions(NAME).values()
            return json_response(200, [t.to_json() for t in store])

    def get_transaction(self, request: Request) -> Response:
        """``GET /_sandbox/mtn_momo/transactions/{reference}``: state, counters, callbacks."""
        txn = self.wire.get(request.params["reference"])
        with self.wire.state.lock:
            return json_response(200, txn.to_json())

    def force_status(self, request: Request) -> Response:
        """``POST .../transactions/{reference}/status`` ``{"status", "reason"?}``: change now, call back."""
        payload = request.json_object()
        check_keys(payload, {"status", "reason"}, "status change")
        status = payload.get("status")
        if status not in STATUSES:
            raise ControlError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        reason = None if payload.get("reason") is None else check_reason(payload["reason"])
        txn = self.wire.get(request.params["reference"])
        with self.wire.state.lock:
            txn.scripted = False
            self.wire.transition(txn, status, reason)
            return json_response(200, txn.to_json())

    def notification(self, request: Request) -> Response:
        """``POST .../transactions/{reference}/notification``: a MoMo callback (or a forged one).

        Body: ``forged`` (a third party's callback), ``tamper`` (body fields changed),
        ``deliver_to`` (also send it there), ``enqueue`` (also publish it on the broker),
        ``method`` (default PUT).
        """
        payload = request.json_object()
        check_keys(payload, set(_NOTIFICATION_KEYS), "notification")
        forged = _bool(payload, "forged", False)
        tamper = payload.get("tamper") or {}
        if not isinstance(tamper, dict):
            raise ControlError("tamper must be an object of body field -> JSON value")
        method = payload.get("method", "PUT")
        if not isinstance(method, str) or not method.isalpha() or not 3 <= len(method) <= 7:
            raise ControlError(f"method must be an HTTP method, got {method!r}")
        method = method.upper()
        deliver_to = check_url(payload.get("deliver_to"), "deliver_to")
        enqueue = self._enqueue_flag(payload)
        txn = self.wire.get(request.params["reference"])
        with self.wire.state.lock:
            status = txn.status
            envelope, body, headers = self.wire.callback(
                txn, method=method, url=deliver_to, forged=forged, tamper=tamper
            )
        delivered, error = (None, None)
        if deliver_to is not None:
            delivered, error = self.wire.notifier.send(method, deliver_to, body, headers)
        enqueued, enqueue_error = self.wire.notifier.enqueue(envelope) if enqueue else (False, None)
        record = {"kind": "manual", "status": status, "method": method, "forged": forged}
        record |= {"tampered": sorted(tamper), "url": deliver_to, "delivered": delivered, "error": error}
        record |= {"enqueued": enqueued, "enqueue_error": enqueue_error}
        with self.wire.state.lock:
            txn.notifications.append(record)
        return json_response(
            200,
            {
                "envelope": envelope,
                "delivered": delivered,
                "delivery_error": error,
                "enqueued": enqueued,
                "enqueue_error": enqueue_error,
            },
        )

    # ------------------------------------------------------------------ tokens

    def tokens(self, request: Request) -> Response:
        """``GET /_sandbox/mtn_momo/tokens``: ``{"issued", "active", "refused"}`` since start."""
        wire = self.wire
        with wire.state.lock:
            clock = wire.config.clock()
            active = sum(1 for expires in wire.tokens.values() if clock < expires)
            return json_response(200, {"issued": wire.tokens_issued, "active": active, "refused": wire.tokens_refused})

    def expire_tokens(self, request: Request) -> Response:
        """``POST /_sandbox/mtn_momo/tokens/expire``: every issued token expires now."""
        wire = self.wire
        with wire.state.lock:
            clock = wire.config.clock()
            expired = sum(1 for expires in wire.tokens.values() if clock < expires)
            wire.tokens = dict.fromkeys(wire.tokens, clock)
            return json_response(200, {"expired": expired})

    # ------------------------------------------------------------------ helpers

    def _notify_url(self, value: Any) -> str | None:
        if value == ENQUEUE:
            if not self.wire.notifier.can_enqueue:
                raise _no_broker('notify_url "enqueue"')
            return ENQUEUE
        try:
            return check_url(value, "notify_url")
        except ControlError:
            raise ControlError(f'notify_url must be an absolute http(s) URL or "enqueue", got {value!r}') from None

    def _enqueue_flag(self, payload: dict[str, Any]) -> bool:
        enqueue = _bool(payload, "enqueue", False)
        if enqueue and not self.wire.notifier.can_enqueue:
            raise _no_broker('"enqueue": true')
        return enqueue
