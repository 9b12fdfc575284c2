"""The sandbox's Wave control API: script payments, force statuses, build signed events.

Routes and fields are documented in ``providers/sandbox/wave.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from providers.sandbox.control import CREATE_KEYS, NOTIFICATION_KEYS, ProviderControl, check_method
from providers.sandbox.state import (
    ControlError,
    check_currency,
    check_keys,
    check_transaction_id,
    get_bool,
    get_int,
    get_str,
    parse_faults,
)
from providers.sandbox.wave import (
    CANCELLED,
    CURRENCIES,
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

_WAVE_TXN_ID = re.compile(r"[A-Za-z0-9_]{1,20}")
_EVENT_TYPE = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+){1,4}")


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


class WaveControl(ProviderControl[WaveSandbox, WaveTransaction]):
    """Control routes over one ``WaveSandbox`` (its state, config and notifier)."""

    transaction_type = WaveTransaction
    statuses = STATUSES
    create_keys = CREATE_KEYS | {
        "reference",
        "fee",
        "last_payment_error",
        "when_completed",
        "transaction_id",
        "refused_status",
        "refunded_at",
    }
    notification_keys = NOTIFICATION_KEYS | {"stale", "strategy", "rotate", "event_type"}

    def register(self, router: Router) -> None:
        """Add the ``/_sandbox/wave/...`` routes."""
        super().register(router)
        control = f"/_sandbox/{NAME}"
        router.add("GET", f"{control}/pay/{{session_id}}", self.pay_page)
        router.add("GET", f"{control}/return/{{outcome}}", self.return_page)

    # ------------------------------------------------------------------ transactions

    def _create(self, payload: dict[str, Any]) -> Response:
        """``POST /_sandbox/wave/transactions``: script a payment and its first session (201)."""
        try:
            reference = check_transaction_id(payload.get("reference"))
        except ControlError:
            raise ControlError(
                "reference (the client_reference) must be 1-100 characters of A-Z a-z 0-9 . _ : -"
            ) from None
        fate, amount = self._fate_and_amount(payload)
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

    def _status_change(self, payload: dict[str, Any]) -> Callable[[WaveTransaction, str], None]:
        return self.wire.transition

    # ------------------------------------------------------------------ notifications

    def _notification(self, payload: dict[str, Any], transaction_id: str) -> Response:
        """``POST .../transactions/{reference}/notification``: a signed (or forged, stale...) event."""
        forged, stale, rotate = get_bool(payload, "forged"), get_bool(payload, "stale"), get_bool(payload, "rotate")
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
        method = check_method(payload)
        self._enqueue_flag(payload)  # a bad flag fails before anything is recorded
        txn = self.find(transaction_id)
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
        result = self._deliver_as_asked(method, body, headers, webhook_envelope(method, body, headers), payload)
        record = {"kind": "manual", "status": txn.status, "type": event_type, "event_id": event["id"]}
        record |= {"forged": forged, "stale": stale, "rotate": rotate, "strategy": strategy}
        return self._recorded(txn, record, tamper=tamper, url=payload.get("deliver_to"), result=result)

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
