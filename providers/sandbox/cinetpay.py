"""CinetPay checkout API v2, sandboxed: the real wire format, an in-memory back office.

Its wire API (what a merchant's code calls) and control API (how a test scripts a transaction) are
documented in docs/sandbox-api.md; keep that page true to this module.
"""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final

from providers.cinetpay import CINETPAY_DATETIME, build_notification
from providers.sandbox import wire
from providers.sandbox.state import ControlError, SandboxState, Transaction, check_transaction_id, check_url
from providers.sandbox.web import Notifier, Request, Response, Router, json_response
from providers.sandbox.wire import WireSandbox, advance_fate, slowed, take_fault
from schemas.currency import AmountError, to_major, to_minor

NAME: Final = "cinetpay"
ACCEPTED: Final = "ACCEPTED"
REFUSED: Final = "REFUSED"
WAITING: Final = "WAITING_FOR_CUSTOMER"
STATUSES: Final = (ACCEPTED, REFUSED, WAITING)
CURRENCIES: Final = ("XOF", "XAF", "CDF", "GNF", "USD")
NOTIFY_PATH: Final = "/notify/cinetpay"

#: The check answer (code, message) for each status, from the documentation's examples.
ANSWERS: Final = {
    ACCEPTED: ("00", "SUCCES"),
    REFUSED: ("627", "TRANSACTION_CANCEL"),
    WAITING: ("662", "WAITING_CUSTOMER_PAYMENT"),
}
START_STATUS: Final = {
    "accepted": ACCEPTED,
    "refused": REFUSED,
    "waiting": WAITING,
    "waiting_then_accepted": WAITING,
    "waiting_then_refused": WAITING,
}
_FINAL_STATUS: Final = {"waiting_then_accepted": ACCEPTED, "waiting_then_refused": REFUSED}
_INIT_REQUIRED: Final = (
    "apikey",
    "site_id",
    "transaction_id",
    "amount",
    "currency",
    "description",
    "notify_url",
    "return_url",
    "channels",
)


def now() -> datetime:
    """The current UTC time, to the second, as CinetPay's dates carry no fraction."""
    return datetime.now(UTC).replace(microsecond=0)


def _api_response_id() -> str:
    return f"{time.time():.4f}"


def _answer(code: str, message: str, description: str | None = None, **extra: Any) -> Response:
    payload: dict[str, Any] = {"code": code, "message": message}
    if description is not None:
        payload["description"] = description
    payload.update(extra)
    payload["api_response_id"] = _api_response_id()
    return json_response(200, payload)


def _http_error_body(status: int) -> dict[str, Any]:
    message = "TOO_MANY_REQUEST" if status == 429 else "SANDBOX_FAULT"
    return {"code": str(status), "message": message, "description": f"injected HTTP {status}"}


def major(minor: int, currency: str) -> str:
    """Minor units → CinetPay's major-unit string (``"100"``, ``"12.50"``)."""
    return format(to_major(minor, currency), "f")


def _wire_date(value: datetime | None) -> str:
    # CinetPay writes a blank string, not null, when there is no date.
    return value.strftime(CINETPAY_DATETIME) if value else " "


def webhook_envelope(method: str, body: str, headers: dict[str, str]) -> dict[str, Any]:
    """The ``payrecon.webhook/1`` envelope payrecon's receiver would build for this notification."""
    return wire.webhook_envelope(NAME, method, NOTIFY_PATH, body, headers)


def operator_id(at: datetime) -> str:
    """An operator reference shaped like the documentation's ``MP220915.2257.A76307``."""
    suffix = "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(6))
    return f"MP{at:%y%m%d.%H%M}.{suffix}"


def split_phone(phone: str) -> tuple[str, str]:
    """``"+2250701020304"`` → ``("225", "0701020304")``: CinetPay's countries all have 3-digit prefixes."""
    digits = phone.lstrip("+")
    return (digits[:3], digits[3:]) if phone.startswith("+") else ("", digits)


class CinetPaySandbox(WireSandbox):
    """CinetPay's wire API and the sandbox's CinetPay control API over one state."""

    name = NAME

    def __init__(
        self,
        state: SandboxState,
        notifier: Notifier,
        *,
        api_key: str,
        site_id: str,
        secret_key: str,
        base_url: Callable[[], str],
    ) -> None:
        """Serve CinetPay for one merchant account (``api_key``, ``site_id``, ``secret_key``)."""
        super().__init__(state, notifier, base_url=base_url)
        self.api_key = api_key
        self.site_id = site_id
        self.secret_key = secret_key

    def register(self, router: Router) -> None:
        """Add the wire routes and the ``/_sandbox/cinetpay/...`` control routes."""
        router.add("POST", "/v2/payment", self.wire_init, wire=True)
        router.add("POST", "/v2/payment/check", self.wire_check, wire=True)
        # Late import: the control module builds on this one.
        from providers.sandbox.cinetpay_control import CinetPayControl

        CinetPayControl(self).register(router)

    # ------------------------------------------------------------------ wire API

    def _credentials_error(self, body: dict[str, Any] | None, required: tuple[str, ...]) -> Response | None:
        if body is None:
            return _answer("608", "MINIMUM_REQUIRED_FIELDS", "body must be JSON or form-encoded")
        missing = [key for key in required if body.get(key) in (None, "")]
        if missing:
            return _answer("608", "MINIMUM_REQUIRED_FIELDS", f"missing: {', '.join(missing)}")
        if str(body["apikey"]) != self.api_key:
            return _answer("609", "AUTH_NOT_FOUND", "apikey is not valid")
        if str(body["site_id"]) != self.site_id:
            return _answer("613", "ERROR_SITE_ID_NOTVALID", "site_id is not valid")
        return None

    def wire_init(self, request: Request) -> Response:
        """``POST /v2/payment``: create a waiting transaction, answer 201 CREATED."""
        body = request.form_or_json()
        error = self._credentials_error(body, _INIT_REQUIRED)
        if error is not None or body is None:
            return error or _answer("608", "MINIMUM_REQUIRED_FIELDS")
        amount, currency = body["amount"], str(body["currency"])
        if isinstance(amount, str) and amount.isdigit():
            amount = int(amount)
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0 or amount % 5:
            return _answer("611", "ERROR_AMOUNT_TYPE", "amount must be a positive integer multiple of 5")
        if currency not in CURRENCIES:
            return _answer("612", "ERROR_CURRENCY_NOTVALID", f"currency must be one of {', '.join(CURRENCIES)}")
        description = str(body["description"])
        if any(char in description for char in "#/$_&"):
            return _answer("608", "MINIMUM_REQUIRED_FIELDS", "description must not contain # / $ _ &")
        try:
            txn_id = check_transaction_id(str(body["transaction_id"]))
            notify_url = check_url(body["notify_url"], "notify_url")
            minor = to_minor(amount, currency)
        except (ControlError, AmountError) as exc:
            return _answer("608", "MINIMUM_REQUIRED_FIELDS", str(exc))
        txn = Transaction(
            provider=NAME,
            transaction_id=txn_id,
            amount=minor,
            currency=currency,
            fate="waiting",
            status=WAITING,
            created_at=now(),
            payment_token=secrets.token_hex(24),
            notify_url=notify_url,
            description=description,
            metadata=str(body["metadata"]) if body.get("metadata") is not None else None,
            phone=str(body.get("customer_phone_number") or "+2250701020304"),
        )
        try:
            self.state.add(txn)
        except ControlError:
            return _answer("620", "ERROR_DOUBLE_PAYEMNT", "transaction_id already used")
        url = f"{self._base_url()}/_sandbox/cinetpay/checkout/{txn.payment_token}"
        return _answer(
            "201",
            "CREATED",
            "Transaction created with success",
            data={"payment_token": txn.payment_token, "payment_url": url},
        )

    def wire_check(self, request: Request) -> Response:
        """``POST /v2/payment/check``: answer from the transaction's status and fate."""
        body = request.form_or_json()
        # The FR docs allow the init's payment_token ("token") instead of transaction_id.
        if body is not None and not (body.get("transaction_id") or body.get("token")):
            return _answer("608", "MINIMUM_REQUIRED_FIELDS", "missing: transaction_id (or token)")
        error = self._credentials_error(body, ("apikey", "site_id"))
        if error is not None or body is None:
            return error or _answer("608", "MINIMUM_REQUIRED_FIELDS")
        with self.state.lock:
            txn = self.find(str(body.get("transaction_id") or ""), str(body.get("token") or ""))
            if txn is None:
                return _answer("627", "TRANSACTION_CANCEL", "transaction not found", data=None)
            fault, forced = take_fault(txn, _http_error_body)
            if forced is not None:
                return forced
            advance_fate(txn, waiting=(WAITING,), final=_FINAL_STATUS, transition=partial(self.transition, txn))
            response = self._check_answer(txn)
        return slowed(response, fault)

    def find(self, transaction_id: str, token: str) -> Transaction | None:
        """A transaction by id, else by ``payment_token`` (caller holds the lock)."""
        store = self.state.transactions(NAME)
        if transaction_id and transaction_id in store:
            return store[transaction_id]
        if token:
            return next((t for t in store.values() if t.payment_token == token), None)
        return None

    def _check_answer(self, txn: Transaction) -> Response:
        code, message = ANSWERS[txn.status]
        accepted = txn.status == ACCEPTED
        fund_date = (txn.paid_at + timedelta(days=2)).replace(hour=0, minute=0, second=0) if txn.paid_at else None
        data = {
            "amount": major(txn.reported_amount, txn.reported_currency),
            "currency": txn.reported_currency,
            "status": txn.status,
            "payment_method": txn.payment_method,
            "description": txn.description,
            "metadata": txn.metadata,
            "operator_id": txn.operator_id if accepted else None,
            "payment_date": _wire_date(txn.paid_at if accepted else None),
            "fund_availability_date": _wire_date(fund_date if accepted else None),
        }
        return _answer(code, message, data=data)

    # ------------------------------------------------------------------ state changes

    def transition(self, txn: Transaction, status: str) -> None:
        """Change status (caller holds the lock) and notify ``notify_url`` if it changed.

        ``notify_url`` ``"enqueue"`` publishes the notification on the broker instead.
        The record in ``txn.notifications`` gets ``delivered`` (HTTP status or None), or
        ``enqueued`` (bool), and ``error`` once done.
        """
        if txn.status == status:
            return
        txn.status = status
        if status == ACCEPTED:
            txn.paid_at = now()
            txn.operator_id = operator_id(txn.paid_at)
        if not txn.notify_url:
            return
        body, token = build_notification(self.notification_fields(txn), self.secret_key)
        headers = {"Content-Type": "application/x-www-form-urlencoded", "x-token": token}
        record: dict[str, Any] = {"kind": "auto", "status": status, "url": txn.notify_url}
        envelope = webhook_envelope("POST", body, headers)
        self.notify_later(txn, record, method="POST", url=txn.notify_url, body=body, headers=headers, envelope=envelope)

    def notification_fields(self, txn: Transaction) -> dict[str, str]:
        """The ``cpm_*`` form fields CinetPay would post about ``txn`` now."""
        prefix, number = split_phone(txn.phone)
        return {
            "cpm_site_id": self.site_id,
            "cpm_trans_id": txn.transaction_id,
            "cpm_trans_date": txn.created_at.strftime(CINETPAY_DATETIME),
            "cpm_amount": major(txn.reported_amount, txn.reported_currency),
            "cpm_currency": txn.reported_currency,
            "signature": txn.payment_token,  # CinetPay's legacy signature, not the HMAC
            "payment_method": txn.payment_method,
            "cel_phone_num": number,
            "cpm_phone_prefixe": prefix,
            "cpm_language": "fr",
            "cpm_version": "V4",
            "cpm_payment_config": "SINGLE",
            "cpm_page_action": "PAYMENT",
            "cpm_custom": txn.metadata or "",
            "cpm_designation": txn.description,
            "cpm_error_message": ANSWERS[txn.status][1],
        }
