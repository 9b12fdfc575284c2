"""Builders for contract messages used across the tests."""

from __future__ import annotations

import secrets
from typing import Any


def new_reference(prefix: str = "TXN") -> str:
    """A fresh merchant reference in the marketplace's own format (TXN- + 12 upper hex)."""
    return f"{prefix}-{secrets.token_hex(6).upper()}"


def registration(
    reference: str,
    *,
    amount: int = 5000,
    currency: str = "XOF",
    account: str = "tech-42",
    plan: str = "depannage-monthly",
    periods: int = 1,
    provider: str = "cinetpay",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "schema": "payrecon.payment/1",
        "provider": provider,
        "reference": reference,
        "amount": amount,
        "currency": currency,
        "account": account,
        "plan": plan,
        "periods": periods,
        "provider_data": {},
        **extra,
    }
