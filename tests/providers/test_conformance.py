"""One conformance suite every provider client passes, over real HTTP against the sandbox.

Status mapping (paid, refused, pending, pending then paid), amounts in minor units as the
provider confirms them, callback authentication (authentic, forged), and the error tree:
401 → ProviderAuthError, 404 → ProviderNotFound, 409 → ProviderBadRequest,
429 → ProviderRateLimited, 5xx and timeouts → ProviderTransientError, retried in-call first.
Provider-specific checks (token caching and refresh, signature vectors...) come from each kit.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.base import (
    DeliveryKind,
    ForgedDelivery,
    Outcome,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderClient,
    ProviderNotFound,
    ProviderRateLimited,
    ProviderTransientError,
)
from providers.sandbox import SandboxClient, SandboxServer
from schemas.messages import WebhookEnvelope
from tests.providers.kits import Kit
from tests.providers.support import fresh_sandbox

KITS: list[Kit] = [
    importlib.import_module(f"tests.providers.{path.stem}").KIT
    for path in sorted(Path(__file__).parent.glob("kit_*.py"))
]


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with SandboxServer() as srv:  # every provider's default sandbox credentials
        yield srv


@pytest.fixture
def sandbox(server: SandboxServer) -> Iterator[SandboxClient]:
    yield from fresh_sandbox(server)


@pytest.fixture(params=KITS, ids=lambda kit: kit.name)
def kit(request: pytest.FixtureRequest) -> Kit:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def client(kit: Kit, server: SandboxServer) -> Iterator[ProviderClient]:
    c = kit.make_client(server.url)
    yield c
    c.close()


def test_all_four_providers_have_a_kit() -> None:
    assert sorted(k.name for k in KITS) == ["cinetpay", "mtn_momo", "orange_money", "wave"]


@pytest.mark.parametrize(
    ("fate", "outcome"),
    [("accepted", Outcome.SUCCEEDED), ("refused", Outcome.FAILED), ("waiting", Outcome.PENDING)],
)
def test_status_mapping(kit: Kit, sandbox: SandboxClient, client: ProviderClient, fate: str, outcome: Outcome) -> None:
    view = kit.create(sandbox, kit.new_reference(), 15000, kit.currency, fate)
    answer = client.check(view)
    assert answer.outcome is outcome
    assert answer.reference == view.reference
    assert answer.raw
    if outcome is Outcome.SUCCEEDED:
        # Orange's documented status answer carries no amount: it confirms none (the question named it).
        expected = (None, None) if kit.name == "orange_money" else (15000, kit.currency)
        assert (answer.amount, answer.currency) == expected
        assert answer.registered_amount_asked is (kit.name == "orange_money")
        assert answer.paid_at is None or answer.paid_at.tzinfo is not None


def test_pending_then_paid(kit: Kit, sandbox: SandboxClient, client: ProviderClient) -> None:
    view = kit.create(sandbox, kit.new_reference(), 5000, kit.currency, "waiting_then_accepted", pending_checks=1)
    assert client.check(view).outcome is Outcome.PENDING
    assert client.check(view).outcome is Outcome.SUCCEEDED


def test_confirmed_amount_is_what_the_provider_says(kit: Kit, sandbox: SandboxClient, client: ProviderClient) -> None:
    view = kit.create(sandbox, kit.new_reference(), 5000, kit.currency, "accepted", confirm_amount=100)
    assert client.check(view).amount == 100


def test_authentic_notification_authenticates(kit: Kit, sandbox: SandboxClient, client: ProviderClient) -> None:
    view = kit.create(sandbox, kit.new_reference(), 5000, kit.currency, "accepted")
    envelope = WebhookEnvelope.model_validate(kit.notify(sandbox, view))
    delivery = client.parse_delivery(envelope)
    assert delivery.kind is DeliveryKind.PAYMENT
    assert delivery.reference == view.reference or delivery.lookup is not None
    assert delivery.dedupe_key
    client.authenticate(envelope, delivery, view)
    again = client.parse_delivery(WebhookEnvelope.model_validate(kit.notify(sandbox, view)))
    assert again.dedupe_key == delivery.dedupe_key or kit.name == "cinetpay"


def test_forged_notification_is_refused(kit: Kit, sandbox: SandboxClient, client: ProviderClient) -> None:
    if not kit.signed:
        pytest.skip(f"{kit.name} signs nothing: its callbacks only trigger verification")
    view = kit.create(sandbox, kit.new_reference(), 5000, kit.currency, "accepted")
    envelope = WebhookEnvelope.model_validate(kit.notify(sandbox, view, forged=True))
    delivery = client.parse_delivery(envelope)
    with pytest.raises(ForgedDelivery):
        client.authenticate(envelope, delivery, view)


def test_bad_credentials(kit: Kit, sandbox: SandboxClient, server: SandboxServer) -> None:
    view = kit.create(sandbox, kit.new_reference(), 5000, kit.currency, "accepted")
    bad = kit.make_client(server.url, **kit.bad_credentials)
    try:
        with pytest.raises(ProviderAuthError):
            bad.check(view)
    finally:
        bad.close()


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, ProviderAuthError),
        (404, ProviderNotFound),
        (409, ProviderBadRequest),
        (429, ProviderRateLimited),
        (500, ProviderTransientError),
        (503, ProviderTransientError),
    ],
)
def test_http_error_mapping(
    kit: Kit, sandbox: SandboxClient, client: ProviderClient, status: int, error: type[Exception]
) -> None:
    view = kit.create(sandbox, kit.new_reference(), 5000, kit.currency, "accepted")
    fault = {"status": status, "retry_after": 0} if status == 429 else {"status": status}
    sandbox.add_faults(kit.status_path(view), [fault] * 8)
    with pytest.raises(error):
        client.check(view)


@pytest.mark.parametrize("status", [500, 429])
def test_transient_errors_are_retried_in_the_call(
    kit: Kit, sandbox: SandboxClient, client: ProviderClient, status: int
) -> None:
    view = kit.create(sandbox, kit.new_reference(), 5000, kit.currency, "accepted")
    fault = {"status": status, "retry_after": 0} if status == 429 else {"status": status}
    sandbox.add_faults(kit.status_path(view), [fault])
    assert client.check(view).outcome is Outcome.SUCCEEDED


def test_timeout_is_transient(kit: Kit, sandbox: SandboxClient, server: SandboxServer) -> None:
    view = kit.create(sandbox, kit.new_reference(), 5000, kit.currency, "accepted")
    sandbox.add_faults(kit.status_path(view), [{"delay": 0.6}] * 2)
    slow = kit.make_client(server.url, timeout=(1.0, 0.3), max_attempts=2)
    try:
        with pytest.raises(ProviderTransientError):
            slow.check(view)
    finally:
        slow.close()


def _extras() -> list[tuple[str, object]]:
    return [(f"{k.name}-{name}", fn) for k in KITS for name, fn in k.extra]


@pytest.mark.parametrize(("name", "check"), _extras(), ids=[n for n, _ in _extras()] or None)
def test_provider_specific(name: str, check: object, sandbox: SandboxClient, server: SandboxServer) -> None:
    check(sandbox, server.url)  # type: ignore[operator]
