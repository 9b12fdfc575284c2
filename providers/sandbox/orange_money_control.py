"""The sandbox's Orange Money control API: script orders, force statuses, build notifications, tokens.

Routes are documented in ``providers/sandbox/orange_money.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from providers.sandbox.control import CREATE_KEYS, NOTIFICATION_KEYS, ProviderControl, check_method
from providers.sandbox.orange_money import (
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
    check_notif_url,
    check_reference,
    envelope_url,
    new_notif_token,
    new_pay_token,
    now,
    txnid,
    webhook_envelope,
    whole_major,
)
from providers.sandbox.state import (
    ControlError,
    check_currency,
    check_url,
    get_bool,
    get_int,
    get_str,
    parse_faults,
)
from providers.sandbox.web import Request, Response, Router, json_response


def _token(payload: dict[str, Any], key: str, default: str) -> str:
    value = get_str(payload, key)
    if value is None:
        return default
    if not 8 <= len(value) <= 200 or not value.isascii() or not value.isprintable() or " " in value:
        raise ControlError(f"{key} must be 8-200 printable ASCII characters without spaces")
    return value


class OrangeMoneyControl(ProviderControl[OrangeMoneySandbox, OrangeTransaction]):
    """Control routes over one ``OrangeMoneySandbox`` (its state, config and notifier)."""

    transaction_type = OrangeTransaction
    statuses = STATUSES
    fates = FATES
    create_keys = CREATE_KEYS | {"reference", "pay_token", "notif_token", "lang", "notif_url", "echo_amount"}
    notification_keys = NOTIFICATION_KEYS | {"path"}

    def register(self, router: Router) -> None:
        """Add the ``/_sandbox/orange_money/...`` routes."""
        super().register(router)
        control = f"/_sandbox/{NAME}"
        router.add("GET", f"{control}/tokens", self.tokens)
        router.add("POST", f"{control}/tokens/expire", self.expire_tokens)
        router.add("GET", f"{control}/pay/{{token}}", self.payment_page)

    # ------------------------------------------------------------------ transactions

    def _create(self, payload: dict[str, Any]) -> Response:
        """``POST /_sandbox/orange_money/transactions``: script an order (201)."""
        fate, amount = self._fate_and_amount(payload)
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
            notif_url=check_notif_url(payload["notif_url"]) if payload.get("notif_url") is not None else "",
            echo_amount=get_bool(payload, "echo_amount"),
        )
        txn.faults.extend(parse_faults(payload.get("faults")))
        if txn.status in (SUCCESS, FAILED):
            txn.operator_id = txnid(created)
        if txn.status == SUCCESS:
            txn.paid_at = created
        return self._created(txn)

    def view(self, txn: OrangeTransaction) -> dict[str, Any]:
        """The order as the control API shows it (``pay_token``, ``notif_token``, ``payment_url``...)."""
        return self.wire.to_json(txn)

    def _status_change(self, payload: dict[str, Any]) -> Callable[[OrangeTransaction, str], None]:
        return self.wire.transition

    # ------------------------------------------------------------------ notifications

    def _notification(self, payload: dict[str, Any], transaction_id: str) -> Response:
        """``POST .../transactions/{reference}/notification``: an authentic (or forged) notification.

        Body: ``forged`` (a wrong notif_token), ``tamper`` (fields changed, or removed
        with null, after building), ``path`` (the envelope's path and ?query; default: the
        order's ``notif_url``), ``deliver_to`` (also
        POST it there), ``enqueue`` (also publish it on the broker), ``method``.
        """
        forged, tamper = get_bool(payload, "forged"), payload.get("tamper") or {}
        if not isinstance(tamper, dict) or not all(v is None or isinstance(v, str) for v in tamper.values()):
            raise ControlError("tamper must be an object of field name -> string value (or null to remove it)")
        method = check_method(payload)
        path = get_str(payload, "path")
        if path is not None and (not path.startswith("/") or any(c in path for c in "# \r\n")):
            raise ControlError(f"path must be an absolute URL path (a ?query allowed), got {path!r}")
        deliver_to = check_url(payload.get("deliver_to"), "deliver_to")
        enqueue = self._enqueue_flag(payload)
        txn = self.find(transaction_id)
        with self.wire.state.lock:
            fields = self.wire.notification_fields(txn)
            order_id, notif_url = txn.transaction_id, txn.notif_url
        if forged:
            fields["notif_token"] = new_notif_token()
        for name, value in tamper.items():
            if value is None:
                fields.pop(name, None)
            else:
                fields[name] = value
        body = self.wire.notification_body(txn, fields)
        headers = {"Content-Type": "application/json"}
        url_path, query = envelope_url(path if path is not None else notif_url, order_id)
        envelope = webhook_envelope(method, url_path, body, headers, query)
        result = self._deliver(method, body, headers, envelope, deliver_to=deliver_to, enqueue=enqueue)
        record = {"kind": "manual", "status": fields.get("status"), "forged": forged}
        return self._recorded(txn, record, tamper=tamper, url=deliver_to, result=result)

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
