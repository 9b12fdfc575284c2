"""The sandbox's Orange Money control API: script orders, force statuses, build notifications, tokens.

Routes are documented in ``providers/sandbox/orange_money.py``.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import quote

from providers.sandbox.orange_money import (
    ENQUEUE,
    FAILED,
    FATES,
    LANGS,
    NAME,
    START_STATUS,
    STATUSES,
    SUCCESS,
    OrangeMoneySandbox,
    OrangeTransaction,
    booked_currency,
    check_reference,
    new_notif_token,
    new_pay_token,
    notify_path,
    now,
    txnid,
    webhook_envelope,
    whole_major,
)
from providers.sandbox.state import ControlError, check_currency, check_keys, check_url, get_int, get_str, parse_faults
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
    "pay_token",
    "notif_token",
    "lang",
}
_NOTIFICATION_KEYS: Final = {"forged", "tamper", "path", "deliver_to", "enqueue", "method"}


def _no_broker(what: str) -> ControlError:
    return ControlError(f"{what} needs a sandbox started with a broker_url (SandboxServer(broker_url=...))")


def _token(payload: dict[str, Any], key: str, default: str) -> str:
    value = get_str(payload, key)
    if value is None:
        return default
    if not 8 <= len(value) <= 200 or not value.isascii() or not value.isprintable() or " " in value:
        raise ControlError(f"{key} must be 8-200 printable ASCII characters without spaces")
    return value


class OrangeMoneyControl:
    """Control routes over one ``OrangeMoneySandbox`` (its state, config and notifier)."""

    def __init__(self, wire: OrangeMoneySandbox) -> None:
        """Control ``wire``'s orders."""
        self.wire = wire

    def register(self, router: Router) -> None:
        """Add the ``/_sandbox/orange_money/...`` routes."""
        control = f"/_sandbox/{NAME}"
        router.add("GET", f"{control}/transactions", self.list_transactions)
        router.add("POST", f"{control}/transactions", self.create_transaction)
        router.add("GET", f"{control}/transactions/{{id}}", self.get_transaction)
        router.add("POST", f"{control}/transactions/{{id}}/status", self.force_status)
        router.add("POST", f"{control}/transactions/{{id}}/notification", self.notification)
        router.add("GET", f"{control}/tokens", self.tokens)
        router.add("POST", f"{control}/tokens/expire", self.expire_tokens)
        router.add("GET", f"{control}/pay/{{token}}", self.payment_page)

    # ------------------------------------------------------------------ transactions

    def create_transaction(self, request: Request) -> Response:
        """``POST /_sandbox/orange_money/transactions``: script an order (201)."""
        payload = request.json_object()
        check_keys(payload, set(_CREATE_KEYS), "transaction")
        fate = payload.get("fate", "accepted")
        if fate not in FATES:
            raise ControlError(f"fate must be one of {', '.join(FATES)}, got {fate!r}")
        amount = get_int(payload, "amount", minimum=1)
        if amount is None:
            raise ControlError("amount (integer, minor units) is required")
        currency, wire_currency = booked_currency(payload.get("currency", "XOF"))
        whole_major(amount, currency)
        confirm_amount = get_int(payload, "confirm_amount")
        confirm_currency = payload.get("confirm_currency")
        if confirm_currency is not None:
            confirm_currency = check_currency(confirm_currency, "confirm_currency")
        if confirm_amount is not None:
            whole_major(confirm_amount, confirm_currency or currency, "confirm_amount")
        lang = payload.get("lang", "fr")
        if lang not in LANGS:
            raise ControlError(f"lang must be one of {', '.join(LANGS)}, got {lang!r}")
        created = now()
        txn = OrangeTransaction(
            provider=NAME,
            transaction_id=check_reference(payload.get("reference")),
            amount=amount,
            currency=currency,
            fate=fate,
            status=START_STATUS[fate],
            created_at=created,
            payment_token=_token(payload, "pay_token", new_pay_token()),
            pending_checks=get_int(payload, "pending_checks", default=1) or 0,
            confirm_amount=confirm_amount,
            confirm_currency=confirm_currency,
            notify_url=self._notify_url(payload.get("notify_url")),
            notif_token=_token(payload, "notif_token", new_notif_token()),
            wire_currency=wire_currency,
            lang=lang,
        )
        txn.faults.extend(parse_faults(payload.get("faults")))
        if txn.status in (SUCCESS, FAILED):
            txn.operator_id = txnid(created)
        if txn.status == SUCCESS:
            txn.paid_at = created
        self.wire.state.add(txn)
        with self.wire.state.lock:
            return json_response(201, self.wire.to_json(txn))

    def list_transactions(self, request: Request) -> Response:
        """``GET /_sandbox/orange_money/transactions``: every order."""
        with self.wire.state.lock:
            orders = [t for t in self.wire.state.transactions(NAME).values() if isinstance(t, OrangeTransaction)]
            return json_response(200, [self.wire.to_json(t) for t in orders])

    def get_transaction(self, request: Request) -> Response:
        """``GET /_sandbox/orange_money/transactions/{reference}``: state, ``check_count``, notifications."""
        txn = self.wire.get(request.params["id"])
        with self.wire.state.lock:
            return json_response(200, self.wire.to_json(txn))

    def force_status(self, request: Request) -> Response:
        """``POST .../transactions/{reference}/status`` ``{"status"}``: change now, notify, stop the script."""
        payload = request.json_object()
        check_keys(payload, {"status"}, "status change")
        status = payload.get("status")
        if status not in STATUSES:
            raise ControlError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        txn = self.wire.get(request.params["id"])
        with self.wire.state.lock:
            txn.scripted = False
            self.wire.transition(txn, status)
            return json_response(200, self.wire.to_json(txn))

    # ------------------------------------------------------------------ notifications

    def notification(self, request: Request) -> Response:
        """``POST .../transactions/{reference}/notification``: an authentic (or forged) notification.

        Body: ``forged`` (a wrong notif_token), ``tamper`` (fields changed, or removed
        with null, after building), ``path`` (the envelope's path), ``deliver_to`` (also
        POST it there), ``enqueue`` (also publish it on the broker), ``method``.
        """
        payload = request.json_object()
        check_keys(payload, set(_NOTIFICATION_KEYS), "notification")
        forged, tamper = payload.get("forged", False), payload.get("tamper") or {}
        if not isinstance(forged, bool):
            raise ControlError("forged must be true or false")
        if not isinstance(tamper, dict) or not all(v is None or isinstance(v, str) for v in tamper.values()):
            raise ControlError("tamper must be an object of field name -> string value (or null to remove it)")
        method = self._method(payload)
        path = get_str(payload, "path")
        if path is not None and (not path.startswith("/") or any(c in path for c in "?# \r\n")):
            raise ControlError(f"path must be an absolute URL path without query, got {path!r}")
        deliver_to = check_url(payload.get("deliver_to"), "deliver_to")
        enqueue = self._enqueue_flag(payload)
        txn = self.wire.get(request.params["id"])
        with self.wire.state.lock:
            fields = self.wire.notification_fields(txn)
            order_id = txn.transaction_id
        if forged:
            fields["notif_token"] = new_notif_token()
        for name, value in tamper.items():
            if value is None:
                fields.pop(name, None)
            else:
                fields[name] = value
        body = self.wire.notification_body(txn, fields)
        headers = {"Content-Type": "application/json"}
        envelope = webhook_envelope(method, path or notify_path(order_id), body, headers)
        delivered, error = (None, None)
        if deliver_to is not None:
            delivered, error = self.wire.notifier.send(method, deliver_to, body, headers)
        enqueued, enqueue_error = self.wire.notifier.enqueue(envelope) if enqueue else (False, None)
        record = {"kind": "manual", "status": fields.get("status"), "forged": forged, "tampered": sorted(tamper)}
        record |= {"url": deliver_to, "delivered": delivered, "error": error}
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

    # ------------------------------------------------------------------ tokens, payment page

    def tokens(self, request: Request) -> Response:
        """``GET /_sandbox/orange_money/tokens``: ``{"issued", "active", "token_ttl"}``."""
        return json_response(200, self.wire.token_stats())

    def expire_tokens(self, request: Request) -> Response:
        """``POST /_sandbox/orange_money/tokens/expire``: every token is expired from now on."""
        request.json_object()  # any JSON object (or nothing) is fine; not JSON is a 400
        return json_response(200, {"expired": self.wire.expire_tokens()})

    def payment_page(self, request: Request) -> Response:
        """``GET /_sandbox/orange_money/pay/{pay_token}``: the order behind an init's ``payment_url``."""
        with self.wire.state.lock:
            txn = next(
                (
                    t
                    for t in self.wire.state.transactions(NAME).values()
                    if isinstance(t, OrangeTransaction) and t.payment_token == request.params["token"]
                ),
                None,
            )
            if txn is None:
                raise ControlError("unknown pay_token", status=404)
            path = f"/_sandbox/{NAME}/transactions/{quote(txn.transaction_id, safe='')}/status"
            hint = f'POST {path} {{"status": "SUCCESS"}} (or FAILED, EXPIRED) to complete this payment'
            return json_response(200, {"transaction": self.wire.to_json(txn), "how_to_pay": hint})

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
        enqueue = payload.get("enqueue", False)
        if not isinstance(enqueue, bool):
            raise ControlError("enqueue must be true or false")
        if enqueue and not self.wire.notifier.can_enqueue:
            raise _no_broker('"enqueue": true')
        return enqueue
