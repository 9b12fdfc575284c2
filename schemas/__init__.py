"""Message contract and money helpers shared by every other package."""

from schemas.messages import (
    PAYMENT_SCHEMA,
    WEBHOOK_SCHEMA,
    PaymentRegistration,
    Provider,
    WebhookEnvelope,
)

__all__ = ["PAYMENT_SCHEMA", "WEBHOOK_SCHEMA", "PaymentRegistration", "Provider", "WebhookEnvelope"]
