"""The public message contract (README, "The contract"): webhook envelope and payment registration.

These models are the single source of the JSON Schema files checked in next to
them (``schemas/*.schema.json``); ``python -m schemas.generate`` rewrites those
files and a test fails when they drift.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from schemas.currency import MINOR_UNIT_EXPONENT

WEBHOOK_SCHEMA = "payrecon.webhook/1"
PAYMENT_SCHEMA = "payrecon.payment/1"


class Provider(StrEnum):
    CINETPAY = "cinetpay"
    MTN_MOMO = "mtn_momo"
    ORANGE_MONEY = "orange_money"
    WAVE = "wave"


#: Every provider's name, in the contract's order (a payment, a delivery, a setting names one of them).
PROVIDER_NAMES: tuple[str, ...] = tuple(provider.value for provider in Provider)


HttpMethod = Annotated[str, Field(pattern=r"^[A-Z]{3,7}$", description="HTTP method as received")]
Currency = Annotated[
    str,
    Field(
        pattern=r"^[A-Z]{3}$",
        description="ISO 4217 code; one of: " + ", ".join(sorted(MINOR_UNIT_EXPONENT)),
    ),
]


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class WebhookEnvelope(_Contract):
    """One raw delivery from a provider, as a webhook receiver captured it."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="payrecon webhook envelope, version 1",
        json_schema_extra={"$id": "urn:payrecon:schema:webhook-envelope:1"},
    )

    schema_: Literal["payrecon.webhook/1"] = Field(alias="schema")
    provider: Provider
    received_at: AwareDatetime = Field(description="RFC 3339 timestamp with offset")
    method: HttpMethod
    path: str = Field(min_length=1, max_length=2048, description="request path")
    query: dict[str, str | list[str]] = Field(default_factory=dict, description="query parameters (may be empty)")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="header name -> value, exactly as received (names compared case-insensitively)",
    )
    body: str = Field(
        max_length=1_000_000,
        description="the raw request body as text, byte for byte (form-encoded or JSON, never re-serialised)",
    )
    source_ip: str | None = Field(default=None, max_length=64)
    receiver: str | None = Field(default=None, max_length=200, description="free text naming the receiving app")

    def header(self, name: str) -> str | None:
        """Header value by case-insensitive name."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None


class PaymentRegistration(_Contract):
    """A payment the merchant app initiated, sent before (or after) its webhooks."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="payrecon payment registration, version 1",
        json_schema_extra={"$id": "urn:payrecon:schema:payment-registration:1"},
    )

    schema_: Literal["payrecon.payment/1"] = Field(alias="schema")
    provider: Provider
    reference: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9._:\-]+$",
        description="the merchant's own id sent to the provider (CinetPay transaction_id, MoMo "
        "X-Reference-Id, Orange order_id, Wave client_reference)",
    )
    amount: int = Field(gt=0, description="integer in the currency's minor unit")
    currency: Currency
    account: str = Field(min_length=1, max_length=200, description="the merchant app's id for the payer")
    plan: str = Field(min_length=1, max_length=100, description="plan code from the plan catalogue")
    periods: int = Field(default=1, ge=1, le=120, description="how many plan periods were bought")
    provider_data: dict[str, Any] = Field(default_factory=dict)
    created_at: AwareDatetime | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("amount", "periods", mode="before")
    @classmethod
    def _strict_int(cls, value: Any) -> Any:
        # JSON producers must send integers: "5000", 5000.0 and true are refused.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be a JSON integer")
        return value

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        if value not in MINOR_UNIT_EXPONENT:
            raise ValueError(f"unsupported currency {value!r}")
        return value
