"""The sandbox's CinetPay control API: script transactions, force statuses, build notifications.

Routes (JSON in and out; bad input → 400 ``{"error": ...}``, unknown id → 404,
existing id → 409) are listed in docs/sandbox-api.md.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from providers.cinetpay import build_notification
from providers.sandbox.cinetpay import (
    ACCEPTED,
    START_STATUS,
    STATUSES,
    CinetPaySandbox,
    now,
    operator_id,
    webhook_envelope,
)
from providers.sandbox.control import CREATE_KEYS, NOTIFICATION_KEYS, ProviderControl, check_method
from providers.sandbox.state import (
    ControlError,
    Transaction,
    check_currency,
    check_keys,
    check_transaction_id,
    get_bool,
    get_int,
    get_str,
    parse_faults,
)
from providers.sandbox.web import Request, Response, Router, json_response


def _check_phone(value: str | None) -> str:
    if value is None or not re.match(r"^\+?\d{6,15}$", value):
        raise ControlError(f"phone must look like +2250701020304, got {value!r}")
    return value


class CinetPayControl(ProviderControl[CinetPaySandbox, Transaction]):
    """Control routes over one ``CinetPaySandbox`` (its state, credentials and notifier)."""

    transaction_type = Transaction
    statuses = STATUSES
    create_keys = CREATE_KEYS | {"transaction_id", "payment_method", "phone", "description", "metadata"}
    notification_keys = NOTIFICATION_KEYS | {"ping"}

    def register(self, router: Router) -> None:
        """Add the ``/_sandbox/cinetpay/...`` routes."""
        super().register(router)
        control = f"/_sandbox/{self.name}"
        router.add("POST", f"{control}/ping", self.ping)
        router.add("GET", f"{control}/checkout/{{token}}", self.checkout_page)

    def _create(self, payload: dict[str, Any]) -> Response:
        """``POST /_sandbox/cinetpay/transactions``: script a transaction (201)."""
        fate, amount = self._fate_and_amount(payload)
        confirm_currency = payload.get("confirm_currency")
        created = now()
        txn = Transaction(
            provider=self.name,
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
        return self._created(txn)

    def _status_change(self, payload: dict[str, Any]) -> Callable[[Transaction, str], None]:
        return self.wire.transition

    def _notification(self, payload: dict[str, Any], transaction_id: str) -> Response:
        """``POST .../transactions/{id}/notification``: a signed (or forged) notification.

        Body: ``forged`` (sign with a wrong key), ``tamper`` (fields changed after
        signing), ``deliver_to`` (also send it there), ``enqueue`` (also publish it on
        the broker), ``method``, ``ping``.
        """
        if payload.get("ping"):
            return self._ping(payload)
        forged, tamper = get_bool(payload, "forged"), payload.get("tamper") or {}
        if not isinstance(tamper, dict) or not all(isinstance(v, str) for v in tamper.values()):
            raise ControlError("tamper must be an object of field name -> string value")
        method = check_method(payload)
        self._enqueue_flag(payload)  # a bad flag fails before anything is recorded
        txn = self.find(transaction_id)
        with self.wire.state.lock:
            fields = self.wire.notification_fields(txn)
        key = secrets.token_hex(16) if forged else self.wire.secret_key
        body, token = build_notification(fields, key)
        if tamper:
            body, _ = build_notification({**fields, **tamper}, key)
        headers = {"Content-Type": "application/x-www-form-urlencoded", "x-token": token}
        result = self._deliver_as_asked(method, body, headers, webhook_envelope(method, body, headers), payload)
        record = {"kind": "manual", "status": fields["cpm_error_message"], "forged": forged}
        return self._recorded(txn, record, tamper=tamper, url=payload.get("deliver_to"), result=result)

    def ping(self, request: Request) -> Response:
        """``POST /_sandbox/cinetpay/ping`` ``{"deliver_to"?, "enqueue"?}``: CinetPay's empty GET."""
        payload = request.json_object()
        check_keys(payload, {"deliver_to", "enqueue", "ping"}, "ping")
        return self._ping(payload)

    def _ping(self, payload: dict[str, Any]) -> Response:
        return json_response(200, self._deliver_as_asked("GET", "", {}, webhook_envelope("GET", "", {}), payload))

    def checkout_page(self, request: Request) -> Response:
        """``GET /_sandbox/cinetpay/checkout/{token}``: the ``payment_url`` of an init, as JSON."""
        with self.wire.state.lock:
            txn = self.wire.find("", request.params["token"])
            if txn is None:
                raise ControlError("unknown payment token", status=404)
            path = f"/_sandbox/cinetpay/transactions/{quote(txn.transaction_id, safe='')}/status"
            hint = f'POST {path} {{"status": "ACCEPTED"}} (or REFUSED) to complete this payment'
            return json_response(200, {"transaction": txn.to_json(), "how_to_pay": hint})
