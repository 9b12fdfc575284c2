"""MtnMomoClient and the MoMo sandbox: parsing (offline), wire format, tokens, callbacks (over HTTP)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from kombu import Connection

from providers.auth import basic_authorization
from providers.base import (
    DeliveryKind,
    ForgedDelivery,
    MalformedDelivery,
    Outcome,
    ProviderAuthError,
    ProviderNotFound,
    ProviderProtocolError,
    RegistrationView,
)
from providers.mtn_momo import MtnMomoClient, parse_reason, parse_status_response
from providers.sandbox import SandboxClient, SandboxError, SandboxServer
from providers.sandbox.mtn_momo import (
    DEFAULT_API_KEY,
    DEFAULT_API_USER,
    DEFAULT_SUBSCRIPTION_KEY,
    MtnMomoConfig,
)
from schemas.messages import WebhookEnvelope
from tests.providers.kit_mtn_momo import make_client, tokens
from tests.providers.support import Received, Receiver, receiving

P = "mtn_momo"
REF = "3f2b8c1e-5d4a-4e6f-9a7b-1c2d3e4f5a6b"
STATUS_BODY = (
    '{"amount": "15000", "currency": "XOF", "financialTransactionId": "363440463", "externalId": "order-1", '
    '"payer": {"partyIdType": "MSISDN", "partyId": "46733123453"}, "payerMessage": "", "payeeNote": "", '
    '"status": "SUCCESSFUL"}'
)


def envelope(
    body: str = STATUS_BODY,
    *,
    path: str = f"/momo/callback/{REF}",
    method: str = "PUT",
    query: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> WebhookEnvelope:
    return WebhookEnvelope.model_validate(
        {
            "schema": "payrecon.webhook/1",
            "provider": P,
            "received_at": datetime.now(UTC).isoformat(),
            "method": method,
            "path": path,
            "query": query or {},
            "headers": {"Content-Type": "application/json", **(headers or {})},
            "body": body,
        }
    )


@pytest.fixture
def offline() -> Iterator[MtnMomoClient]:
    client = MtnMomoClient(
        api_url="http://127.0.0.1:9",
        api_user=DEFAULT_API_USER,
        api_key="secret-api-key",
        subscription_key="secret-subscription-key",
        target_environment="mtnivorycoast",
        callback_host="pay.example.com",
    )
    yield client
    client.close()


@pytest.fixture
def momo(sandbox_server: SandboxServer) -> Iterator[MtnMomoClient]:
    client = make_client(sandbox_server.url)
    yield client
    client.close()


def new_ref() -> str:
    return str(uuid.uuid4())


def view(reference: str, amount: int = 15000, currency: str = "XOF") -> RegistrationView:
    return RegistrationView(reference=reference, amount=amount, currency=currency)


# --------------------------------------------------------------------------- parse_delivery (offline)


def test_reference_from_the_callback_url_path(offline: MtnMomoClient) -> None:
    delivery = offline.parse_delivery(envelope())
    assert delivery.kind is DeliveryKind.PAYMENT
    assert delivery.reference == REF
    assert (delivery.claimed_status, delivery.claimed_amount, delivery.claimed_currency) == ("SUCCESSFUL", 15000, "XOF")
    assert delivery.provider_ids == {"financialTransactionId": "363440463", "externalId": "order-1"}
    assert delivery.lookup is None


def test_reference_lookup_order_body_then_query_then_path(offline: MtnMomoClient) -> None:
    other, third = new_ref(), new_ref()
    body = json.loads(STATUS_BODY) | {"referenceId": other}
    both = envelope(json.dumps(body), query={"reference": third})
    assert offline.parse_delivery(both).reference == other
    for key in ("reference", "referenceId", "ref"):
        assert offline.parse_delivery(envelope(path="/momo/callback", query={key: third})).reference == third
        assert offline.parse_delivery(envelope(query={key: [third]})).reference == third
    assert offline.parse_delivery(envelope(path=f"/momo/callback/{REF}/")).reference == REF


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": "/momo/callback"}, "no reference"),
        ({"path": "/momo/callback/order-17"}, "no reference"),
        ({"body": "status=SUCCESSFUL"}, "not JSON"),
        ({"body": ""}, "not JSON"),
        ({"body": "[1, 2]"}, "not a JSON object"),
        ({"path": "/cb", "query": {"ref": [REF, REF]}}, "given 2 times"),
        ({"path": "/cb", "query": {"ref": "a b"}}, "not a valid reference"),
        ({"body": '{"referenceId": 12, "status": "SUCCESSFUL"}'}, "referenceId is not a string"),
    ],
)
def test_malformed_callbacks(offline: MtnMomoClient, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedDelivery, match=message):
        offline.parse_delivery(envelope(**kwargs))


def test_claims_are_hints_an_unreadable_amount_is_not_fatal(offline: MtnMomoClient) -> None:
    body = json.loads(STATUS_BODY) | {"amount": "10.5", "status": "FAILED", "reason": {"code": "EXPIRED"}}
    delivery = offline.parse_delivery(envelope(json.dumps(body)))
    assert (delivery.reference, delivery.claimed_status) == (REF, "FAILED")
    assert (delivery.claimed_amount, delivery.claimed_currency) == (None, None)
    two_decimals = offline.parse_delivery(envelope('{"amount": "12.50", "currency": "EUR", "status": "PENDING"}'))
    assert (two_decimals.claimed_amount, two_decimals.claimed_currency) == (1250, "EUR")


def test_put_and_post_of_the_same_body_are_one_delivery(offline: MtnMomoClient) -> None:
    put = offline.parse_delivery(envelope(method="PUT"))
    post = offline.parse_delivery(envelope(method="POST"))
    assert put.dedupe_key == post.dedupe_key
    changed = offline.parse_delivery(envelope(STATUS_BODY.replace("SUCCESSFUL", "FAILED")))
    elsewhere = offline.parse_delivery(envelope(path=f"/momo/callback/{new_ref()}"))
    assert len({put.dedupe_key, changed.dedupe_key, elsewhere.dedupe_key}) == 3


# --------------------------------------------------------------------------- authenticate (offline)


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "pay.example.com"},
        {"host": "PAY.example.com:443"},
        {"Host": "10.0.0.5:8000", "X-Forwarded-Host": "pay.example.com"},
        {},
    ],
)
def test_callback_host_sanity_check_accepts(offline: MtnMomoClient, headers: dict[str, str]) -> None:
    env = envelope(headers=headers)
    offline.authenticate(env, offline.parse_delivery(env), None)


@pytest.mark.parametrize(
    "headers",
    [{"Host": "evil.example.com"}, {"Host": "pay.example.com.evil.net"}, {"Host": "x", "X-Forwarded-Host": "evil.io"}],
)
def test_callback_host_sanity_check_refuses(offline: MtnMomoClient, headers: dict[str, str]) -> None:
    env = envelope(headers=headers)
    with pytest.raises(ForgedDelivery, match="not the registered callback host"):
        offline.authenticate(env, offline.parse_delivery(env), view(REF))


def test_callback_host_behind_a_proxy(offline: MtnMomoClient) -> None:
    """What docs/providers.md's proxy section says: a proxy that rewrites Host makes genuine callbacks forged; one
    that passes the original host (Host or an overwritten X-Forwarded-Host) does not."""
    rewritten = envelope(headers={"Host": "127.0.0.1:8000"})
    with pytest.raises(ForgedDelivery, match=r"'127\.0\.0\.1:8000', not the registered callback host"):
        offline.authenticate(rewritten, offline.parse_delivery(rewritten), view(REF))
    for headers in ({"Host": "pay.example.com"}, {"Host": "127.0.0.1:8000", "X-Forwarded-Host": "pay.example.com"}):
        kept = envelope(headers=headers)
        offline.authenticate(kept, offline.parse_delivery(kept), view(REF))
    # An appended X-Forwarded-Host: its first value (the client's) is the one read, hence "overwrite".
    appended = envelope(headers={"Host": "127.0.0.1:8000", "X-Forwarded-Host": "evil.io, pay.example.com"})
    with pytest.raises(ForgedDelivery):
        offline.authenticate(appended, offline.parse_delivery(appended), view(REF))


def test_without_callback_host_everything_is_accepted(momo: MtnMomoClient) -> None:
    env = envelope(headers={"Host": "anything.invalid"})
    momo.authenticate(env, momo.parse_delivery(env), None)  # MoMo signs nothing: nothing to refuse


# --------------------------------------------------------------------------- status answers (offline)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("APPROVAL_REJECTED", ("APPROVAL_REJECTED", "APPROVAL_REJECTED")),
        ({"code": "EXPIRED", "message": "Timed out"}, ("EXPIRED", "EXPIRED: Timed out")),
        ({"code": "PAYER_NOT_FOUND"}, ("PAYER_NOT_FOUND", "PAYER_NOT_FOUND")),
        ({"message": "something"}, (None, "something")),
        (None, (None, None)),
        ("", (None, None)),
    ],
)
def test_parse_reason(value: object, expected: tuple[str | None, str | None]) -> None:
    assert parse_reason(value) == expected


def test_status_answer_parsing() -> None:
    paid = parse_status_response(REF, STATUS_BODY)
    assert (paid.outcome, paid.amount, paid.currency, paid.provider_transaction_id) == (
        Outcome.SUCCEEDED,
        15000,
        "XOF",
        "363440463",
    )
    assert (paid.paid_at, paid.provider_code, paid.raw) == (None, None, STATUS_BODY)
    number = parse_status_response(REF, '{"amount": 12.5, "currency": "EUR", "status": "SUCCESSFUL"}')
    assert number.amount == 1250  # a JSON number goes through Decimal, never float
    pending = parse_status_response(REF, '{"amount": "100", "currency": "XOF", "status": "PENDING"}')
    assert (pending.outcome, pending.provider_transaction_id) == (Outcome.PENDING, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<html>gateway</html>", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"amount": "1", "currency": "XOF", "status": "REJECTED"}', "unknown status"),
        ('{"amount": "1", "currency": "XOF"}', "unknown status"),
        ('{"status": "SUCCESSFUL"}', "without amount"),
        ('{"amount": "10.5", "currency": "XOF", "status": "SUCCESSFUL"}', "10.5"),
        ('{"amount": "10", "currency": "ABC", "status": "PENDING"}', "not supported"),
        ('{"amount": true, "currency": "XOF", "status": "SUCCESSFUL"}', "type bool"),
    ],
)
def test_unreadable_status_answers_are_protocol_errors(text: str, message: str) -> None:
    with pytest.raises(ProviderProtocolError, match=message):
        parse_status_response(REF, text)


def test_repr_and_errors_hide_secrets(sandbox: SandboxClient, sandbox_server: SandboxServer) -> None:
    client = make_client(sandbox_server.url, api_key="top-secret-key", subscription_key="sub-secret")
    try:
        assert "secret" not in repr(client) and DEFAULT_API_USER in repr(client)
        with pytest.raises(ProviderAuthError) as info:
            client.check(view(new_ref()))
        assert info.value.http_status == 401
        assert "secret" not in str(info.value) and basic_authorization(DEFAULT_API_USER, "top-secret-key") not in str(
            info.value
        )
    finally:
        client.close()


# --------------------------------------------------------------------------- wire API (sandbox)


def _token(url: str) -> str:
    response = requests.post(
        f"{url}/collection/token/",
        headers={
            "Authorization": basic_authorization(DEFAULT_API_USER, DEFAULT_API_KEY),
            "Ocp-Apim-Subscription-Key": DEFAULT_SUBSCRIPTION_KEY,
        },
        timeout=5,
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["token_type"], body["expires_in"]) == ("access_token", 3600)
    return str(body["access_token"])


def _request_to_pay(url: str, reference: str, *, callback_url: str | None = None, **body: Any) -> requests.Response:
    headers = {
        "Authorization": f"Bearer {_token(url)}",
        "Ocp-Apim-Subscription-Key": DEFAULT_SUBSCRIPTION_KEY,
        "X-Target-Environment": "sandbox",
        "X-Reference-Id": reference,
    }
    if callback_url:
        headers["X-Callback-Url"] = callback_url
    payload = {
        "amount": "1500",
        "currency": "XOF",
        "externalId": "order-42",
        "payer": {"partyIdType": "MSISDN", "partyId": "46733123453"},
        "payerMessage": "Abonnement",
        "payeeNote": "payrecon",
    } | body
    return requests.post(f"{url}/collection/v1_0/requesttopay", json=payload, headers=headers, timeout=5)


def test_request_to_pay_then_status(sandbox: SandboxClient, sandbox_server: SandboxServer, momo: MtnMomoClient) -> None:
    reference = new_ref()
    created = _request_to_pay(sandbox_server.url, reference)
    assert (created.status_code, created.content) == (202, b"")
    assert momo.check(view(reference, 1500)).outcome is Outcome.PENDING
    paid = momo.check(view(reference, 1500))
    assert (paid.outcome, paid.amount, paid.currency) == (Outcome.SUCCEEDED, 1500, "XOF")
    assert paid.provider_transaction_id == sandbox.get(P, reference)["financial_transaction_id"]
    assert json.loads(paid.raw)["externalId"] == "order-42"
    again = _request_to_pay(sandbox_server.url, reference)
    assert (again.status_code, again.json()["code"]) == (409, "RESOURCE_ALREADY_EXIST")


@pytest.mark.parametrize(
    ("party_id", "reason"),
    [("46733123450", "INTERNAL_PROCESSING_ERROR"), ("46733123451", "APPROVAL_REJECTED"), ("46733123452", "EXPIRED")],
)
def test_sandbox_payer_numbers_fail(
    sandbox: SandboxClient, sandbox_server: SandboxServer, momo: MtnMomoClient, party_id: str, reason: str
) -> None:
    reference = new_ref()
    _request_to_pay(sandbox_server.url, reference, payer={"partyIdType": "MSISDN", "partyId": party_id})
    assert momo.check(view(reference)).outcome is Outcome.PENDING
    failed = momo.check(view(reference))
    assert (failed.outcome, failed.provider_code, failed.amount) == (Outcome.FAILED, reason, 1500)


@pytest.mark.parametrize(
    ("reference", "body", "status"),
    [
        ("not-a-uuid", {}, 400),
        ("3f2b8c1e-5d4a-1e6f-9a7b-1c2d3e4f5a6b", {}, 400),  # a UUID, but version 1
        (None, {"amount": 1.5}, 400),
        (None, {"payer": {"partyIdType": "PHONE", "partyId": "1"}}, 400),
        (None, {"payerMessage": "a & b"}, 400),
        (None, {"currency": "ABC"}, 500),
        (None, {"amount": "10.5"}, 400),
    ],
)
def test_request_to_pay_validation(
    sandbox: SandboxClient, sandbox_server: SandboxServer, reference: str | None, body: dict[str, Any], status: int
) -> None:
    assert _request_to_pay(sandbox_server.url, reference or new_ref(), **body).status_code == status


def test_wire_credentials(sandbox: SandboxClient, sandbox_server: SandboxServer) -> None:
    url = f"{sandbox_server.url}/collection/v1_0/requesttopay/{new_ref()}"
    token = _token(sandbox_server.url)
    good = {
        "Authorization": f"Bearer {token}",
        "Ocp-Apim-Subscription-Key": DEFAULT_SUBSCRIPTION_KEY,
        "X-Target-Environment": "sandbox",
    }
    assert requests.get(url, headers=good, timeout=5).json()["code"] == "RESOURCE_NOT_FOUND"
    wrong_key = requests.get(url, headers=good | {"Ocp-Apim-Subscription-Key": "nope"}, timeout=5)
    assert wrong_key.status_code == 401 and "invalid subscription key" in wrong_key.json()["message"]
    assert requests.get(url, headers=good | {"Authorization": "Bearer nope"}, timeout=5).status_code == 401
    wrong_env = requests.get(url, headers=good | {"X-Target-Environment": "mtnghana"}, timeout=5)
    assert (wrong_env.status_code, wrong_env.json()["code"]) == (500, "NOT_ALLOWED_TARGET_ENVIRONMENT")
    login = requests.post(
        f"{sandbox_server.url}/collection/token/",
        headers={"Authorization": basic_authorization(DEFAULT_API_USER, "wrong"), "Ocp-Apim-Subscription-Key": "x"},
        timeout=5,
    )
    assert login.status_code == 401


def test_wrong_target_environment_is_a_configuration_error(
    sandbox: SandboxClient, sandbox_server: SandboxServer
) -> None:
    reference = new_ref()
    sandbox.create(P, reference=reference, amount=5000)
    client = make_client(sandbox_server.url, target_environment="mtnivorycoast")
    try:
        with pytest.raises(ProviderAuthError) as info:
            client.check(view(reference, 5000))
    finally:
        client.close()
    assert (info.value.http_status, info.value.code) == (500, "NOT_ALLOWED_TARGET_ENVIRONMENT")
    assert not info.value.retryable


def test_login_failed_with_http_500_is_a_configuration_error(
    sandbox: SandboxClient, sandbox_server: SandboxServer
) -> None:
    reference = new_ref()
    sandbox.create(P, reference=reference, amount=5000)
    body = '{"error": "login_failed"}'
    sandbox.add_faults("/collection/token/", [{"status": 500, "body": body, "content_type": "application/json"}] * 3)
    client = make_client(sandbox_server.url)
    try:
        with pytest.raises(ProviderAuthError) as info:
            client.check(view(reference, 5000))
    finally:
        client.close()
    assert (info.value.http_status, info.value.code) == (500, "login_failed")
    assert sandbox.get(P, reference)["check_count"] == 0


def test_token_endpoint_outage_is_retried(sandbox: SandboxClient, sandbox_server: SandboxServer) -> None:
    reference = new_ref()
    sandbox.create(P, reference=reference, amount=5000)
    sandbox.add_faults("/collection/token/", [{"status": 503}])
    before = tokens(sandbox_server.url)["issued"]
    client = make_client(sandbox_server.url)
    try:
        assert client.check(view(reference, 5000)).outcome is Outcome.SUCCEEDED
    finally:
        client.close()
    assert tokens(sandbox_server.url)["issued"] - before == 1


def test_one_401_on_the_status_call_refreshes_the_token(
    sandbox: SandboxClient, sandbox_server: SandboxServer, momo: MtnMomoClient
) -> None:
    reference = new_ref()
    sandbox.create(P, reference=reference, amount=5000, faults=[{"status": 401}])
    before = tokens(sandbox_server.url)["issued"]
    assert momo.check(view(reference, 5000)).outcome is Outcome.SUCCEEDED
    assert tokens(sandbox_server.url)["issued"] - before == 2
    assert sandbox.get(P, reference)["tokens_used"] == 2


def test_403_is_not_a_reason_to_refresh(
    sandbox: SandboxClient, sandbox_server: SandboxServer, momo: MtnMomoClient
) -> None:
    reference = new_ref()
    sandbox.create(P, reference=reference, amount=5000, faults=[{"status": 403}])
    before = tokens(sandbox_server.url)["issued"]
    with pytest.raises(ProviderAuthError) as info:
        momo.check(view(reference, 5000))
    assert info.value.http_status == 403
    assert tokens(sandbox_server.url)["issued"] - before == 1


def test_concurrent_checks_share_one_token(sandbox: SandboxClient, sandbox_server: SandboxServer) -> None:
    references = [new_ref() for _ in range(8)]
    for reference in references:
        sandbox.create(P, reference=reference, amount=5000, fate="waiting")
    before = tokens(sandbox_server.url)["issued"]
    client = make_client(sandbox_server.url)
    outcomes: list[Outcome] = []
    barrier = threading.Barrier(len(references))

    def run(reference: str) -> None:
        barrier.wait(5)
        outcomes.append(client.check(view(reference, 5000)).outcome)

    threads = [threading.Thread(target=run, args=(reference,)) for reference in references]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    finally:
        client.close()
    assert outcomes == [Outcome.PENDING] * len(references)
    assert tokens(sandbox_server.url)["issued"] - before == 1


# --------------------------------------------------------------------------- clocks: token expiry, 404 window


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clocked() -> Iterator[tuple[SandboxServer, FakeClock]]:
    clock = FakeClock()
    config = MtnMomoConfig(token_ttl=120, not_found_window=30, clock=clock)
    with SandboxServer(mtn_momo=config) as server:
        yield server, clock


def test_token_lives_until_shortly_before_expires_in(clocked: tuple[SandboxServer, FakeClock]) -> None:
    server, sandbox_clock = clocked
    client_clock = FakeClock(sandbox_clock.now)
    reference = new_ref()
    with SandboxClient(server.url) as sandbox:
        sandbox.create(P, reference=reference, amount=5000, fate="waiting")
        sandbox_clock.now += 31  # past the 404 window
    client = make_client(server.url, clock=client_clock)
    try:
        client.check(view(reference, 5000))
        client_clock.now += 59  # 120 s token, refreshed 60 s early: still good
        client.check(view(reference, 5000))
        assert tokens(server.url) == {"issued": 1, "active": 1, "refused": 0}
        client_clock.now += 2  # inside the margin: a new token before MoMo refuses the old one
        client.check(view(reference, 5000))
        assert tokens(server.url)["issued"] == 2 and tokens(server.url)["refused"] == 0
        sandbox_clock.now += 500  # the sandbox's clock runs ahead: it refuses the cached token
        client.check(view(reference, 5000))
    finally:
        client.close()
    assert tokens(server.url) == {"issued": 3, "active": 1, "refused": 1}


def test_not_found_window_after_creation(clocked: tuple[SandboxServer, FakeClock]) -> None:
    server, clock = clocked
    reference = new_ref()
    client = make_client(server.url, clock=clock)
    try:
        with SandboxClient(server.url) as sandbox:
            sandbox.create(P, reference=reference, amount=5000)
            clock.now += 29
            with pytest.raises(ProviderNotFound, match="not found"):
                client.check(view(reference, 5000))
            clock.now += 2
            assert client.check(view(reference, 5000)).outcome is Outcome.SUCCEEDED
            assert sandbox.get(P, reference)["not_found_answers"] == 1
    finally:
        client.close()


def test_a_token_refused_twice_is_an_auth_error() -> None:
    with SandboxServer(mtn_momo=MtnMomoConfig(token_ttl=0)) as server, SandboxClient(server.url) as sandbox:
        reference = new_ref()
        sandbox.create(P, reference=reference, amount=5000)
        client = make_client(server.url)
        try:
            with pytest.raises(ProviderAuthError) as info:
                client.check(view(reference, 5000))
        finally:
            client.close()
        assert info.value.http_status == 401
        assert tokens(server.url) == {"issued": 2, "active": 0, "refused": 2}  # one refresh, never a loop


# --------------------------------------------------------------------------- callbacks (sandbox)


@pytest.fixture
def listener() -> Iterator[Receiver]:
    """A merchant's callback listener: accepts PUT and POST, answers 200."""
    with receiving("", ("PUT", "POST")) as rec:
        yield rec


def _received_envelope(received: Received) -> WebhookEnvelope:
    path, _, query = received.path.partition("?")
    return WebhookEnvelope.model_validate(
        {
            "schema": "payrecon.webhook/1",
            "provider": P,
            "received_at": datetime.now(UTC).isoformat(),
            "method": received.method,
            "path": path,
            "query": dict(pair.split("=", 1) for pair in query.split("&") if pair),
            "headers": received.headers,
            "body": received.body,
        }
    )


def test_status_change_is_called_back_with_a_put(
    sandbox: SandboxClient, sandbox_server: SandboxServer, momo: MtnMomoClient, listener: Receiver
) -> None:
    reference = new_ref()
    callback_url = f"{listener.base}/momo/callback/{reference}"
    _request_to_pay(sandbox_server.url, reference, callback_url=callback_url)
    assert momo.check(view(reference, 1500)).outcome is Outcome.PENDING
    assert momo.check(view(reference, 1500)).outcome is Outcome.SUCCEEDED  # the fate turns final: callback
    (received,) = listener.wait(1)
    assert (received.method, received.path) == ("PUT", f"/momo/callback/{reference}")
    env = _received_envelope(received)
    delivery = momo.parse_delivery(env)
    assert (delivery.reference, delivery.claimed_status, delivery.claimed_amount) == (reference, "SUCCESSFUL", 1500)
    assert "referenceId" not in json.loads(received.body)  # MTN's body does not name the X-Reference-Id
    momo.authenticate(env, delivery, view(reference, 1500))
    record = sandbox.get(P, reference)["notifications"][0]
    assert (record["method"], record["status"]) == ("PUT", "SUCCESSFUL")


def test_callbacks_that_never_come(sandbox: SandboxClient, listener: Receiver) -> None:
    silent, loud = new_ref(), new_ref()
    for reference, callbacks in ((silent, False), (loud, True)):
        url = f"{listener.base}/momo/callback/{reference}"
        sandbox.create(P, reference=reference, amount=5000, fate="waiting", notify_url=url, callbacks=callbacks)
        sandbox.set_status(P, reference, "FAILED")
    (received,) = listener.wait(1)
    assert received.path == f"/momo/callback/{loud}"
    assert json.loads(received.body)["reason"] == "APPROVAL_REJECTED"
    assert sandbox.get(P, silent)["notifications"] == []
    assert sandbox.get(P, silent)["status"] == "FAILED"


def test_notification_route(sandbox: SandboxClient, momo: MtnMomoClient, listener: Receiver) -> None:
    reference = new_ref()
    sandbox.create(P, reference=reference, amount=1250, currency="EUR", fate="waiting")
    target = f"{listener.base}/hooks/momo?ref={reference}"
    put = sandbox.notification(P, reference, deliver_to=target)
    post = sandbox.notification(P, reference, method="POST")
    assert (put["method"], put["path"], put["query"]) == ("PUT", "/hooks/momo", {"ref": reference})
    assert put["headers"]["Host"] == listener.base.removeprefix("http://")
    assert (post["method"], post["path"], post["query"]) == ("POST", f"/momo/callback/{reference}", {})
    deliveries = [momo.parse_delivery(WebhookEnvelope.model_validate(e)) for e in (put, post)]
    assert {d.reference for d in deliveries} == {reference}
    assert deliveries[0].dedupe_key == deliveries[1].dedupe_key
    assert (deliveries[0].claimed_amount, deliveries[0].claimed_currency) == (1250, "EUR")
    (received,) = listener.wait(1)
    assert (received.method, received.path, received.body) == ("PUT", f"/hooks/momo?ref={reference}", put["body"])


def test_forged_and_tampered_notifications(
    sandbox: SandboxClient, sandbox_server: SandboxServer, momo: MtnMomoClient
) -> None:
    reference = new_ref()
    sandbox.create(P, reference=reference, amount=5000, fate="refused")
    forged = WebhookEnvelope.model_validate(sandbox.notification(P, reference, forged=True))
    delivery = momo.parse_delivery(forged)
    assert delivery.claimed_status == "SUCCESSFUL"
    momo.authenticate(forged, delivery, view(reference, 5000))  # undetectable without a callback host...
    assert momo.check(view(reference, 5000)).outcome is Outcome.FAILED  # ...which is why the API decides
    guarded = make_client(sandbox_server.url, callback_host="127.0.0.1")
    try:
        with pytest.raises(ForgedDelivery):
            guarded.authenticate(forged, delivery, view(reference, 5000))
    finally:
        guarded.close()
    tampered = sandbox.notification(P, reference, tamper={"amount": "1", "referenceId": "order-9"})
    parsed = momo.parse_delivery(WebhookEnvelope.model_validate(tampered))
    assert (parsed.reference, parsed.claimed_amount, parsed.claimed_status) == ("order-9", 1, "FAILED")


# --------------------------------------------------------------------------- control API


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"reference": "order-1"}, 400),
        ({"reference": str(uuid.uuid1())}, 400),
        ({"colour": "red"}, 400),
        ({"reason_format": "xml"}, 400),
        ({"payer": "+22501"}, 400),
        ({"callbacks": "no"}, 400),
        ({"notify_url": "ftp://x"}, 400),
        ({"notify_url": "enqueue"}, 400),  # this sandbox has no broker
    ],
)
def test_control_validation(sandbox: SandboxClient, fields: dict[str, Any], status: int) -> None:
    with pytest.raises(SandboxError) as info:
        sandbox.create(P, **({"reference": new_ref(), "amount": 5000} | fields))
    assert info.value.status == status


def test_control_state_and_duplicates(sandbox: SandboxClient) -> None:
    reference = new_ref()
    state = sandbox.create(P, reference=reference, amount=5000, external_id="order-77")
    assert (state["reference"], state["status"], state["provider_data"]) == (
        reference,
        "SUCCESSFUL",
        {"external_id": "order-77"},
    )
    with pytest.raises(SandboxError) as info:
        sandbox.create(P, reference=reference, amount=5000)
    assert info.value.status == 409
    with pytest.raises(SandboxError) as info:
        sandbox.set_status(P, reference, "ACCEPTED")
    assert info.value.status == 400
    with pytest.raises(SandboxError) as info:
        sandbox.get(P, new_ref())
    assert info.value.status == 404


def test_enqueue_on_the_broker(momo: MtnMomoClient) -> None:
    """``notify_url: "enqueue"`` and ``"enqueue": true`` publish ingest tasks (kombu's in-process transport)."""
    with (
        SandboxServer(broker_url="memory://") as server,
        SandboxClient(server.url) as sandbox,
        Connection("memory://") as connection,
    ):
        queue = connection.SimpleQueue("webhooks")
        queue.clear()
        reference = new_ref()
        sandbox.create(P, reference=reference, amount=5000, fate="waiting", notify_url="enqueue")
        manual = sandbox.notification(P, reference, enqueue=True)
        sandbox.set_status(P, reference, "SUCCESSFUL")
        messages = [queue.get(timeout=5) for _ in range(2)]
        for message in messages:
            message.ack()
        queue.close()
        envelopes = [message.payload[1]["envelope"] for message in messages]
        assert {message.headers["task"] for message in messages} == {"payrecon.ingest_webhook"}
        assert envelopes[0] == manual
        deliveries = [momo.parse_delivery(WebhookEnvelope.model_validate(e)) for e in envelopes]
        assert [(d.reference, d.claimed_status) for d in deliveries] == [
            (reference, "PENDING"),
            (reference, "SUCCESSFUL"),
        ]
        assert envelopes[1]["method"] == "PUT" and envelopes[1]["path"] == f"/momo/callback/{reference}"
        done = threading.Event()
        for _ in range(250):  # the auto record is completed by the publishing thread
            records = sandbox.get(P, reference)["notifications"]
            if len(records) == 2 and "enqueued" in records[1]:
                break
            done.wait(0.02)
        assert [(r["kind"], r["enqueued"]) for r in records] == [("manual", True), ("auto", True)]
