"""What every provider client gives the pipeline: DTOs, the client protocol, the error tree.

Nothing provider-specific leaves ``providers/``: the pipeline only sees
``Delivery`` (what a webhook claims, after authentication) and ``VerifiedStatus``
(what the provider's API answered), both normalised.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from schemas.messages import WebhookEnvelope


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


@dataclass(frozen=True, slots=True)
class RegistrationView:
    """What a client may need to know about a registered payment to verify it."""

    reference: str
    amount: int | None = None
    currency: str | None = None
    provider_data: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- errors


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


class ProviderNotFound(ProviderError):
    """The provider does not know this payment."""


class ProviderProtocolError(ProviderError):
    """The provider answered something we cannot parse (not JSON, missing fields, bad amount)."""


class DeliveryError(Exception):
    """Base for problems with a webhook delivery itself (not with the provider)."""

    reason = "invalid"


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
