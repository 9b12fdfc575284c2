"""The sandbox's MTN MoMo control API: script requests to pay, force statuses, build callbacks.

Routes (JSON in and out; bad input → 400 ``{"error": ...}``, unknown reference → 404,
existing reference → 409) are documented in ``providers/sandbox/mtn_momo.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from providers.mtn_momo import SUCCESSFUL, is_uuid4
from providers.sandbox.control import CREATE_KEYS, ProviderControl, check_method
from providers.sandbox.mtn_momo import (
    DEFAULT_PAYER,
    DEFAULT_REASON,
    START_STATUS,
    STATUSES,
    MomoTransaction,
    MtnMomoSandbox,
    check_reason,
    financial_transaction_id,
    now,
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

_MSISDN = re.compile(r"^\d{6,15}$")


def check_reference(value: Any) -> str:
    """An X-Reference-Id: a UUID v4."""
    if not isinstance(value, str) or not is_uuid4(value):
        raise ControlError(f"reference must be a UUID v4 (MoMo's X-Reference-Id), got {value!r}")
    return value


class MtnMomoControl(ProviderControl[MtnMomoSandbox, MomoTransaction]):
    """Control routes over one ``MtnMomoSandbox`` (its state, config and notifier)."""

    transaction_type = MomoTransaction
    statuses = STATUSES
    status_keys = frozenset({"status", "reason"})
    create_keys = CREATE_KEYS | {
        "reference",
        "payer",
        "external_id",
        "payer_message",
        "payee_note",
        "reason",
        "reason_format",
        "not_found_checks",
        "callbacks",
    }

    def register(self, router: Router) -> None:
        """Add the ``/_sandbox/mtn_momo/...`` routes."""
        super().register(router)
        control = f"/_sandbox/{self.name}"
        router.add("GET", f"{control}/tokens", self.tokens)
        router.add("POST", f"{control}/tokens/expire", self.expire_tokens)

    # ------------------------------------------------------------------ transactions

    def _create(self, payload: dict[str, Any]) -> Response:
        """``POST /_sandbox/mtn_momo/transactions``: script a request to pay (201)."""
        fate, amount = self._fate_and_amount(payload)
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
            provider=self.name,
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
            callbacks=get_bool(payload, "callbacks", default=True),
            created_clock=self.wire.config.clock(),
        )
        txn.faults.extend(parse_faults(payload.get("faults")))
        if txn.status == SUCCESSFUL:
            txn.paid_at, txn.financial_transaction_id = created, financial_transaction_id()
        return self._created(txn)

    def _status_change(self, payload: dict[str, Any]) -> Callable[[MomoTransaction, str], None]:
        """``{"status", "reason"?}``: the reason reported once FAILED may change too."""
        reason = None if payload.get("reason") is None else check_reason(payload["reason"])
        return lambda txn, status: self.wire.transition(txn, status, reason)

    def _notification(self, payload: dict[str, Any], transaction_id: str) -> Response:
        """``POST .../transactions/{reference}/notification``: a MoMo callback (or a forged one).

        Body: ``forged`` (a third party's callback), ``tamper`` (body fields changed),
        ``deliver_to`` (also send it there), ``enqueue`` (also publish it on the broker),
        ``method`` (default PUT).
        """
        forged = get_bool(payload, "forged")
        tamper = payload.get("tamper") or {}
        if not isinstance(tamper, dict):
            raise ControlError("tamper must be an object of body field -> JSON value")
        method = check_method(payload, "PUT")
        deliver_to = check_url(payload.get("deliver_to"), "deliver_to")
        enqueue = self._enqueue_flag(payload)
        txn = self.find(transaction_id)
        with self.wire.state.lock:
            status = txn.status
            envelope, body, headers = self.wire.callback(
                txn, method=method, url=deliver_to, forged=forged, tamper=tamper
            )
        result = self._deliver(method, body, headers, envelope, deliver_to=deliver_to, enqueue=enqueue)
        record = {"kind": "manual", "status": status, "method": method, "forged": forged}
        return self._recorded(txn, record, tamper=tamper, url=deliver_to, result=result)

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
