"""Conformance kit for MTN MoMo (Collection API), with MoMo-specific extra checks."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests

from providers.base import Outcome, ProviderClient, ProviderNotFound, RegistrationView
from providers.mtn_momo import MtnMomoClient
from providers.sandbox import SandboxClient
from providers.sandbox.mtn_momo import DEFAULT_API_KEY, DEFAULT_API_USER, DEFAULT_SUBSCRIPTION_KEY
from tests.providers.kits import Kit
from tests.providers.support import fast_options

PROVIDER = "mtn_momo"
#: MTN's own sandbox settles in EUR: a two-decimal currency exercises the minor-unit conversion.
CURRENCY = "EUR"


def make_client(url: str, **overrides: Any) -> MtnMomoClient:
    options = fast_options(url) | {
        "api_user": DEFAULT_API_USER,
        "api_key": DEFAULT_API_KEY,
        "subscription_key": DEFAULT_SUBSCRIPTION_KEY,
        "target_environment": "sandbox",
    }
    return MtnMomoClient(**(options | overrides))


def create(
    sandbox: SandboxClient, reference: str, amount: int, currency: str, fate: str, **options: Any
) -> RegistrationView:
    state = sandbox.create(PROVIDER, reference=reference, amount=amount, currency=currency, fate=fate, **options)
    return RegistrationView(reference=reference, amount=amount, currency=currency, provider_data=state["provider_data"])


def notify(sandbox: SandboxClient, view: RegistrationView, forged: bool = False) -> dict[str, Any]:
    return sandbox.notification(PROVIDER, view.reference, forged=forged)


def status_path(view: RegistrationView) -> str:
    return f"/collection/v1_0/requesttopay/{view.reference}"


def new_reference() -> str:
    return str(uuid.uuid4())


def tokens(url: str) -> dict[str, int]:
    """The sandbox's token counters (``issued``, ``active``, ``refused``)."""
    response = requests.get(f"{url}/_sandbox/{PROVIDER}/tokens", timeout=5)
    response.raise_for_status()
    counters: dict[str, int] = response.json()
    return counters


# --------------------------------------------------------------------------- extra checks


def token_is_cached(sandbox: SandboxClient, url: str) -> None:
    """Several checks, one token: the client does not mint a token per call."""
    view = create(sandbox, new_reference(), 5000, CURRENCY, "waiting")
    before = tokens(url)["issued"]
    client = make_client(url)
    try:
        outcomes = [client.check(view).outcome for _ in range(4)]
    finally:
        client.close()
    assert outcomes == [Outcome.PENDING] * 4
    assert tokens(url)["issued"] - before == 1
    state = sandbox.get(PROVIDER, view.reference)
    assert (state["check_count"], state["tokens_used"]) == (4, 1)


def expired_token_is_refreshed_once(sandbox: SandboxClient, url: str) -> None:
    """A token MoMo no longer accepts (401) is dropped, a new one fetched once, the call retried."""
    view = create(sandbox, new_reference(), 5000, CURRENCY, "accepted")
    client = make_client(url)
    try:
        assert client.check(view).outcome is Outcome.SUCCEEDED
        before = tokens(url)
        expired = requests.post(f"{url}/_sandbox/{PROVIDER}/tokens/expire", timeout=5).json()["expired"]
        assert expired >= 1
        assert client.check(view).outcome is Outcome.SUCCEEDED  # 401, refresh, retry: invisible to the caller
        assert client.check(view).outcome is Outcome.SUCCEEDED  # the new token is cached in turn
    finally:
        client.close()
    after = tokens(url)
    assert (after["issued"] - before["issued"], after["refused"] - before["refused"]) == (1, 1)
    state = sandbox.get(PROVIDER, view.reference)
    assert (state["check_count"], state["tokens_used"]) == (3, 2)  # the refused GET never reached the payment


def reason_as_string_and_object(sandbox: SandboxClient, url: str) -> None:
    """``reason`` is a string in some markets, ``{code, message}`` in others: both are read."""
    client = make_client(url)
    try:
        as_string = create(sandbox, new_reference(), 5000, CURRENCY, "refused", reason="NOT_ENOUGH_FUNDS")
        answer = client.check(as_string)
        assert (answer.outcome, answer.provider_status) == (Outcome.FAILED, "FAILED")
        assert (answer.provider_code, answer.provider_message) == ("NOT_ENOUGH_FUNDS", "NOT_ENOUGH_FUNDS")
        assert '"reason": "NOT_ENOUGH_FUNDS"' in answer.raw
        as_object = create(
            sandbox, new_reference(), 5000, CURRENCY, "refused", reason="EXPIRED", reason_format="object"
        )
        answer = client.check(as_object)
        assert (answer.outcome, answer.provider_code) == (Outcome.FAILED, "EXPIRED")
        assert answer.provider_message == "EXPIRED: The payer did not approve the request in time."
        assert '"reason": {"code": "EXPIRED"' in answer.raw
    finally:
        client.close()


def not_found_right_after_creation(sandbox: SandboxClient, url: str) -> None:
    """MoMo's 202-then-404 window: ProviderNotFound while it lasts, then the real status."""
    view = create(sandbox, new_reference(), 5000, CURRENCY, "accepted", not_found_checks=2)
    client = make_client(url)
    try:
        for _ in range(2):
            with pytest.raises(ProviderNotFound) as info:
                client.check(view)
            assert info.value.http_status == 404 and info.value.code == "RESOURCE_NOT_FOUND"
            assert view.reference in info.value.message
        answer = client.check(view)
    finally:
        client.close()
    assert (answer.outcome, answer.amount, answer.currency) == (Outcome.SUCCEEDED, 5000, CURRENCY)
    assert answer.provider_transaction_id
    state = sandbox.get(PROVIDER, view.reference)
    assert (state["check_count"], state["not_found_answers"]) == (3, 2)


def _make_client(url: str, **overrides: Any) -> ProviderClient:
    return make_client(url, **overrides)


KIT = Kit(
    name=PROVIDER,
    signed=False,
    make_client=_make_client,
    bad_credentials={"api_key": "wrong-momo-api-key"},
    create=create,
    notify=notify,
    status_path=status_path,
    new_reference=new_reference,
    currency=CURRENCY,
    extra=[
        ("token-cached", token_is_cached),
        ("expired-token-refreshed-once", expired_token_is_refreshed_once),
        ("reason-string-and-object", reason_as_string_and_object),
        ("not-found-window", not_found_right_after_creation),
    ],
)
