"""Conformance kit for Orange Money WebPay (plus its token, notif_token and pay_token checks)."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import requests

from providers.base import (
    AwaitingRegistration,
    DeliveryKind,
    ForgedDelivery,
    Outcome,
    ProviderBadRequest,
    RegistrationView,
)
from providers.orange_money import OrangeMoneyClient
from providers.sandbox import SandboxClient
from providers.sandbox.orange_money import OrangeMoneyConfig
from schemas.messages import WebhookEnvelope
from tests.providers.kits import Kit
from tests.providers.support import fast_options

DEFAULTS = OrangeMoneyConfig()
STATUS_PATH = f"/orange-money-webpay/{DEFAULTS.country}/v1/transactionstatus"


def make_client(url: str, **overrides: Any) -> OrangeMoneyClient:
    options = fast_options(url) | {
        "client_id": DEFAULTS.client_id,
        "client_secret": DEFAULTS.client_secret,
        "merchant_key": DEFAULTS.merchant_key,
        "country": DEFAULTS.country,
    }
    return OrangeMoneyClient(**(options | overrides))


def create(
    sandbox: SandboxClient, reference: str, amount: int, currency: str, fate: str, **options: Any
) -> RegistrationView:
    if "confirm_amount" in options or "confirm_currency" in options:
        # Orange's documented status answer has no amount: a tampered amount is only seen in flight at a
        # deployment that echoes it (else the statement shows it, see tests/test_reconciliation.py).
        options.setdefault("echo_amount", True)
    state = sandbox.create("orange_money", reference=reference, amount=amount, currency=currency, fate=fate, **options)
    return RegistrationView(
        reference=reference, amount=amount, currency=currency, provider_data=dict(state["provider_data"])
    )


def notify(sandbox: SandboxClient, view: RegistrationView, forged: bool = False) -> dict[str, Any]:
    return sandbox.notification("orange_money", view.reference, forged=forged)


def new_reference() -> str:
    return f"OM-{secrets.token_hex(6).upper()}"


def tokens(url: str) -> dict[str, Any]:
    with requests.get(f"{url}/_sandbox/orange_money/tokens", timeout=5) as response:
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


def expire_tokens(url: str) -> int:
    with requests.post(f"{url}/_sandbox/orange_money/tokens/expire", timeout=5) as response:
        response.raise_for_status()
        return int(response.json()["expired"])


# --------------------------------------------------------------------------- extra checks


def token_is_cached(sandbox: SandboxClient, url: str) -> None:
    """One token serves several checks (Orange tokens live for days, not one call)."""
    views = [create(sandbox, new_reference(), 5000, "XOF", "accepted") for _ in range(3)]
    before = tokens(url)["issued"]
    client = make_client(url)
    try:
        outcomes = [client.check(view).outcome for view in views * 2]
    finally:
        client.close()
    assert outcomes == [Outcome.SUCCEEDED] * 6
    assert tokens(url)["issued"] - before == 1
    assert client.tokens_fetched == 1


def token_refreshed_once_on_401(sandbox: SandboxClient, url: str) -> None:
    """A token the provider expired early (401 code 42) is replaced once, and the call retried."""
    view = create(sandbox, new_reference(), 5000, "XOF", "waiting")
    client = make_client(url)
    try:
        assert client.check(view).outcome is Outcome.PENDING
        assert expire_tokens(url) >= 1
        before = tokens(url)["issued"]
        assert client.check(view).outcome is Outcome.PENDING  # 401 → new token → retried
        assert client.check(view).outcome is Outcome.PENDING  # the new token is cached
    finally:
        client.close()
    assert tokens(url)["issued"] - before == 1
    assert client.tokens_fetched == 2
    # Three answered checks plus the one refused with 401 (it named no order: never counted).
    assert sandbox.get("orange_money", view.reference)["check_count"] == 3


def token_renewed_before_expiry(sandbox: SandboxClient, url: str) -> None:
    """The client renews on its own clock, before ``expires_in`` runs out, without a 401."""
    now = [1000.0]
    view = create(sandbox, new_reference(), 5000, "XOF", "accepted")
    client = make_client(url, clock=lambda: now[0])
    try:
        client.check(view)
        now[0] += DEFAULTS.token_ttl - 400  # still well within the lifetime: cached
        client.check(view)
        assert client.tokens_fetched == 1
        now[0] += 200  # within the refresh margin (300 s) before expiry: renewed
        client.check(view)
        assert client.tokens_fetched == 2
    finally:
        client.close()


def notif_token_mismatch_is_forged(sandbox: SandboxClient, url: str) -> None:
    """A notification with another order's notif_token is refused, even with a real token."""
    first = create(sandbox, new_reference(), 5000, "XOF", "accepted")
    second = create(sandbox, new_reference(), 5000, "XOF", "accepted")
    client = make_client(url)
    try:
        envelope = WebhookEnvelope.model_validate(notify(sandbox, first))
        delivery = client.parse_delivery(envelope)
        assert delivery.reference == first.reference
        with pytest.raises(ForgedDelivery, match="notif_token does not match"):
            client.authenticate(envelope, delivery, second)
        with pytest.raises(AwaitingRegistration, match="no registration known"):
            client.authenticate(envelope, delivery, None)
        bare = RegistrationView(reference=first.reference, amount=5000, currency="XOF")
        with pytest.raises(ForgedDelivery, match="no notif_token registered"):
            client.authenticate(envelope, delivery, bare)
        client.authenticate(envelope, delivery, first)
    finally:
        client.close()


def lookup_by_notif_token(sandbox: SandboxClient, url: str) -> None:
    """A notif_url without the order id: the delivery names the notif_token to look the payment up by."""
    view = create(sandbox, new_reference(), 5000, "XOF", "accepted")
    envelope = WebhookEnvelope.model_validate(
        sandbox.notification("orange_money", view.reference, path="/orange/notify")
    )
    client = make_client(url)
    try:
        delivery = client.parse_delivery(envelope)
        assert delivery.kind is DeliveryKind.PAYMENT
        assert delivery.reference is None
        assert delivery.lookup == ("notif_token", view.provider_data["notif_token"])
        assert delivery.claimed_status == "SUCCESS"
        assert delivery.provider_ids["txnid"].startswith("MP")
        client.authenticate(envelope, delivery, view)  # the registration the lookup finds
    finally:
        client.close()


def missing_pay_token_is_refused_offline(sandbox: SandboxClient, url: str) -> None:
    """Without pay_token (or amount) the status call cannot be made: ProviderBadRequest, no request sent."""
    view = create(sandbox, new_reference(), 5000, "XOF", "accepted")
    before = tokens(url)["issued"]
    client = make_client(url)
    try:
        no_token = RegistrationView(reference=view.reference, amount=5000, currency="XOF", provider_data={})
        with pytest.raises(ProviderBadRequest, match="pay_token"):
            client.check(no_token)
        no_amount = RegistrationView(reference=view.reference, provider_data=view.provider_data)
        with pytest.raises(ProviderBadRequest, match="amount"):
            client.check(no_amount)
    finally:
        client.close()
    assert sandbox.get("orange_money", view.reference)["check_count"] == 0
    assert tokens(url)["issued"] == before  # not even a token was requested


def expired_is_final_failure(sandbox: SandboxClient, url: str) -> None:
    """EXPIRED (paid after the pay_token expired) is final and unpaid; INITIATED then PENDING are pending."""
    view = create(sandbox, new_reference(), 5000, "XOF", "waiting_then_expired", pending_checks=2)
    client = make_client(url)
    try:
        answers = [client.check(view) for _ in range(3)]
    finally:
        client.close()
    assert [a.provider_status for a in answers] == ["INITIATED", "PENDING", "EXPIRED"]
    assert [a.outcome for a in answers] == [Outcome.PENDING, Outcome.PENDING, Outcome.FAILED]
    assert answers[-1].amount is None


KIT = Kit(
    name="orange_money",
    signed=True,
    make_client=make_client,
    bad_credentials={"client_secret": "wrong-secret"},
    create=create,
    notify=notify,
    status_path=lambda view: STATUS_PATH,
    new_reference=new_reference,
    extra=[
        ("token-cached", token_is_cached),
        ("token-refreshed-on-401", token_refreshed_once_on_401),
        ("token-renewed-before-expiry", token_renewed_before_expiry),
        ("notif-token-mismatch", notif_token_mismatch_is_forged),
        ("lookup-by-notif-token", lookup_by_notif_token),
        ("missing-pay-token", missing_pay_token_is_refused_offline),
        ("expired", expired_is_final_failure),
    ],
)
