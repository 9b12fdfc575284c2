"""The sandbox's CinetPay control API: script transactions, force statuses, build notifications.

Routes (JSON in and out; bad input → 400 ``{"error": ...}``, unknown id → 404,
existing id → 409) are listed in ``providers/sandbox/__init__.py``.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Final
from urllib.parse import quote

from providers.cinetpay import build_notification
from providers.sandbox.cinetpay import (
    ACCEPTED,
    ENQUEUE,
    NAME,
    START_STATUS,
    STATUSES,
    CinetPaySandbox,
    now,
    operator_id,
    webhook_envelope,
)
from providers.sandbox.state import (
    FATES,
    ControlError,
    Transaction,
    check_currency,
    check_keys,
    check_transaction_id,
    check_url,
    get_int,
    get_str,
    parse_faults,
)
from providers.sandbox.web import Request, Response, Router, json_response

_CREATE_KEYS: Final = {
    "transaction_id",
    "amount",
    "currency",
    "fate",
    "pending_checks",
    "confirm_amount",
    "confirm_currency",
    "faults",
    "payment_method",
    "phone",
    "notify_url",
    "description",
    "metadata",
}


def _check_phone(value: str | None) -> str:
    if value is None or not re.match(r"^\+?\d{6,15}$", value):
        raise ControlError(f"phone must look like +2250701020304, got {value!r}")
    return value


def _no_broker(what: str) -> ControlError:
    return ControlError(f"{what} needs a sandbox started with a broker_url (SandboxServer(broker_url=...))")


class CinetPayControl:
    """Control routes over one ``CinetPaySandbox`` (its state, credentials and notifier)."""

    def __init__(self, wire: CinetPaySandbox) -> None:
        """Control ``wire``'s transactions."""
        self.wire = wire

    def register(self, router: Router) -> None:
        """Add the ``/_sandbox/cinetpay/...`` routes."""
        control = "/_sandbox/cinetpay"
        router.add("GET", f"{control}/transactions", self.list_transactions)
        router.add("POST", f"{control}/transactions", self.create_transaction)
        router.add("GET", f"{control}/transactions/{{id}}", self.get_transaction)
        router.add("POST", f"{control}/transactions/{{id}}/status", self.force_status)
        router.add("POST", f"{control}/transactions/{{id}}/notification", self.notification)
        router.add("POST", f"{control}/ping", self.ping)
        router.add("GET", f"{control}/checkout/{{token}}", self.checkout_page)

    def create_transaction(self, request: Request) -> Response:
        """``POST /_sandbox/cinetpay/transactions``: script a transaction (201)."""
        payload = request.json_object()
        check_keys(payload, set(_CREATE_KEYS), "transaction")
        fate = payload.get("fate", "accepted")
        if fate not in FATES:
            raise ControlError(f"fate must be one of {', '.join(FATES)}, got {fate!r}")
        amount = get_int(payload, "amount", minimum=1)
        if amount is None:
            raise ControlError("amount (integer, minor units) is required")
        confirm_currency = payload.get("confirm_currency")
        created = now()
        txn = Transaction(
            provider=NAME,
            transaction_id=check_transaction_id(payload.get("transaction_id")),
            amount=amount,
            currency=check_currency(payload.get("currency", "XOF")),
            fate=fate,
            status=START_STATUS[fate],
            created_at=created,
            payment_token=secrets.token_hex(24),
            pending_checks=get_int(payload, "pending_checks", default=1) or 0,
            confirm_amount=get_int(payload, "confirm_amount"),
            confirm_currency=None if confirm_currency is None else check_currency(confirm_currency),
            payment_method=get_str(payload, "payment_method", default="OM") or "OM",
            phone=_check_phone(get_str(payload, "phone", default="+2250701020304")),
            notify_url=self._notify_url(payload.get("notify_url")),
            description=get_str(payload, "description", default="payrecon sandbox payment") or "",
            metadata=get_str(payload, "metadata"),
        )
        txn.faults.extend(parse_faults(payload.get("faults")))
        if txn.status == ACCEPTED:
            txn.paid_at, txn.operator_id = created, operator_id(created)
        self.wire.state.add(txn)
        with self.wire.state.lock:
            return json_response(201, txn.to_json())

    def list_transactions(self, request: Request) -> Response:
        """``GET /_sandbox/cinetpay/transactions``: every transaction."""
        with self.wire.state.lock:
            return json_response(200, [t.to_json() for t in self.wire.state.transactions(NAME).values()])

    def get_transaction(self, request: Request) -> Response:
        """``GET /_sandbox/cinetpay/transactions/{id}``: state, ``check_count``, notifications."""
        txn = self.wire.state.get(NAME, request.params["id"])
        with self.wire.state.lock:
            return json_response(200, txn.to_json())

    def force_status(self, request: Request) -> Response:
        """``POST .../transactions/{id}/status`` ``{"status"}``: change now, notify, stop the script."""
        payload = request.json_object()
        check_keys(payload, {"status"}, "status change")
        status = payload.get("status")
        if status not in STATUSES:
            raise ControlError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        txn = self.wire.state.get(NAME, request.params["id"])
        with self.wire.state.lock:
            txn.scripted = False
            self.wire.transition(txn, status)
            return json_response(200, txn.to_json())

    def notification(self, request: Request) -> Response:
        """``POST .../transactions/{id}/notification``: a signed (or forged) notification.

        Body: ``forged`` (sign with a wrong key), ``tamper`` (fields changed after
        signing), ``deliver_to`` (also send it there), ``enqueue`` (also publish it on
        the broker), ``method``, ``ping``.
        """
        payload = request.json_object()
        check_keys(payload, {"forged", "tamper", "deliver_to", "enqueue", "method", "ping"}, "notification")
        if payload.get("ping"):
            return self._ping(payload)
        forged, tamper = payload.get("forged", False), payload.get("tamper") or {}
        if not isinstance(forged, bool):
            raise ControlError("forged must be true or false")
        if not isinstance(tamper, dict) or not all(isinstance(v, str) for v in tamper.values()):
            raise ControlError("tamper must be an object of field name -> string value")
        method = self._method(payload)
        self._enqueue_flag(payload)  # a bad flag fails before anything is recorded
        txn = self.wire.state.get(NAME, request.params["id"])
        with self.wire.state.lock:
            fields = self.wire.notification_fields(txn)
        key = secrets.token_hex(16) if forged else self.wire.secret_key
        body, token = build_notification(fields, key)
        if tamper:
            body, _ = build_notification({**fields, **tamper}, key)
        headers = {"Content-Type": "application/x-www-form-urlencoded", "x-token": token}
        result = self._deliver(method, body, headers, payload)
        record = {"kind": "manual", "status": fields["cpm_error_message"], "forged": forged}
        record |= {"tampered": sorted(tamper), "url": payload.get("deliver_to")}
        record |= {"delivered": result["delivered"], "error": result["delivery_error"]}
        record |= {"enqueued": result["enqueued"], "enqueue_error": result["enqueue_error"]}
        with self.wire.state.lock:
            txn.notifications.append(record)
        return json_response(200, result)

    def ping(self, request: Request) -> Response:
        """``POST /_sandbox/cinetpay/ping`` ``{"deliver_to"?, "enqueue"?}``: CinetPay's empty GET."""
        payload = request.json_object()
        check_keys(payload, {"deliver_to", "enqueue", "ping"}, "ping")
        return self._ping(payload)

    def _ping(self, payload: dict[str, Any]) -> Response:
        return json_response(200, self._deliver("GET", "", {}, payload))

    def checkout_page(self, request: Request) -> Response:
        """``GET /_sandbox/cinetpay/checkout/{token}``: the ``payment_url`` of an init, as JSON."""
        with self.wire.state.lock:
            txn = self.wire.find("", request.params["token"])
            if txn is None:
                raise ControlError("unknown payment token", status=404)
            path = f"/_sandbox/cinetpay/transactions/{quote(txn.transaction_id, safe='')}/status"
            hint = f'POST {path} {{"status": "ACCEPTED"}} (or REFUSED) to complete this payment'
            return json_response(200, {"transaction": txn.to_json(), "how_to_pay": hint})

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
        enqueue = payload.get("enqueue", False)
        if not isinstance(enqueue, bool):
            raise ControlError("enqueue must be true or false")
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
