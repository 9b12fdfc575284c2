"""CinetPay checkout API v2: notification parsing, x-token authentication, status check.

Facts used here (from CinetPay's API documentation; docs/providers.md sums up what payrecon relies on):

* notifications are form-encoded POSTs of the ``cpm_*`` fields plus an ``x-token``
  header, HMAC-SHA256 (key = the site's *Secret Key*) over the 16 fields in
  :data:`CPM_FIELDS` order; CinetPay also pings the URL with an empty GET;
* a notification only says "something changed": the truth comes from
  ``POST /v2/payment/check``, which answers ``code`` + ``message`` + ``data``;
* amounts on the wire are major-unit strings (``"100"``); payrecon keeps int minor units.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final
from urllib.parse import parse_qs, urlencode

import requests
from tenacity.wait import wait_base

from providers.base import (
    Delivery,
    DeliveryKind,
    ForgedDelivery,
    MalformedDelivery,
    Outcome,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderNotFound,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderTransientError,
    RegistrationView,
    VerifiedStatus,
    bounded_dedupe_key,
    bounded_minor,
    checked_reference,
    claim_text,
    digest_key,
)
from providers.http import HttpClient, json_body, json_object, retry_policy
from schemas.currency import MINOR_UNIT_EXPONENT, AmountError
from schemas.messages import WebhookEnvelope

PROVIDER: Final = "cinetpay"

#: The notification fields, in the order the x-token concatenates them.
CPM_FIELDS: Final[tuple[str, ...]] = (
    "cpm_site_id",
    "cpm_trans_id",
    "cpm_trans_date",
    "cpm_amount",
    "cpm_currency",
    "signature",
    "payment_method",
    "cel_phone_num",
    "cpm_phone_prefixe",
    "cpm_language",
    "cpm_version",
    "cpm_payment_config",
    "cpm_page_action",
    "cpm_custom",
    "cpm_designation",
    "cpm_error_message",
)

#: Format of ``payment_date`` in check answers and ``cpm_trans_date`` in notifications.
CINETPAY_DATETIME: Final = "%Y-%m-%d %H:%M:%S"

# A real notification has 16 fields; refuse bodies built to exhaust the parser.
_MAX_FORM_FIELDS = 64


def compute_x_token(fields: Mapping[str, str], secret_key: str) -> str:
    """Return CinetPay's x-token: lowercase hex HMAC-SHA256 over the CPM fields in order.

    A missing field counts as ``""``, as in CinetPay's PHP reference (``hash_hmac``).
    """
    data = "".join(fields.get(name, "") for name in CPM_FIELDS)
    return hmac.new(secret_key.encode("utf-8"), data.encode("utf-8"), hashlib.sha256).hexdigest()


def build_notification(fields: Mapping[str, str], secret_key: str) -> tuple[str, str]:
    """Build a signed notification: ``(form_body, x_token)``.

    The body is url-encoded in :data:`CPM_FIELDS` order, every field present (missing
    ones empty); fields outside the list are appended after them and are not signed,
    exactly like extra fields would be on CinetPay's side.
    """
    pairs = [(name, fields.get(name, "")) for name in CPM_FIELDS]
    pairs += [(name, value) for name, value in fields.items() if name not in CPM_FIELDS]
    return urlencode(pairs), compute_x_token(fields, secret_key)


def notification_key(fields: Mapping[str, str], token: str) -> str:
    """The dedupe key of a notification: exactly what its x-token covers, and the x-token.

    The 16 :data:`CPM_FIELDS` values (a missing field counts as ``""``, as in the HMAC) and the
    token as ``authenticate`` compares it (stripped, lowercased), hashed as a JSON array. Fields
    outside the signature (``&x=1``, ``cpm_result``) and the HTTP method change nothing: a captured
    notification replayed with extras is a repeat and spends no second status call. The values
    are hashed one by one, not concatenated as the HMAC does: moving characters across a field
    boundary keeps the token valid but changes the claim (another ``cpm_trans_id``), so it is
    another delivery. The token keeps a forgery (same fields, wrong token) from taking the key
    of the authentic notification before it arrives.
    """
    return bounded_dedupe_key(
        digest_key("cinetpay-notification/2", token.strip().lower(), *(fields.get(name, "") for name in CPM_FIELDS))
    )


def parse_form(body: str) -> dict[str, str]:
    """Parse a notification body into ``{field: value}``; raise ``MalformedDelivery``.

    Strict on purpose: a JSON body, a field given twice or anything that is not
    ``application/x-www-form-urlencoded`` is refused rather than guessed at. A body parsed a moment
    ago (``parse_delivery`` then ``authenticate`` read the same one) is not parsed again (bodies of up
    to ``_CACHED_BODY`` characters, the last ``1024``: at most 4 MiB).
    """
    return dict(_parsed_form(body) if len(body) <= _CACHED_BODY else _parsed_form.__wrapped__(body))


_CACHED_BODY = 4096


@lru_cache(maxsize=1024)
def _parsed_form(body: str) -> tuple[tuple[str, str], ...]:
    if body.lstrip().startswith(("{", "[")):
        raise MalformedDelivery("body is JSON; CinetPay notifications are form-encoded")
    try:
        parsed = parse_qs(
            body,
            keep_blank_values=True,
            strict_parsing=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=_MAX_FORM_FIELDS,
        )
    except ValueError as exc:  # includes UnicodeDecodeError
        raise MalformedDelivery(f"body is not form-encoded: {str(exc)[:120]}") from None
    fields: list[tuple[str, str]] = []
    for name, values in parsed.items():
        if len(values) != 1:
            raise MalformedDelivery(f"field {name[:40]!r} is given {len(values)} times")
        fields.append((name, values[0]))
    return tuple(fields)


def _required(fields: Mapping[str, str], name: str) -> str:
    value = fields.get(name, "").strip()
    if not value:
        raise MalformedDelivery(f"missing {name}")
    return value


# --------------------------------------------------------------------------- status mapping

#: What a check answer's ``code`` (or ``data.status``) means: an outcome, or an error to raise.
Rule = Outcome | type[ProviderError]

#: ``data.status`` values; when present they win over the code (see :func:`classify`).
STATUS_TABLE: Final[Mapping[str, Outcome]] = {
    "ACCEPTED": Outcome.SUCCEEDED,
    "REFUSED": Outcome.FAILED,
    "WAITING_FOR_CUSTOMER": Outcome.PENDING,
}


def _codes(*items: int | tuple[int, int]) -> list[str]:
    out: list[str] = []
    for item in items:
        low, high = item if isinstance(item, tuple) else (item, item)
        out += [str(code) for code in range(low, high + 1)]
    return out


#: The one place CinetPay codes are interpreted. "00" is absent on purpose: it only
#: means "the request worked", the answer is in ``data.status``.
CODE_TABLE: Final[Mapping[str, Rule]] = {
    **dict.fromkeys(_codes(201, 607, 623, 638, 662, 663), Outcome.PENDING),
    **dict.fromkeys(_codes(600, 602, 604, 606, 627, (630, 637), 641, 642, 664), Outcome.FAILED),
    "660": Outcome.REFUNDED,
    # Refund in process: the money was received and is still ours until it completes.
    "661": Outcome.SUCCEEDED,
    **dict.fromkeys(_codes(603, 621, 622, 624, 626, 628, 629, 804), ProviderTransientError),
    "801": ProviderRateLimited,  # QUOTA_REACHED
    **dict.fromkeys(_codes(601, 609, 613), ProviderAuthError),
    **dict.fromkeys(_codes(608, (610, 612), (614, 618)), ProviderBadRequest),
}


def classify(code: str, status: str | None) -> Rule:
    """Map a check answer's ``code`` and ``data.status`` to an outcome or error class.

    A known ``data.status`` wins over the code, except that code 660 (REFUNDED) wins
    over ACCEPTED: a refunded payment plausibly keeps its ACCEPTED status and the
    refund is the later, stronger fact. Unlisted 6xx/8xx codes are request errors;
    anything else is a code we do not know, hence a protocol error.
    """
    if status is not None and status in STATUS_TABLE and not (code == "660" and status == "ACCEPTED"):
        return STATUS_TABLE[status]
    rule = CODE_TABLE.get(code)
    if rule is not None:
        return rule
    if len(code) == 3 and code.isdigit() and code[0] in "68":
        return ProviderBadRequest
    return ProviderProtocolError


def _code_of(body: Mapping[str, Any]) -> str:
    code = body.get("code")
    if isinstance(code, int) and not isinstance(code, bool):
        return f"{code:02d}"
    return str(code).strip() if code is not None else ""


def _error_code(response: requests.Response) -> str | None:
    """Read CinetPay's ``code`` from an HTTP error body, if it is JSON."""
    body = json_body(response)
    return (_code_of(body) or None) if body is not None else None


def parse_payment_date(value: object) -> datetime | None:
    """Parse ``"YYYY-MM-DD HH:MM:SS"`` (blank → None) as an aware UTC datetime.

    CinetPay does not document a time zone. It operates from Abidjan, which is on
    GMT all year (no DST), so UTC is both the natural reading and the safe one.
    Raise ``ValueError`` on anything else.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ValueError(f"payment_date is not a string: {value!r}")
    return datetime.strptime(value.strip(), CINETPAY_DATETIME).replace(tzinfo=UTC)


def parse_check_response(reference: str, text: str, *, http_status: int = 200) -> VerifiedStatus:
    """Turn the body of a 2xx ``/v2/payment/check`` answer into a ``VerifiedStatus``.

    Raises the ``ProviderError`` the code calls for, ``ProviderNotFound`` for a 627
    without any transaction data (CinetPay knows no such transaction), and
    ``ProviderProtocolError`` for anything unreadable.
    """
    where: dict[str, Any] = {"provider": PROVIDER, "http_status": http_status}
    body = json_object(text, "check answer", **where)
    code = _code_of(body)
    message = str(body.get("message") or "") or None
    where["request_id"] = str(body["api_response_id"]) if body.get("api_response_id") else None
    data = body.get("data")
    if not code or (data is not None and not isinstance(data, dict)):
        raise ProviderProtocolError("check answer has no code or a non-object 'data'", **where)
    where["code"] = code
    status = str(data["status"]) if data and data.get("status") is not None else None

    rule = classify(code, status)
    if isinstance(rule, type):
        detail = f"{code} {message or ''}".strip()
        if body.get("description"):
            detail += f": {str(body['description'])[:150]}"
        raise rule(detail, **where)
    if code == "627" and not data:
        # A refusal comes with its transaction data (status REFUSED); a bare 627 is
        # CinetPay having nothing under this transaction_id. Undocumented: an assumption
        # shared with providers/sandbox, which answers unknown ids this way.
        raise ProviderNotFound(f"{code} {message or ''} without transaction data", **where)
    try:
        amount, currency, paid_at = _money_and_date(data or {})
    except (AmountError, ValueError) as exc:
        raise ProviderProtocolError(f"check answer: {str(exc)[:150]}", **where) from None
    return VerifiedStatus(
        reference=reference,
        outcome=rule,
        provider_status=status,
        provider_code=code,
        provider_message=message,
        amount=amount,
        currency=currency,
        provider_transaction_id=str(data["operator_id"]) if data and data.get("operator_id") else None,
        paid_at=paid_at,
        raw=text,
    )


def _money_and_date(data: Mapping[str, Any]) -> tuple[int | None, str | None, datetime | None]:
    """``(amount in minor units, currency, payment date)`` of a check answer's ``data``."""
    currency = str(data["currency"]) if data.get("currency") else None
    raw_amount = data.get("amount")
    amount: int | None = None
    if raw_amount is not None and str(raw_amount).strip():
        if currency is None:
            raise ValueError("amount without currency")
        if isinstance(raw_amount, bool) or not isinstance(raw_amount, str | int | Decimal):
            raise ValueError(f"amount has type {type(raw_amount).__name__}")
        amount = bounded_minor(raw_amount, currency)  # AmountError unless exact in that currency
    try:
        paid_at = parse_payment_date(data.get("payment_date"))
    except ValueError:
        raise ValueError(f"bad payment_date {str(data.get('payment_date'))[:40]!r}") from None
    return amount, currency, paid_at


# --------------------------------------------------------------------------- client


class CinetPayClient(HttpClient):
    """``ProviderClient`` for CinetPay's checkout API v2."""

    name = PROVIDER

    def __init__(
        self,
        *,
        api_url: str,
        api_key: str,
        site_id: str,
        secret_key: str,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (3.05, 10.0),
        max_attempts: int = 3,
        deadline: float = 20.0,
        wait: wait_base | None = None,
    ) -> None:
        """Configure the client; ``wait`` replaces the jittered backoff (tests pass ``wait_none()``)."""
        self.api_url = api_url.rstrip("/")
        self.site_id = site_id
        # Secrets live in underscored attributes that __repr__ never shows.
        self._api_key = api_key
        self._secret_key = secret_key
        super().__init__(_error_code, session, timeout, retry_policy(max_attempts, deadline, wait))

    def __repr__(self) -> str:
        return f"CinetPayClient(api_url={self.api_url!r}, site_id={self.site_id!r})"

    # ----------------------------------------------------------------- webhooks

    def parse_delivery(self, envelope: WebhookEnvelope) -> Delivery:
        """Parse a notification (or CinetPay's empty ping) without any network call."""
        if not envelope.body.strip():
            if envelope.query:
                raise MalformedDelivery("empty body with query parameters; CinetPay posts a form body")
            return Delivery(kind=DeliveryKind.PING, dedupe_key="ping")
        fields = parse_form(envelope.body)
        reference = checked_reference(_required(fields, "cpm_trans_id"), "cpm_trans_id")
        currency = _required(fields, "cpm_currency")
        raw_amount = _required(fields, "cpm_amount")
        if currency not in MINOR_UNIT_EXPONENT:
            raise MalformedDelivery(f"cpm_currency {currency[:10]!r} is not supported")
        try:
            amount = bounded_minor(raw_amount, currency)
        except AmountError:
            raise MalformedDelivery(f"cpm_amount {raw_amount[:30]!r} is not an exact {currency} amount") from None
        # CinetPay notifications carry no status; the error message is the closest hint.
        claimed = claim_text(fields.get("cpm_result")) or claim_text(fields.get("cpm_error_message"))
        return Delivery(
            kind=DeliveryKind.PAYMENT,
            dedupe_key=notification_key(fields, envelope.header("x-token") or ""),
            reference=reference,
            claimed_status=claimed,
            claimed_amount=amount,
            claimed_currency=currency,
        )

    def authenticate(
        self, envelope: WebhookEnvelope, delivery: Delivery, registration: RegistrationView | None
    ) -> None:
        """Check the x-token HMAC and the site id; raise ``ForgedDelivery``. No API call."""
        if delivery.kind is DeliveryKind.PING:
            return  # a ping names no payment, so there is nothing to forge
        token = (envelope.header("x-token") or "").strip()
        if not token:
            raise ForgedDelivery("missing x-token header")
        fields = parse_form(envelope.body)
        expected = compute_x_token(fields, self._secret_key)
        # Bytes, not str: compare_digest refuses non-ASCII str, and the header is attacker-controlled.
        if not hmac.compare_digest(expected.encode(), token.lower().encode("utf-8", "replace")):
            raise ForgedDelivery("x-token does not match")
        site_id = fields.get("cpm_site_id", "")
        if site_id != self.site_id:
            raise ForgedDelivery(f"site id {site_id[:40]!r} is not ours")

    # ----------------------------------------------------------------- status API

    def check(self, registration: RegistrationView) -> VerifiedStatus:
        """Ask ``/v2/payment/check`` about ``registration.reference`` (the transaction_id)."""
        response = self._send(
            "POST",
            f"{self.api_url}/v2/payment/check",
            redact=(self._api_key, self._secret_key),
            json={"apikey": self._api_key, "site_id": self.site_id, "transaction_id": registration.reference},
        )
        return parse_check_response(registration.reference, response.text, http_status=response.status_code)
