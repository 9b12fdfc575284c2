"""The sandbox's Wave control API: script payments, force statuses, build signed events.

Routes and fields are documented in ``providers/sandbox/wave.py``.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any, Final

from providers.sandbox.state import (
    FATES,
    ControlError,
    check_currency,
    check_keys,
    check_transaction_id,
    check_url,
    get_int,
    get_str,
    parse_faults,
)
from providers.sandbox.wave import (
    CANCELLED,
    CURRENCIES,
    ENQUEUE,
    EXPIRED,
    NAME,
    PROCESSING,
    START_STATUS,
    STATUSES,
    WaveSandbox,
    WaveTransaction,
    new_transaction_id,
    now,
    parse_time,
    webhook_envelope,
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
    "fee",
    "last_payment_error",
    "when_completed",
    "transaction_id",
    "refused_status",
    "refunded_at",
}
_NOTIFICATION_KEYS: Final = {
    "forged",
    "tamper",
    "deliver_to",
    "enqueue",
    "method",
    "stale",
    "strategy",
    "rotate",
    "event_type",
}
_WAVE_TXN_ID = re.compile(r"[A-Za-z0-9_]{1,20}")
_EVENT_TYPE = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+){1,4}")


def _no_broker(what: str) -> ControlError:
    return ControlError(f"{what} needs a sandbox started with a broker_url (SandboxServer(broker_url=...))")


def _flag(payload: dict[str, Any], key: str) -> bool:
    value = payload.get(key, False)
    if not isinstance(value, bool):
        raise ControlError(f"{key} must be true or false")
    return value


def _payment_error(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ControlError('last_payment_error must be an object {"code", "message"}')
    check_keys(value, {"code", "message"}, "last_payment_error")
    code, message = value.get("code"), value.get("message", "")
    if not isinstance(code, str) or not code or not isinstance(message, str):
        raise ControlError("last_payment_error needs a string code (e.g. insufficient-funds) and a string message")
    return {"code": code, "message": message}


class WaveControl:
    """Control routes over one ``WaveSandbox`` (its state, config and notifier)."""

    def __init__(self, wire: WaveSandbox) -> None:
        """Control ``wire``'s transactions."""
        self.wire = wire

    def register(self, router: Router) -> None:
        """Add the ``/_sandbox/wave/...`` routes."""
        control = "/_sandbox/wave"
        router.add("GET", f"{control}/transactions", self.list_transactions)
        router.add("POST", f"{control}/transactions", self.create_transaction)
        router.add("GET", f"{control}/transactions/{{reference}}", self.get_transaction)
        router.add("POST", f"{control}/transactions/{{reference}}/status", self.force_status)
        router.add("POST", f"{control}/transactions/{{reference}}/notification", self.notification)
        router.add("GET", f"{control}/pay/{{session_id}}", self.pay_page)
        router.add("GET", f"{control}/return/{{outcome}}", self.return_page)

    def _get(self, reference: str) -> WaveTransaction:
        txn = self.wire.state.get(NAME, reference)
        if not isinstance(txn, WaveTransaction):  # pragma: no cover - the store holds only these
            raise ControlError(f"no wave transaction {reference!r}", status=404)
        return txn

    # ------------------------------------------------------------------ transactions

    def create_transaction(self, request: Request) -> Response:
        """``POST /_sandbox/wave/transactions``: script a payment and its first session (201)."""
        payload = request.json_object()
        check_keys(payload, set(_CREATE_KEYS), "transaction")
        try:
            reference = check_transaction_id(payload.get("reference"))
        except ControlError:
            raise ControlError(
                "reference (the client_reference) must be 1-100 characters of A-Z a-z 0-9 . _ : -"
            ) from None
        fate = payload.get("fate", "accepted")
        if fate not in FATES:
            raise ControlError(f"fate must be one of {', '.join(FATES)}, got {fate!r}")
        amount = get_int(payload, "amount", minimum=1)
        if amount is None:
            raise ControlError("amount (integer, minor units) is required")
        currency = payload.get("currency", "XOF")
        if currency not in CURRENCIES:
            raise ControlError(f"currency must be one of {', '.join(CURRENCIES)} (Wave wallets), got {currency!r}")
        confirm_currency = payload.get("confirm_currency")
        refused_status = payload.get("refused_status", CANCELLED)
        if refused_status not in (CANCELLED, EXPIRED):
            raise ControlError(f'refused_status must be "cancelled" or "expired", got {refused_status!r}')
        wave_txn_id = get_str(payload, "transaction_id")
        if wave_txn_id is not None and not _WAVE_TXN_ID.fullmatch(wave_txn_id):
            raise ControlError("transaction_id (Wave's T_… id) must be 1-20 characters of A-Z a-z 0-9 _")
        when_completed = parse_time(payload.get("when_completed"), "when_completed")
        refunded_at = parse_time(payload.get("refunded_at"), "refunded_at")
        error = _payment_error(payload.get("last_payment_error"))
        created = now()
        if when_completed is not None and when_completed <= created:
            created = when_completed - timedelta(minutes=2)  # a session opens before it completes
        session = self.wire.new_session(reference, amount, currency, created, last_payment_error=error)
        txn = WaveTransaction(
            provider=NAME,
            transaction_id=reference,
            amount=amount,
            currency=currency,
            fate=fate,
            status=PROCESSING,
            created_at=created,
            payment_token=session.id,
            pending_checks=get_int(payload, "pending_checks", default=1) or 0,
            confirm_amount=get_int(payload, "confirm_amount"),
            confirm_currency=None if confirm_currency is None else check_currency(confirm_currency, "confirm_currency"),
            notify_url=self._notify_url(payload.get("notify_url")),
            sessions=[session],
            fee=get_int(payload, "fee"),
            last_payment_error=error,
            when_completed=when_completed,
            wave_transaction_id=wave_txn_id,
            refused_status=refused_status,
            refunded_at=refunded_at,
            refund_transaction_id=new_transaction_id() if refunded_at else None,
        )
        txn.faults.extend(parse_faults(payload.get("faults")))
        self.wire.state.add(txn)
        with self.wire.state.lock:
            start = START_STATUS[fate]
            if start != PROCESSING:
                # Final from the start: no status change for Wave to announce.
                self.wire.transition(txn, refused_status if fate == "refused" else start, notify=False)
            return json_response(201, txn.to_json())

    def list_transactions(self, request: Request) -> Response:
        """``GET /_sandbox/wave/transactions``: every transaction."""
        with self.wire.state.lock:
            return json_response(200, [t.to_json() for t in self.wire.transactions()])

    def get_transaction(self, request: Request) -> Response:
        """``GET /_sandbox/wave/transactions/{reference}``: state, ``check_count``, sessions, notifications."""
        txn = self._get(request.params["reference"])
        with self.wire.state.lock:
            return json_response(200, txn.to_json())

    def force_status(self, request: Request) -> Response:
        """``POST .../transactions/{reference}/status`` ``{"status"}``: change now, notify, stop the script."""
        payload = request.json_object()
        check_keys(payload, {"status"}, "status change")
        status = payload.get("status")
        if status not in STATUSES:
            raise ControlError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        txn = self._get(request.params["reference"])
        with self.wire.state.lock:
            txn.scripted = False
            self.wire.transition(txn, status)
            return json_response(200, txn.to_json())

    # ------------------------------------------------------------------ notifications

    def notification(self, request: Request) -> Response:
        """``POST .../transactions/{reference}/notification``: a signed (or forged, stale...) event."""
        payload = request.json_object()
        check_keys(payload, set(_NOTIFICATION_KEYS), "notification")
        forged, stale, rotate = _flag(payload, "forged"), _flag(payload, "stale"), _flag(payload, "rotate")
        strategy = payload.get("strategy", "signature")
        if strategy not in ("signature", "bearer"):
            raise ControlError(f'strategy must be "signature" or "bearer", got {strategy!r}')
        if strategy == "bearer" and (stale or rotate):
            raise ControlError("stale and rotate only apply to the signature strategy")
        tamper = payload.get("tamper") or {}
        if not isinstance(tamper, dict):
            raise ControlError("tamper must be an object of data field -> value")
        event_type = get_str(payload, "event_type")
        if event_type is not None and not _EVENT_TYPE.fullmatch(event_type):
            raise ControlError(f"event_type must look like checkout.session.completed, got {event_type!r}")
        method = self._method(payload)
        self._enqueue_flag(payload)  # a bad flag fails before anything is recorded
        txn = self._get(request.params["reference"])
        with self.wire.state.lock:
            event_type = event_type or self.wire.event_type(txn)
            if event_type is None:
                raise ControlError(
                    f"Wave sends no event about a session that is {txn.status} without a last_payment_error; "
                    "pass event_type to send one anyway",
                    status=409,
                )
            event = self.wire.event(txn, event_type)
        body = json.dumps(event)
        headers = self.wire.signed_headers(body, forged=forged, stale=stale, rotate=rotate, bearer=strategy == "bearer")
        if tamper:
            body = json.dumps({**event, "data": {**event["data"], **tamper}})  # signed before the edit
        result = self._deliver(method, body, headers, payload)
        record = {"kind": "manual", "status": txn.status, "type": event_type, "event_id": event["id"]}
        record |= {"forged": forged, "stale": stale, "rotate": rotate, "strategy": strategy}
        record |= {"tampered": sorted(tamper), "url": payload.get("deliver_to")}
        record |= {"delivered": result["delivered"], "error": result["delivery_error"]}
        record |= {"enqueued": result["enqueued"], "enqueue_error": result["enqueue_error"]}
        with self.wire.state.lock:
            txn.notifications.append(record)
        return json_response(200, result)

    # ------------------------------------------------------------------ pages

    def pay_page(self, request: Request) -> Response:
        """``GET /_sandbox/wave/pay/{session_id}``: the ``wave_launch_url`` target, as JSON."""
        with self.wire.state.lock:
            found = self.wire.find_session(request.params["session_id"])
            if found is None:
                raise ControlError("unknown checkout session", status=404)
            txn, session = found
            hint = f'POST {self.wire.pay_path(txn.transaction_id)} {{"status": "succeeded"}} (or cancelled)'
            return json_response(
                200, {"session": self.wire.session_json(txn, session), "transaction": txn.to_json(), "how_to_pay": hint}
            )

    def return_page(self, request: Request) -> Response:
        """``GET /_sandbox/wave/return/{outcome}``: where the default success/error URLs lead."""
        return json_response(200, {"returned": request.params["outcome"]})

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _method(payload: dict[str, Any]) -> str:
        method = payload.get("method", "POST")
        if not isinstance(method, str) or not method.isalpha() or not 3 <= len(method) <= 7:
            raise ControlError(f"method must be an HTTP method, got {method!r}")
        return method.upper()

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
        enqueue = _flag(payload, "enqueue")
        if enqueue and not self.wire.notifier.can_enqueue:
            raise _no_broker('"enqueue": true')
        return enqueue

    def _deliver(self, method: str, body: str, headers: dict[str, str], payload: dict[str, Any]) -> dict[str, Any]:
        deliver_to = check_url(payload.get("deliver_to"), "deliver_to")
        enqueue = self._enqueue_flag(payload)
        envelope = webhook_envelope(method, body, headers)
        delivered, error = (None, None)
        if deliver_to is not None:
            delivered, error = self.wire.notifier.send(method, deliver_to, body, headers)
        enqueued, enqueue_error = self.wire.notifier.enqueue(envelope) if enqueue else (False, None)
        return {
            "envelope": envelope,
            "delivered": delivered,
            "delivery_error": error,
            "enqueued": enqueued,
            "enqueue_error": enqueue_error,
        }
