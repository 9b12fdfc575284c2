"""Conformance kit for CinetPay."""

from __future__ import annotations

import secrets
from typing import Any

from providers.base import ProviderClient, RegistrationView
from providers.cinetpay import CinetPayClient
from providers.sandbox import SandboxClient
from providers.sandbox.server import SANDBOX_API_KEY, SANDBOX_SECRET_KEY, SANDBOX_SITE_ID
from tests.providers.kits import Kit
from tests.providers.support import fast_options


def make_client(url: str, **overrides: Any) -> ProviderClient:
    options = fast_options(url) | {
        "api_key": SANDBOX_API_KEY,
        "site_id": SANDBOX_SITE_ID,
        "secret_key": SANDBOX_SECRET_KEY,
    }
    return CinetPayClient(**(options | overrides))


def create(
    sandbox: SandboxClient, reference: str, amount: int, currency: str, fate: str, **options: Any
) -> RegistrationView:
    sandbox.create("cinetpay", transaction_id=reference, amount=amount, currency=currency, fate=fate, **options)
    return RegistrationView(reference=reference, amount=amount, currency=currency)


def notify(sandbox: SandboxClient, view: RegistrationView, forged: bool = False) -> dict[str, Any]:
    return sandbox.notification("cinetpay", view.reference, forged=forged)


KIT = Kit(
    name="cinetpay",
    signed=True,
    make_client=make_client,
    bad_credentials={"api_key": "wrong-key"},
    create=create,
    notify=notify,
    status_path=lambda view: "/v2/payment/check",
    new_reference=lambda: f"TXN-{secrets.token_hex(6).upper()}",
)
