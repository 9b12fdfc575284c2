"""What every provider client gives the pipeline: DTOs, the client protocol, the error tree.

Nothing provider-specific leaves ``providers/``: the pipeline only sees
``Delivery`` (what a webhook claims, after authentication) and ``VerifiedStatus``
(what the provider's API answered), both normalised.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

from schemas.currency import MINOR_UNIT_EXPONENT, AmountError, to_minor
from schemas.messages import WebhookEnvelope

# --------------------------------------------------------------------------- limits

#: Longest merchant reference: the ``reference`` columns (inbox, payments) are String(100).
MAX_REFERENCE_LENGTH: Final = 100
#: Longest inbox ``dedupe_key`` (String(200)): :func:`bounded_dedupe_key` keeps every key within it.
MAX_DEDUPE_KEY_LENGTH: Final = 200
#: What payrecon keeps of the free text a provider's answer names a payment by (``VerifiedStatus``,
#: ``StatementEntry``): its raw status and code (64 characters), its transaction and payout ids (200). An
#: answer with longer ones is cut to these (``storable``), not refused by the database (the whole answer is kept raw).
MAX_STATUS_LENGTH: Final = 64
MAX_ID_LENGTH: Final = 200
#: Hex digits of the SHA-256 that ``storable`` puts after the ellipsis of a value it cuts.
CUT_HASH: Final = 10
#: Longest claimed status kept (``verifications.claimed_status`` is String(64)).
MAX_CLAIMED_STATUS_LENGTH: Final = 64
#: Deepest nesting of arrays and objects accepted in any JSON a provider sends (real ones: 3 or 4).
MAX_JSON_DEPTH: Final = 64
#: Largest amount, in minor units, the BIGINT amount columns hold.
MAX_AMOUNT: Final = 2**63 - 1
#: How a dedupe key derived by hashing starts; no natural key is ever kept with this start.
HASHED_DEDUPE_KEY_PREFIX: Final = "sha256:"

# Characters PostgreSQL cannot store in a text column (NUL) or UTF-8 cannot encode (lone surrogates).
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def storable(value: str | None, limit: int | None = None) -> str | None:
    """``value`` as PostgreSQL can keep it: a NUL or a lone surrogate replaced by U+FFFD, then, if longer than
    ``limit`` characters, cut to them: its start, an ellipsis and ``CUT_HASH`` hex digits of the whole value's
    SHA-256 (two long values that share their start stay two, and a cut value is never taken for one that fits:
    no reference payrecon registers holds an ellipsis)."""
    if value is None:
        return None
    value = _UNSTORABLE.sub("\ufffd", value)
    if limit is None or len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:CUT_HASH]
    return value[: limit - CUT_HASH - 1] + "\u2026" + digest


class Outcome(StrEnum):
    """Normalised answer of a provider's status API."""

    SUCCEEDED = "succeeded"  # money moved to the merchant
    FAILED = "failed"  # final: this attempt will never be paid
    PENDING = "pending"  # not final yet (waiting for the customer, processing)
    REFUNDED = "refunded"  # was paid, then given back


class DeliveryKind(StrEnum):
    PAYMENT = "payment"  # a notification about one of our payments
    PING = "ping"  # a liveness probe with no payment in it (CinetPay's empty GET)
    IGNORED = "ignored"  # authentic, but about something payrecon does not track


@dataclass(frozen=True, slots=True)
class Delivery:
    """A parsed webhook delivery: what it *claims*. Never trusted for money."""

    kind: DeliveryKind
    #: Stable key of this delivery for the inbox; identical redeliveries share it.
    dedupe_key: str
    #: The merchant's reference (registration ``reference``), when the delivery names one.
    reference: str | None = None
    claimed_status: str | None = None
    claimed_amount: int | None = None
    claimed_currency: str | None = None
    #: Provider-side ids the delivery carries (CinetPay has none; Wave a session id).
    provider_ids: Mapping[str, str] = field(default_factory=dict)
    #: When the delivery does not name our reference: ``(key, value)`` such that the payment is
    #: the one registered with ``provider_data[key] == value`` (Orange: its ``notif_token``).
    lookup: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class VerifiedStatus:
    """The provider's own answer about one payment: the only thing that moves money."""

    reference: str
    outcome: Outcome
    #: Raw provider status and code, kept for the verification history.
    provider_status: str | None
    provider_code: str | None
    provider_message: str | None = None
    amount: int | None = None  # minor units, as the provider confirms them
    currency: str | None = None
    provider_transaction_id: str | None = None
    paid_at: datetime | None = None  # the provider's payment time, never our clock
    raw: str = ""  # response body as received
    #: The question named the registered amount (Orange's ``transactionstatus`` is keyed by order_id,
    #: amount and pay_token) though the answer may echo none: a success without ``amount`` is settled
    #: at the registered amount, which stays unconfirmed by the provider (``amount`` None) until the
    #: statement confirms it at reconciliation. False: a success without an amount posts nothing.
    registered_amount_asked: bool = False

    def __post_init__(self) -> None:
        for name, limit in (("provider_status", MAX_STATUS_LENGTH), ("provider_code", MAX_STATUS_LENGTH),
                            ("provider_message", None), ("provider_transaction_id", MAX_ID_LENGTH)):  # fmt: skip
            object.__setattr__(self, name, storable(getattr(self, name), limit))
        if self.amount is None and self.currency is not None and self.currency not in MINOR_UNIT_EXPONENT:
            object.__setattr__(self, "currency", None)  # no amount to read in it ("FCFA"): not a currency we keep


@dataclass(frozen=True, slots=True)
class RegistrationView:
    """What a client may need to know about a registered payment to verify it."""

    reference: str
    amount: int | None = None
    currency: str | None = None
    provider_data: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- errors


E = TypeVar("E", bound="ProviderError")


class ProviderError(Exception):
    """Base of every error a provider client raises.

    ``retryable`` tells the pipeline whether trying again later may succeed.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        http_status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.http_status = http_status
        self.code = code
        self.request_id = request_id

    def restated(self, cls: type[E], message: str) -> E:
        """This error as ``cls`` saying ``message``, with where it came from (provider, HTTP status,
        provider code, request id) kept."""
        return cls(message, provider=self.provider, http_status=self.http_status, code=self.code,
                   request_id=self.request_id)  # fmt: skip

    def __str__(self) -> str:
        parts = [f"{self.provider}: {self.message}"]
        if self.http_status is not None:
            parts.append(f"http={self.http_status}")
        if self.code is not None:
            parts.append(f"code={self.code}")
        if self.request_id is not None:
            parts.append(f"request_id={self.request_id}")
        return " ".join(parts)


class ProviderTransientError(ProviderError):
    """Timeouts, connection errors, 5xx, operator outages: retry later."""

    retryable = True


class ProviderRateLimited(ProviderTransientError):
    """HTTP 429 or a provider quota code."""


class ProviderAuthError(ProviderError):
    """Our credentials were refused (401/403, bad apikey or site id)."""


class ProviderBadRequest(ProviderError):
    """The provider refused the request itself (4xx, malformed parameters)."""


class ProviderRefusedQuestion(ProviderBadRequest):
    """The provider refused the status question about one payment for that payment's own data, so the
    same question will always be refused (Orange's HTTP 400 to ``transactionstatus``: the registered
    pay_token or amount is not the order's). The pipeline stops re-checking it and flags it."""


class ProviderNotFound(ProviderError):
    """The provider does not know this payment."""


class ProviderProtocolError(ProviderError):
    """The provider answered something we cannot parse (not JSON, missing fields, bad amount)."""


class ProviderUnreadableAnswer(ProviderProtocolError):
    """The answer is not JSON at all: a maintenance page served with 200, a proxy's error page, an answer cut short.
    An outage, not a refusal: retried as one, until the provider's give-up window ends. An answer in JSON that says
    something we cannot use stays a ``ProviderProtocolError``, which is not retried."""

    retryable = True


class DeliveryError(Exception):
    """Base for problems with a webhook delivery itself (not with the provider).

    The message is stored as text (inbox detail, dead letters): a NUL or lone surrogate quoted
    from the delivery becomes U+FFFD.
    """

    reason = "invalid"

    def __init__(self, message: str) -> None:
        super().__init__(_UNSTORABLE.sub("\ufffd", message))


class MalformedDelivery(DeliveryError):
    """The delivery cannot be parsed: wrong encoding, missing fields, bad amount."""

    reason = "malformed"


class ForgedDelivery(DeliveryError):
    """The delivery failed authentication: missing or wrong signature or token."""

    reason = "forged"


class AwaitingRegistration(DeliveryError):
    """The delivery can only be authenticated against its registration, which has not arrived
    yet (Orange's notif_token). Not a forgery: the pipeline tries again later."""

    reason = "awaiting_registration"


# --------------------------------------------------------------------------- delivery helpers


def query_value(query: Mapping[str, str | list[str]], name: str) -> str | None:
    """One query parameter of a delivery's URL, stripped; ``None`` when absent, empty or blank. Given more
    than once (``?ref=A&ref=B``) it is ambiguous: ``MalformedDelivery``, never a guess at which one counts."""
    value = query.get(name)
    if isinstance(value, list):
        if len(value) > 1:
            raise MalformedDelivery(f"query parameter {name!r} is given {len(value)} times")
        value = value[0] if value else None
    return (value.strip() or None) if isinstance(value, str) else None


def unstorable(value: str) -> str | None:
    """What in ``value`` PostgreSQL cannot store as text (``"a NUL character"``...), or None."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    return "a NUL character" if found.group() == "\0" else "an unpaired surrogate"


def checked_reference(value: str, name: str) -> str:
    """``value`` as the merchant reference a delivery names; ``MalformedDelivery`` naming field ``name``
    if it is longer than :data:`MAX_REFERENCE_LENGTH` or cannot be stored (NUL, lone surrogate)."""
    if len(value) > MAX_REFERENCE_LENGTH:
        raise MalformedDelivery(f"{name} is {len(value)} characters long; the limit is {MAX_REFERENCE_LENGTH}")
    problem = unstorable(value)
    if problem is not None:
        raise MalformedDelivery(f"{name} contains {problem}")
    return value


def bounded_dedupe_key(natural: str) -> str:
    """The inbox dedupe key for a provider's natural key: ``natural`` itself when it can be stored
    (non-empty, at most :data:`MAX_DEDUPE_KEY_LENGTH` characters, no NUL or lone surrogate, not
    starting with :data:`HASHED_DEDUPE_KEY_PREFIX`), else ``"sha256:" + hex SHA-256 of natural``
    (71 characters). Deterministic, so repeats of a delivery still share their key."""
    if (
        natural
        and len(natural) <= MAX_DEDUPE_KEY_LENGTH
        and not natural.startswith(HASHED_DEDUPE_KEY_PREFIX)
        and unstorable(natural) is None
    ):
        return natural
    return HASHED_DEDUPE_KEY_PREFIX + hashlib.sha256(natural.encode("utf-8", "surrogatepass")).hexdigest()


def digest_key(*parts: str) -> str:
    """Hex SHA-256 (64 characters) over ``parts`` as a JSON array: unambiguous, unlike a concatenation."""
    return hashlib.sha256(json.dumps(parts, ensure_ascii=True).encode("ascii")).hexdigest()


def claim_text(value: object) -> str | None:
    """A claimed status as kept for the history: stripped, without NUL or lone surrogates, cut to
    :data:`MAX_CLAIMED_STATUS_LENGTH`; None if nothing is left. Claims are hints, never refused."""
    if value is None:
        return None
    text = _UNSTORABLE.sub("", str(value)).strip()[:MAX_CLAIMED_STATUS_LENGTH].strip()
    return text or None


def bounded_minor(amount: str | int | Decimal, currency: str) -> int:
    """``schemas.currency.to_minor``, bounded: ``AmountError`` (a ``ValueError``) also for amounts
    beyond :data:`MAX_AMOUNT`, refused *before* ``1e999999`` is expanded into an integer (seconds of
    CPU) or overflows ``Decimal`` (``decimal.Overflow`` is no ``ValueError``)."""
    if isinstance(amount, str | Decimal):
        try:
            value = Decimal(str(amount).strip())
        except InvalidOperation:
            value = None  # to_minor says what is wrong with it
        exp = MINOR_UNIT_EXPONENT.get(currency, 0)
        if value is not None and value.is_finite() and value and value.adjusted() + exp > len(str(MAX_AMOUNT)):
            raise AmountError(f"{str(amount)[:30]!r} {currency[:10]} is out of range")
    try:
        minor = to_minor(amount, currency)
    except ArithmeticError:  # decimal's Overflow and kin
        raise AmountError(f"{str(amount)[:30]!r} {currency[:10]} is out of range") from None
    if abs(minor) > MAX_AMOUNT:
        raise AmountError(f"{str(amount)[:30]!r} {currency[:10]} is out of range")
    return minor


class JsonTooDeep(ValueError):
    """JSON nested deeper than :data:`MAX_JSON_DEPTH` (refused before the recursive decoder runs)."""


# A backslash and the character it escapes, a quote, or a bracket: enough to follow JSON's nesting.
_JSON_STRUCTURE = re.compile(r'\\.|["\[\]{}]', re.DOTALL)


def json_depth_exceeds(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``text`` nests arrays and objects deeper than ``limit`` (brackets in strings do not count).

    Linear, no recursion. On invalid JSON the answer may be wrong only after the first error,
    past which the decoder never goes.
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    depth, in_string = 0, False
    for match in _JSON_STRUCTURE.finditer(text):
        piece = match.group()
        if piece == '"':
            in_string = not in_string
        elif in_string or piece[0] == "\\":
            continue
        elif piece in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
            if depth < 0:
                return False  # not JSON: the decoder stops here
    return False


def load_json(text: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` with fractions as ``Decimal`` and a nesting limit.

    ``ValueError`` if ``text`` is not JSON; ``JsonTooDeep`` (a ``ValueError``) if it nests
    deeper than ``max_depth``: never ``RecursionError``.
    """
    message = f"nested too deeply (more than {max_depth} levels of arrays and objects)"
    if json_depth_exceeds(text, max_depth):
        raise JsonTooDeep(message)
    try:
        return json.loads(text, parse_float=Decimal)
    except RecursionError:
        raise JsonTooDeep(message) from None


def delivery_json(body: str, not_json: str) -> Any:
    """A delivery body's JSON value; ``MalformedDelivery`` (``"body nested too deeply ..."``, or
    ``not_json``) if it cannot be read."""
    try:
        return load_json(body)
    except JsonTooDeep as exc:
        raise MalformedDelivery(f"body {exc}") from None
    except ValueError:
        raise MalformedDelivery(not_json) from None


# --------------------------------------------------------------------------- protocol


@dataclass(frozen=True, slots=True)
class StatementEntry:
    """One transaction in a provider's own listing (Wave's /v1/transactions), for reconciliation."""

    reference: str | None  # our reference (client_reference)
    provider_transaction_id: str | None
    outcome: Outcome
    amount: int  # gross, minor units
    currency: str
    fee: int | None
    occurred_at: datetime
    payout_id: str | None = None
    raw: str = ""

    def __post_init__(self) -> None:
        # A reference longer than ours can be (``MAX_REFERENCE_LENGTH``), or holding what no reference of ours holds,
        # is no payment of ours: kept ``storable``, it stays one the provider reports and we do not know (missing in
        # the ledger, then healed as any such payment), and never matches one of ours.
        for name, limit in (("reference", MAX_REFERENCE_LENGTH), ("provider_transaction_id", MAX_ID_LENGTH),
                            ("payout_id", MAX_ID_LENGTH)):  # fmt: skip
            object.__setattr__(self, name, storable(getattr(self, name), limit))


@runtime_checkable
class StatementSource(Protocol):
    """A client whose provider lists a day's transactions (only Wave among ours)."""

    def statement(self, day: date) -> Iterator[StatementEntry]:
        """Every transaction of the provider's calendar day ``day`` (UTC), all pages."""
        ...


@runtime_checkable
class ProviderClient(Protocol):
    """One provider: parse and authenticate its callbacks, ask its API for the truth."""

    name: str

    def parse_delivery(self, envelope: WebhookEnvelope) -> Delivery:
        """Parse what the delivery claims. Raise ``MalformedDelivery`` if it cannot be read.

        Must not call the network.
        """
        ...

    def authenticate(
        self, envelope: WebhookEnvelope, delivery: Delivery, registration: RegistrationView | None
    ) -> None:
        """Raise ``ForgedDelivery`` unless the delivery is authentic.

        Called before any API call is spent. Providers that sign nothing accept here
        (their callbacks only trigger verification).
        """
        ...

    def check(self, registration: RegistrationView) -> VerifiedStatus:
        """Ask the provider's status API about one payment. Raises ``ProviderError``."""
        ...

    def close(self) -> None:
        """Release pooled connections."""
        ...
