"""MTN MoMo Collection API (Request to Pay): callback parsing, token cache, status check.

Facts used here (from MTN's MoMo API documentation; docs/providers.md sums up what payrecon relies on):

* every business call carries ``Authorization: Bearer <token>``, ``X-Target-Environment``
  and ``Ocp-Apim-Subscription-Key``; the token comes from ``POST /collection/token/``
  (``Basic base64(api_user:api_key)`` + the subscription key) and lives ``expires_in``
  seconds (3600): it is cached, and refreshed once when a business call answers 401;
* the merchant's ``X-Reference-Id`` (a UUID v4) is the resource id:
  ``GET /collection/v1_0/requesttopay/{X-Reference-Id}`` answers 200 with ``status``
  ``PENDING`` / ``SUCCESSFUL`` / ``FAILED`` (a failure is a 200 too, with a ``reason``
  that is a string in some markets and an object ``{code, message}`` in others), or 404
  ``RESOURCE_NOT_FOUND`` (also for a while right after a 202: the pipeline decides);
* callbacks are PUTs or POSTs of a JSON body shaped like the status answer, **unsigned**,
  and without the ``X-Reference-Id`` in the body: the merchant puts it in the
  ``X-Callback-Url`` (``https://host/momo/callback/{X-Reference-Id}``);
* amounts are major-unit strings (``"100"``, ``"12.50"``); payrecon keeps int minor units.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final, Unpack
from urllib.parse import quote, unquote, urlsplit

import requests

from providers.auth import TokenClient, Transport
from providers.base import (
    Delivery,
    DeliveryKind,
    ForgedDelivery,
    MalformedDelivery,
    Outcome,
    ProviderAuthError,
    ProviderNotFound,
    ProviderProtocolError,
    ProviderTransientError,
    ProviderUnreadableAnswer,
    RegistrationView,
    VerifiedStatus,
    bounded_dedupe_key,
    bounded_minor,
    checked_reference,
    claim_text,
    delivery_json,
    query_value,
)
from providers.http import json_body, json_object
from schemas.currency import MINOR_UNIT_EXPONENT, AmountError
from schemas.messages import WebhookEnvelope

PROVIDER: Final = "mtn_momo"

TOKEN_PATH: Final = "/collection/token/"  # noqa: S105 - a URL path, not a secret
REQUEST_TO_PAY_PATH: Final = "/collection/v1_0/requesttopay"

PENDING: Final = "PENDING"
SUCCESSFUL: Final = "SUCCESSFUL"
FAILED: Final = "FAILED"

#: The one place MoMo statuses are interpreted. Anything else is a protocol error, never FAILED.
STATUS_TABLE: Final[Mapping[str, Outcome]] = {
    PENDING: Outcome.PENDING,
    SUCCESSFUL: Outcome.SUCCEEDED,
    FAILED: Outcome.FAILED,
}

#: Refresh a cached token this many seconds before MoMo says it expires (at most half its life).
TOKEN_MARGIN: Final = 60.0
#: Token lifetime assumed when the token answer has no usable ``expires_in`` (MoMo's documented value).
DEFAULT_TOKEN_TTL: Final = 3600.0
#: An ``expires_in`` beyond this (a day) is not believed; the default is used instead.
MAX_TOKEN_TTL: Final = 86400.0

#: Error codes that arrive as HTTP 500 but mean our configuration is wrong: retrying later is useless.
CONFIG_ERROR_CODES: Final = frozenset({"NOT_ALLOWED_TARGET_ENVIRONMENT", "login_failed"})

#: Query parameters a merchant may use in its ``X-Callback-Url`` to carry the X-Reference-Id.
REFERENCE_QUERY_KEYS: Final = ("reference", "referenceId", "ref")

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_UUID4 = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$")
#: What a registration reference may look like (``schemas.messages.PaymentRegistration.reference``).
_REFERENCE = re.compile(r"^[A-Za-z0-9._:\-]{1,100}$")


def is_uuid(value: str) -> bool:
    """Whether ``value`` is a UUID in its canonical 8-4-4-4-12 hex form (any version)."""
    return bool(_UUID.fullmatch(value))


def is_uuid4(value: str) -> bool:
    """Whether ``value`` is a UUID version 4 (what MoMo requires as ``X-Reference-Id``)."""
    return bool(_UUID4.fullmatch(value))


# --------------------------------------------------------------------------- answers


def parse_reason(value: object) -> tuple[str | None, str | None]:
    """``(code, message)`` of a ``reason``, given as a string or as ``{code, message}``.

    String form: ``("APPROVAL_REJECTED", "APPROVAL_REJECTED")``. Object form:
    ``(code, "code: message")`` (either part may be missing). Anything else is kept as text.
    """
    if value is None or value == "":
        return None, None
    if isinstance(value, str):
        text = value.strip()[:200]
        return text or None, text or None
    if isinstance(value, dict):
        code = value.get("code")
        message = value.get("message")
        code_text = str(code).strip()[:100] if code not in (None, "") else None
        message_text = str(message).strip()[:200] if message not in (None, "") else None
        if code_text and message_text:
            return code_text, f"{code_text}: {message_text}"
        return code_text, code_text or message_text
    return None, str(value)[:200]


def _amount(data: Mapping[str, Any]) -> tuple[int | None, str | None]:
    """``(amount in minor units, currency)`` of a status answer or callback; ``ValueError`` if bad."""
    currency = data.get("currency")
    raw_amount = data.get("amount")
    if currency is None and raw_amount is None:
        return None, None
    if not isinstance(currency, str) or currency not in MINOR_UNIT_EXPONENT:
        raise ValueError(f"currency {str(currency)[:10]!r} is not supported")
    if raw_amount is None or (isinstance(raw_amount, str) and not raw_amount.strip()):
        raise ValueError("currency without amount")
    if isinstance(raw_amount, bool) or not isinstance(raw_amount, str | int | Decimal):
        raise ValueError(f"amount has type {type(raw_amount).__name__}")
    try:
        return bounded_minor(raw_amount, currency), currency
    except AmountError as exc:
        raise ValueError(f"amount {str(raw_amount)[:30]!r}: {exc}") from None


def parse_status_response(reference: str, text: str, *, http_status: int = 200) -> VerifiedStatus:
    """Turn the body of a 200 ``GET /collection/v1_0/requesttopay/{ref}`` into a ``VerifiedStatus``.

    Raises ``ProviderProtocolError`` for anything unreadable: not JSON, an unknown
    ``status`` (never guessed as FAILED), a SUCCESSFUL answer without an exact amount.
    """
    where: dict[str, Any] = {"provider": PROVIDER, "http_status": http_status}
    body = json_object(text, "status answer", **where)
    status = body.get("status")
    if not isinstance(status, str) or status not in STATUS_TABLE:
        raise ProviderProtocolError(f"status answer has an unknown status {str(status)[:40]!r}", **where)
    outcome = STATUS_TABLE[status]
    code, message = parse_reason(body.get("reason"))
    try:
        amount, currency = _amount(body)
    except ValueError as exc:
        raise ProviderProtocolError(f"status answer: {str(exc)[:150]}", **where) from None
    if outcome is Outcome.SUCCEEDED and amount is None:
        raise ProviderProtocolError("SUCCESSFUL status answer without amount and currency", **where)
    transaction_id = body.get("financialTransactionId")
    return VerifiedStatus(
        reference=reference,
        outcome=outcome,
        provider_status=status,
        provider_code=code,
        provider_message=message,
        amount=amount,
        currency=currency,
        provider_transaction_id=str(transaction_id) if transaction_id not in (None, "") else None,
        paid_at=None,  # MoMo's answer carries no payment time, and our clock is not the provider's
        raw=text,
    )


def _error_code(response: requests.Response) -> str | None:
    """MoMo's error ``code`` (business calls) or ``error`` (token endpoint) from an error body."""
    body = json_body(response)
    if body is None:
        return None
    for key in ("code", "error"):
        value = body.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:100]
    return None


# --------------------------------------------------------------------------- callbacks


def _checked_reference(value: str, where: str) -> str:
    checked_reference(value, where)  # names the length limit, NUL characters
    if not _REFERENCE.fullmatch(value):
        raise MalformedDelivery(f"{where} {value[:60]!r} is not a valid reference")
    return value


def find_reference(body: Mapping[str, Any], path: str, query: Mapping[str, str | list[str]]) -> str:
    """Our reference (the X-Reference-Id) for a callback; ``MalformedDelivery`` if none.

    In order: the body's ``referenceId`` (some API versions send it), the query parameter
    ``reference`` / ``referenceId`` / ``ref``, then the path's last segment if it is a UUID
    (``X-Callback-Url: https://host/momo/callback/{X-Reference-Id}``).
    """
    in_body = body.get("referenceId")
    if isinstance(in_body, str) and in_body.strip():
        return _checked_reference(in_body.strip(), "body referenceId")
    if in_body is not None and not isinstance(in_body, str):
        raise MalformedDelivery("body referenceId is not a string")
    for key in REFERENCE_QUERY_KEYS:
        value = query_value(query, key)
        if value is not None:
            return _checked_reference(value, f"query parameter {key}")
    last = unquote(urlsplit(path).path.rstrip("/").rsplit("/", 1)[-1])
    if is_uuid(last):
        return last
    raise MalformedDelivery(
        "no reference: no referenceId in the body, no reference/referenceId/ref query parameter, "
        f"and the path's last segment {last[:60]!r} is not a UUID (X-Callback-Url must end with the X-Reference-Id)"
    )


def _host_of(value: str) -> str:
    """Normalise a host (``Host`` header, ``host:port`` or a URL) to lower case without a trailing dot."""
    value = value.strip()
    if "://" in value:
        value = urlsplit(value).netloc
    return value.split(",")[0].strip().lower().rstrip(".")


def _hosts_match(configured: str, received: str) -> bool:
    want, got = _host_of(configured), _host_of(received)
    if ":" in want.rsplit("]", 1)[-1]:
        return want == got  # a configured port must match too
    return want == got or got.rsplit(":", 1)[0] == want


# --------------------------------------------------------------------------- client


class MtnMomoClient(TokenClient):
    """``ProviderClient`` for MTN MoMo's Collection API (Request to Pay)."""

    name = PROVIDER
    token_margin = TOKEN_MARGIN
    token_margin_divisor = 2
    forget_refused_token = True  # a failed refresh leaves no token to reuse

    def __init__(
        self,
        *,
        api_url: str,
        api_user: str,
        api_key: str,
        subscription_key: str,
        target_environment: str,
        callback_host: str | None = None,
        **transport: Unpack[Transport],
    ) -> None:
        """Configure the client; nothing is sent until the first ``check``.

        ``callback_host``: the host registered as ``providerCallbackHost``; when set, a
        callback whose ``Host`` (or ``X-Forwarded-Host``) differs is refused as forged.
        ``transport``: see ``providers.auth.Transport``.
        """
        self.api_user = api_user
        self.target_environment = target_environment
        self.callback_host = callback_host or None
        self._api_key = api_key
        self._subscription_key = subscription_key
        super().__init__(_error_code, api_url=api_url, user=api_user, secret=api_key, **transport)

    def __repr__(self) -> str:
        return (
            f"MtnMomoClient(api_url={self.api_url!r}, api_user={self.api_user!r}, "
            f"target_environment={self.target_environment!r})"
        )

    @property
    def _redact(self) -> tuple[str, ...]:
        secrets = (self._api_key, self._subscription_key, self._basic, self._basic.split(" ", 1)[1])
        token = self._tokens.current
        return secrets + ((token,) if token else ())

    # ----------------------------------------------------------------- token

    def _fetch_token(self) -> tuple[str, float]:
        """``POST /collection/token/`` (the cache holds its lock): ``(token, lifetime)``.

        401 → ``ProviderAuthError``; a 5xx that means "wrong configuration" too.
        """
        try:
            response = self._send(
                "POST",
                f"{self.api_url}{TOKEN_PATH}",
                redact=self._redact,
                headers={"Authorization": self._basic, "Ocp-Apim-Subscription-Key": self._subscription_key},
            )
        except ProviderTransientError as exc:
            _raise_config_error(exc, "token")
            raise
        where: dict[str, Any] = {"provider": PROVIDER, "http_status": response.status_code}
        try:
            body = response.json()
        except ValueError:
            raise ProviderUnreadableAnswer("token answer is not JSON", **where) from None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token.strip():
            raise ProviderProtocolError("token answer has no access_token", **where)
        expires_in = body.get("expires_in")
        try:
            ttl = float(expires_in) if not isinstance(expires_in, bool) and expires_in is not None else None
        except (TypeError, ValueError):
            ttl = None
        if ttl is None or not 0 < ttl < MAX_TOKEN_TTL:  # missing, unreadable, NaN, absurd
            ttl = DEFAULT_TOKEN_TTL
        return token.strip(), ttl

    # ----------------------------------------------------------------- business calls

    def _business(self, method: str, url: str, what: str, **kwargs: Any) -> requests.Response:
        """One business call with the bearer token; on 401 refresh the token once and retry once."""
        return self._tokens.call(lambda token: self._send_business(method, url, token, what, **kwargs))

    def _send_business(self, method: str, url: str, token: str, what: str, **kwargs: Any) -> requests.Response:
        headers = {
            "Authorization": f"Bearer {token}",
            "X-Target-Environment": self.target_environment,
            "Ocp-Apim-Subscription-Key": self._subscription_key,
        }
        try:
            return self._send(method, url, redact=(*self._redact, token), headers=headers, **kwargs)
        except ProviderTransientError as exc:
            _raise_config_error(exc, what)
            raise

    def check(self, registration: RegistrationView) -> VerifiedStatus:
        """``GET /collection/v1_0/requesttopay/{reference}``: the reference is the X-Reference-Id."""
        reference = registration.reference
        url = f"{self.api_url}{REQUEST_TO_PAY_PATH}/{quote(reference, safe='')}"
        try:
            response = self._business("GET", url, "requesttopay status")
        except ProviderNotFound as exc:
            # The pipeline decides whether this is "not visible yet" (MoMo answers 404 for a
            # while after its 202) or "never created": the client only says what it saw.
            raise exc.restated(
                ProviderNotFound,
                f"request to pay {reference[:60]!r} not found (MoMo also answers 404 shortly after "
                f"accepting a request): {exc.message}",
            ) from None
        if response.status_code != 200:
            # 202/204 or a 3xx: not the documented answer; an empty 2xx body is unreadable anyway.
            raise ProviderProtocolError(
                f"status answer has HTTP {response.status_code}, expected 200",
                provider=PROVIDER,
                http_status=response.status_code,
            )
        return parse_status_response(reference, response.text, http_status=response.status_code)

    # ----------------------------------------------------------------- callbacks

    def parse_delivery(self, envelope: WebhookEnvelope) -> Delivery:
        """Parse a MoMo callback (PUT or POST, JSON) without any network call."""
        body = delivery_json(envelope.body, f"body is not JSON: {envelope.body[:40]!r}")
        if not isinstance(body, dict):
            raise MalformedDelivery("body is not a JSON object")
        reference = find_reference(body, envelope.path, envelope.query)
        status = body.get("status")
        try:
            amount, currency = _amount(body)
        except ValueError:
            amount, currency = None, None  # a hint only: the status API gives the real amount
        provider_ids = {
            key: str(body[key])
            for key in ("financialTransactionId", "externalId")
            if isinstance(body.get(key), str | int) and not isinstance(body.get(key), bool) and str(body[key])
        }
        # The same body about the same reference is the same delivery, whatever the method.
        # MoMo signs nothing: the key is simply this body about this reference (hex SHA-256, 64 characters).
        digest = hashlib.sha256(f"{reference}\n{envelope.body}".encode()).hexdigest()
        return Delivery(
            kind=DeliveryKind.PAYMENT,
            dedupe_key=bounded_dedupe_key(digest),
            reference=reference,
            claimed_status=claim_text(status.strip()[:40]) if isinstance(status, str) else None,
            claimed_amount=amount,
            claimed_currency=currency,
            provider_ids=provider_ids,
        )

    def authenticate(
        self, envelope: WebhookEnvelope, delivery: Delivery, registration: RegistrationView | None
    ) -> None:
        """MoMo signs nothing: accept, unless ``callback_host`` is set and the Host differs.

        The host compared is ``X-Forwarded-Host`` when present (a reverse proxy keeps the
        original there), else ``Host``; a delivery carrying neither is accepted.
        """
        if self.callback_host is None:
            return
        received = envelope.header("x-forwarded-host") or envelope.header("host")
        if received and not _hosts_match(self.callback_host, received):
            raise ForgedDelivery(f"callback sent to host {received[:80]!r}, not the registered callback host")


def _raise_config_error(exc: ProviderTransientError, what: str) -> None:
    """Raise ``ProviderAuthError`` if a 5xx's code says "wrong configuration"; else return.

    MoMo answers HTTP 500 ``NOT_ALLOWED_TARGET_ENVIRONMENT`` for a wrong
    ``X-Target-Environment`` and has been seen answering 500 ``login_failed`` for wrong
    credentials: retrying those later is useless, an operator must fix the settings.
    """
    if exc.code in CONFIG_ERROR_CODES:
        raise exc.restated(
            ProviderAuthError,
            f"{what}: MoMo refused our configuration ({exc.code}): {exc.message}",
        ) from exc
