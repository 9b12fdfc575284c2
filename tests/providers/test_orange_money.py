"""OrangeMoneyClient and the Orange Money sandbox, over real HTTP (no mocks of requests)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from providers.auth import basic_authorization
from providers.base import (
    DeliveryKind,
    ForgedDelivery,
    MalformedDelivery,
    Outcome,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderClient,
    ProviderNotFound,
    ProviderProtocolError,
    ProviderRefusedQuestion,
    ProviderTransientError,
    RegistrationView,
)
from providers.orange_money import (
    NotifUrl,
    OrangeMoneyClient,
    parse_status_response,
    parse_token_response,
    reference_of,
)
from providers.sandbox import SandboxClient, SandboxError, SandboxServer
from providers.sandbox.orange_money import OrangeMoneyConfig
from schemas.messages import WebhookEnvelope
from tests.providers.kit_orange_money import DEFAULTS, STATUS_PATH, create, make_client, new_reference, tokens

TOKEN_PATH = "/oauth/v3/token"
INIT_PATH = f"/orange-money-webpay/{DEFAULTS.country}/v1/webpayment"


@pytest.fixture
def orange(sandbox_server: SandboxServer) -> Iterator[OrangeMoneyClient]:
    client = make_client(sandbox_server.url)
    yield client
    client.close()


@pytest.fixture
def ref() -> str:
    return new_reference()


def envelope(body: str | dict[str, Any], path: str = "/orange/notify/OM-1", **extra: Any) -> WebhookEnvelope:
    raw = body if isinstance(body, str) else json.dumps(body)
    return WebhookEnvelope.model_validate(
        {
            "schema": "payrecon.webhook/1",
            "provider": "orange_money",
            "received_at": "2026-11-21T10:00:00+00:00",
            "method": "POST",
            "path": path,
            "headers": {"Content-Type": "application/json"},
            "body": raw,
            **extra,
        }
    )


def bearer(url: str) -> str:
    answer = requests.post(
        f"{url}{TOKEN_PATH}",
        headers={"Authorization": basic_authorization(DEFAULTS.client_id, DEFAULTS.client_secret)},
        data={"grant_type": "client_credentials"},
        timeout=5,
    )
    assert answer.status_code == 200
    return str(answer.json()["access_token"])


def init_body(order_id: str, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {
        "merchant_key": DEFAULTS.merchant_key,
        "currency": "OUV",
        "order_id": order_id,
        "amount": 1500,
        "return_url": "https://shop.example/return",
        "cancel_url": "https://shop.example/cancel",
        "notif_url": f"https://shop.example/orange/notify/{order_id}",
        "lang": "fr",
        "reference": "Ma Boutique",
    }
    return body | (changes or {})


# --------------------------------------------------------------------------- OAuth wire API


def test_token_endpoint_shape_and_refusals(sandbox_server: SandboxServer) -> None:
    url = f"{sandbox_server.url}{TOKEN_PATH}"
    good = basic_authorization(DEFAULTS.client_id, DEFAULTS.client_secret)
    answer = requests.post(url, headers={"Authorization": good}, data={"grant_type": "client_credentials"}, timeout=5)
    body = answer.json()
    assert (answer.status_code, body["token_type"], body["expires_in"]) == (200, "Bearer", "7776000")
    assert isinstance(body["access_token"], str) and len(body["access_token"]) >= 20

    wrong = basic_authorization(DEFAULTS.client_id, "not-the-secret")
    for headers in ({"Authorization": wrong}, {}, {"Authorization": "Basic !!!"}):
        refused = requests.post(url, headers=headers, data={"grant_type": "client_credentials"}, timeout=5)
        assert (refused.status_code, refused.json()["error"]) == (401, "invalid_client")
    other_grant = requests.post(url, headers={"Authorization": good}, data={"grant_type": "password"}, timeout=5)
    assert (other_grant.status_code, other_grant.json()["error"]) == (400, "unsupported_grant_type")


def test_business_calls_need_a_valid_bearer(sandbox_server: SandboxServer, sandbox: SandboxClient, ref: str) -> None:
    view = create(sandbox, ref, 5000, "XOF", "accepted")
    body = {"order_id": ref, "amount": 5000, "pay_token": view.provider_data["pay_token"]}
    url = f"{sandbox_server.url}{STATUS_PATH}"
    cases = [({}, 40), ({"Authorization": "Bearer not-issued"}, 41), ({"Authorization": "Basic abc"}, 40)]
    for headers, code in cases:
        answer = requests.post(url, json=body, headers=headers, timeout=5)
        assert (answer.status_code, answer.json()["code"]) == (401, code)
    token = bearer(sandbox_server.url)
    ok = requests.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert ok.status_code == 201
    assert ok.json() == {"status": "SUCCESS", "order_id": ref, "txnid": ok.json()["txnid"]}  # Orange's documented shape
    requests.post(f"{sandbox_server.url}/_sandbox/orange_money/tokens/expire", timeout=5).raise_for_status()
    expired = requests.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert (expired.status_code, expired.json()["code"], expired.json()["message"]) == (401, 42, "Expired credentials")
    # Expired (401) and unauthenticated calls never reached the order.
    assert sandbox.get("orange_money", ref)["check_count"] == 1


# --------------------------------------------------------------------------- init, then check


def test_init_then_check_then_force(
    sandbox_server: SandboxServer, sandbox: SandboxClient, orange: OrangeMoneyClient, ref: str
) -> None:
    token = bearer(sandbox_server.url)
    answer = requests.post(
        f"{sandbox_server.url}{INIT_PATH}", json=init_body(ref), headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    assert answer.status_code == 201
    init = answer.json()
    assert (init["status"], init["message"]) == (201, "OK")
    assert len(init["pay_token"]) == 64 and len(init["notif_token"]) == 32
    page = requests.get(init["payment_url"], timeout=5).json()
    assert page["transaction"]["order_id"] == ref and "SUCCESS" in page["how_to_pay"]

    # What the merchant registers: OUV is dev play money, booked by the sandbox as XOF.
    view = RegistrationView(
        reference=ref,
        amount=1500,
        currency="XOF",
        provider_data={"pay_token": init["pay_token"], "notif_token": init["notif_token"]},
    )
    first, second = orange.check(view), orange.check(view)
    assert [(s.outcome, s.provider_status) for s in (first, second)] == [
        (Outcome.PENDING, "INITIATED"),
        (Outcome.PENDING, "PENDING"),
    ]
    assert first.amount is None and first.provider_transaction_id is None

    sandbox.set_status("orange_money", ref, "SUCCESS")
    paid = orange.check(view)
    # The documented answer has no amount: none is recorded as confirmed; the question named 1500.
    assert (paid.outcome, paid.amount, paid.currency) == (Outcome.SUCCEEDED, None, None)
    assert paid.registered_amount_asked and set(json.loads(paid.raw)) == {"status", "order_id", "txnid"}
    assert paid.provider_transaction_id and paid.provider_transaction_id.startswith("MP")
    assert paid.paid_at is None  # the answer carries no date; the client never invents one
    state = sandbox.get("orange_money", ref)
    assert (state["status"], state["check_count"], state["wire_currency"]) == ("SUCCESS", 3, "OUV")
    assert state["provider_data"] == view.provider_data
    assert state["init"]["reference"] == "Ma Boutique"


@pytest.mark.parametrize(
    ("changes", "status", "fragment"),
    [
        ({"merchant_key": "not-ours"}, 403, "merchant_key"),
        ({"amount": 12.5}, 400, "amount"),
        ({"amount": 0}, 400, "amount"),
        ({"currency": "EURO"}, 400, "currency"),
        ({"lang": "de"}, 400, "lang"),
        ({"notif_url": "ftp://x"}, 400, "notif_url"),
        ({"order_id": "a b"}, 400, "reference"),
        ({"return_url": ""}, 400, "return_url"),
    ],
)
def test_init_refusals(
    sandbox_server: SandboxServer, ref: str, changes: dict[str, Any], status: int, fragment: str
) -> None:
    token = bearer(sandbox_server.url)
    answer = requests.post(
        f"{sandbox_server.url}{INIT_PATH}",
        json=init_body(ref, changes),
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    assert answer.status_code == status
    assert fragment in answer.json()["description"]


def test_init_reused_order_id_conflicts(sandbox_server: SandboxServer, ref: str) -> None:
    headers = {"Authorization": f"Bearer {bearer(sandbox_server.url)}"}
    first = requests.post(f"{sandbox_server.url}{INIT_PATH}", json=init_body(ref), headers=headers, timeout=5)
    again = requests.post(f"{sandbox_server.url}{INIT_PATH}", json=init_body(ref), headers=headers, timeout=5)
    assert (first.status_code, again.status_code) == (201, 409)


# --------------------------------------------------------------------------- check() answers and errors


def test_status_call_wire_body(sandbox: SandboxClient, orange: OrangeMoneyClient, ref: str) -> None:
    view = create(sandbox, ref, 1200, "USD", "accepted", echo_amount=True)  # a deployment that echoes the amount
    assert orange.status_request(view) == {"order_id": ref, "amount": 12, "pay_token": view.provider_data["pay_token"]}
    answer = orange.check(view)
    assert (answer.amount, answer.currency) == (1200, "USD")  # 12 USD on the wire, minor units here
    assert json.loads(answer.raw)["amount"] == 12


def test_an_echoed_dev_currency_is_read_in_the_registered_one(
    sandbox: SandboxClient, orange: OrangeMoneyClient, ref: str
) -> None:
    view = create(sandbox, ref, 1500, "OUV", "accepted", echo_amount=True)
    answer = orange.check(RegistrationView(ref, 1500, "XOF", view.provider_data))
    assert json.loads(answer.raw)["currency"] == "OUV"  # echoed as on the wire; read in the registered currency
    assert (answer.amount, answer.currency) == (1500, "XOF")


def test_success_without_echo_confirms_no_amount(sandbox: SandboxClient, orange: OrangeMoneyClient, ref: str) -> None:
    """Even when the payer paid another amount: without an echo, the answer says nothing about it."""
    view = create(sandbox, ref, 5000, "XOF", "accepted", confirm_amount=300, echo_amount=False)
    answer = orange.check(view)
    assert (answer.outcome, answer.amount, answer.currency) == (Outcome.SUCCEEDED, None, None)
    assert answer.registered_amount_asked


def test_amount_not_whole_in_major_units_is_refused_offline(orange: OrangeMoneyClient, ref: str) -> None:
    view = RegistrationView(reference=ref, amount=1250, currency="USD", provider_data={"pay_token": "x" * 64})
    with pytest.raises(ProviderBadRequest, match="not a whole number"):
        orange.check(view)
    unknown = RegistrationView(reference=ref, amount=1250, currency="ZZZ", provider_data={"pay_token": "x" * 64})
    with pytest.raises(ProviderBadRequest, match="ZZZ"):
        orange.check(unknown)
    assert orange.tokens_fetched == 0


def test_refused_and_expired_are_failed(sandbox: SandboxClient, orange: OrangeMoneyClient) -> None:
    refused = orange.check(create(sandbox, new_reference(), 5000, "XOF", "refused"))
    expired = orange.check(create(sandbox, new_reference(), 5000, "XOF", "expired"))
    assert (refused.outcome, refused.provider_status, refused.amount) == (Outcome.FAILED, "FAILED", None)
    assert (expired.outcome, expired.provider_status) == (Outcome.FAILED, "EXPIRED")


def test_wrong_pay_token_amount_or_order(sandbox: SandboxClient, orange: OrangeMoneyClient, ref: str) -> None:
    view = create(sandbox, ref, 5000, "XOF", "accepted")
    wrong_token = RegistrationView(ref, 5000, "XOF", {"pay_token": "0" * 64})
    with pytest.raises(ProviderBadRequest, match="pay_token") as bad_token:
        orange.check(wrong_token)
    assert bad_token.value.http_status == 400
    # The registered amount is not the amount the order was initiated with at Orange.
    with pytest.raises(ProviderBadRequest, match="amount does not match"):
        orange.check(RegistrationView(ref, 4000, "XOF", view.provider_data))
    with pytest.raises(ProviderNotFound):
        orange.check(RegistrationView("OM-UNKNOWN", 5000, "XOF", view.provider_data))
    assert sandbox.get("orange_money", ref)["check_count"] == 2


def test_a_400_is_a_refused_question_other_4xx_are_not(
    sandbox: SandboxClient, orange: OrangeMoneyClient, ref: str
) -> None:
    view = create(sandbox, ref, 5000, "XOF", "accepted")
    with pytest.raises(ProviderRefusedQuestion, match="refused the status question about") as refused:
        orange.check(RegistrationView(ref, 5000, "XOF", {"pay_token": "0" * 64}))
    assert (refused.value.http_status, refused.value.retryable) == (400, False)
    sandbox.add_faults(STATUS_PATH, [{"status": 422}, {"status": 409}])
    for _ in range(2):
        with pytest.raises(ProviderBadRequest) as other:
            orange.check(view)
        assert not isinstance(other.value, ProviderRefusedQuestion)


def test_wrong_country_is_not_found(sandbox_server: SandboxServer, sandbox: SandboxClient, ref: str) -> None:
    view = create(sandbox, ref, 5000, "XOF", "accepted")
    client = make_client(sandbox_server.url, country="ci")
    try:
        with pytest.raises(ProviderNotFound) as error:
            client.check(view)
    finally:
        client.close()
    assert error.value.code == "60"


def test_tampered_amount_and_currency_are_reported(sandbox: SandboxClient, orange: OrangeMoneyClient, ref: str) -> None:
    view = create(sandbox, ref, 5000, "XOF", "accepted", confirm_amount=300, confirm_currency="XAF")
    answer = orange.check(view)
    assert (answer.outcome, answer.amount, answer.currency) == (Outcome.SUCCEEDED, 300, "XAF")


def test_per_transaction_faults_and_200_answers(sandbox: SandboxClient, orange: OrangeMoneyClient, ref: str) -> None:
    body = json.dumps({"status": "SUCCESS", "order_id": ref, "txnid": "MP150709.1341.A00073"})
    faults = [{"status": 503}, {"status": 200, "body": body, "content_type": "application/json"}]
    view = create(sandbox, ref, 5000, "XOF", "waiting", faults=faults)
    answer = orange.check(view)  # 503 retried in the call, then an HTTP 200 answer (not 201)
    assert (answer.outcome, answer.amount, answer.provider_transaction_id) == (
        Outcome.SUCCEEDED,
        None,
        "MP150709.1341.A00073",
    )
    assert sandbox.get("orange_money", ref)["check_count"] == 2


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("<html>busy</html>", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"order_id": "X"}', "no status"),
        ('{"status": 201, "message": "OK"}', "no status"),
        ('{"status": "REVERSED"}', "unknown transaction status"),
        ('{"status": "SUCCESS", "order_id": "SOMEONE-ELSE"}', "not"),
        ('{"status": "SUCCESS", "amount": "12.5"}', "decimals"),
        ('{"status": "SUCCESS", "amount": 10, "currency": "ABC"}', "not supported"),
        ('{"status": "SUCCESS", "amount": true}', "type bool"),
    ],
)
def test_unreadable_answers_are_protocol_errors(
    sandbox: SandboxClient, orange: OrangeMoneyClient, ref: str, body: str, fragment: str
) -> None:
    view = create(sandbox, ref, 5000, "XOF", "accepted")
    sandbox.add_faults(STATUS_PATH, [{"status": 201, "body": body, "content_type": "application/json"}])
    with pytest.raises(ProviderProtocolError, match=fragment):
        orange.check(view)


def test_parse_status_response_without_echo() -> None:
    view = RegistrationView("OM-1", 5000, "XOF", {"pay_token": "p"})
    paid = parse_status_response(view, '{"status": "SUCCESS", "order_id": "OM-1", "txnid": "MP1"}', http_status=200)
    # Orange's documented answer: nothing about the amount is recorded as confirmed.
    assert (paid.outcome, paid.amount, paid.currency, paid.provider_transaction_id) == (
        Outcome.SUCCEEDED,
        None,
        None,
        "MP1",
    )
    assert paid.registered_amount_asked
    pending = parse_status_response(view, '{"status": "PENDING", "order_id": "OM-1", "txnid": null}')
    assert (pending.outcome, pending.amount, pending.currency) == (Outcome.PENDING, None, None)


# --------------------------------------------------------------------------- token handling


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"token_type": "Bearer", "access_token": "t1", "expires_in": "7776000"}', ("t1", 7776000.0)),
        ('{"token_type": "Bearer", "access_token": "t2", "expires_in": 3600}', ("t2", 3600.0)),
        ('{"token_type": "bearer", "access_token": "t3"}', ("t3", 3600.0)),
        ('{"access_token": "t4", "expires_in": "soon"}', ("t4", 3600.0)),
    ],
)
def test_parse_token_response(body: str, expected: tuple[str, float]) -> None:
    assert parse_token_response(body) == expected


@pytest.mark.parametrize(
    "body", ["nope", "[]", '{"token_type": "Bearer"}', '{"token_type": "MAC", "access_token": "t", "expires_in": 1}']
)
def test_parse_token_response_refuses(body: str) -> None:
    with pytest.raises(ProviderProtocolError):
        parse_token_response(body)


def test_bad_secret_is_an_auth_error_without_leaking_it(sandbox: SandboxClient, sandbox_server: SandboxServer) -> None:
    view = create(sandbox, new_reference(), 5000, "XOF", "accepted")
    client = make_client(sandbox_server.url, client_secret="very-secret-value")
    try:
        with pytest.raises(ProviderAuthError) as error:
            client.check(view)
    finally:
        client.close()
    text = str(error.value)
    assert "token request refused" in text and "invalid_client" in text and error.value.http_status == 401
    assert "very-secret-value" not in text and "very-secret-value" not in repr(client)
    assert sandbox.get("orange_money", view.reference)["check_count"] == 0


def test_repr_hides_secrets(orange: OrangeMoneyClient) -> None:
    text = repr(orange)
    assert DEFAULTS.client_id in text
    assert DEFAULTS.client_secret not in text and DEFAULTS.merchant_key not in text


def test_401_twice_gives_up_after_one_refresh(sandbox: SandboxClient, orange: OrangeMoneyClient, ref: str) -> None:
    view = create(sandbox, ref, 5000, "XOF", "accepted")
    sandbox.add_faults(STATUS_PATH, [{"status": 401}] * 3)
    with pytest.raises(ProviderAuthError):
        orange.check(view)
    assert orange.tokens_fetched == 2  # the first token, then exactly one refresh
    assert orange.check(view).outcome is Outcome.SUCCEEDED  # the third 401, then a refresh that works
    assert orange.tokens_fetched == 3


def test_403_is_not_refreshed(sandbox: SandboxClient, orange: OrangeMoneyClient, ref: str) -> None:
    view = create(sandbox, ref, 5000, "XOF", "accepted")
    sandbox.add_faults(STATUS_PATH, [{"status": 403}])
    with pytest.raises(ProviderAuthError):
        orange.check(view)
    assert orange.tokens_fetched == 1


def test_token_endpoint_errors(sandbox: SandboxClient, orange: OrangeMoneyClient, ref: str) -> None:
    view = create(sandbox, ref, 5000, "XOF", "accepted")
    sandbox.add_faults(TOKEN_PATH, [{"status": 500}])
    assert orange.check(view).outcome is Outcome.SUCCEEDED  # retried within the token call
    other = make_client(orange.api_url)
    try:
        sandbox.add_faults(TOKEN_PATH, [{"status": 503}] * 3)
        with pytest.raises(ProviderTransientError):
            other.check(view)
        sandbox.add_faults(TOKEN_PATH, [{"status": 200, "body": "<html/>", "content_type": "text/html"}])
        with pytest.raises(ProviderProtocolError, match="token answer"):
            other.check(view)
    finally:
        other.close()


def test_concurrent_checks_share_one_token(sandbox: SandboxClient, sandbox_server: SandboxServer) -> None:
    views = [create(sandbox, new_reference(), 5000, "XOF", "accepted") for _ in range(8)]
    before = tokens(sandbox_server.url)["issued"]
    client = make_client(sandbox_server.url)
    start = threading.Barrier(8)

    def check(view: RegistrationView) -> Outcome:
        start.wait(5)
        return client.check(view).outcome

    try:
        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(check, views))
    finally:
        client.close()
    assert outcomes == [Outcome.SUCCEEDED] * 8
    assert client.tokens_fetched == 1
    assert tokens(sandbox_server.url)["issued"] - before == 1


def test_sandbox_config_credentials_and_ttl() -> None:
    config = OrangeMoneyConfig(
        client_id="id-2", client_secret="secret-2", merchant_key="mk-2", country="ci", token_ttl=120
    )
    with SandboxServer(orange_money=config) as server, SandboxClient(server.url) as sandbox:
        view = create(sandbox, new_reference(), 5000, "XOF", "accepted")
        default = make_client(server.url)  # the default credentials are not this application's
        custom = make_client(server.url, client_id="id-2", client_secret="secret-2", merchant_key="mk-2", country="ci")
        try:
            with pytest.raises(ProviderAuthError):
                default.check(view)
            assert custom.check(view).outcome is Outcome.SUCCEEDED
        finally:
            default.close()
            custom.close()
        assert tokens(server.url)["token_ttl"] == 120


def test_client_satisfies_the_protocol(orange: OrangeMoneyClient) -> None:
    assert isinstance(orange, ProviderClient)
    assert orange.name == "orange_money"
    assert orange.token_url.endswith("/oauth/v3/token")


# --------------------------------------------------------------------------- notifications


def test_parse_delivery_from_the_sandbox(sandbox: SandboxClient, orange: OrangeMoneyClient, ref: str) -> None:
    view = create(sandbox, ref, 5000, "XOF", "accepted")
    raw = sandbox.notification("orange_money", ref)
    assert raw["path"] == f"/orange/notify/{ref}"
    body = json.loads(raw["body"])
    assert body == {"status": "SUCCESS", "notif_token": view.provider_data["notif_token"], "txnid": body["txnid"]}
    delivery = orange.parse_delivery(WebhookEnvelope.model_validate(raw))
    assert (delivery.kind, delivery.reference, delivery.claimed_status) == (DeliveryKind.PAYMENT, ref, "SUCCESS")
    # The token too: if the URL's order is not registered, a token of another order is refused.
    assert delivery.lookup == ("notif_token", view.provider_data["notif_token"])
    assert delivery.provider_ids == {"txnid": body["txnid"]}
    assert delivery.claimed_amount is None  # Orange's notification carries no amount


def test_dedupe_key() -> None:
    client = OrangeMoneyClient(api_url="http://127.0.0.1:9", client_id="i", client_secret="s", merchant_key="m")
    body = {"status": "SUCCESS", "notif_token": "tok", "txnid": "MP1"}
    key = client.parse_delivery(envelope(body)).dedupe_key
    assert client.parse_delivery(envelope(body)).dedupe_key == key
    assert client.parse_delivery(envelope(body, path="/orange/notify/OM-2")).dedupe_key != key
    assert client.parse_delivery(envelope(body | {"status": "FAILED"})).dedupe_key != key
    assert client.parse_delivery(envelope(body, path="/orange/notify")).dedupe_key != key
    client.close()


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/orange/notify/OM-1", {}, "OM-1"),
        ("/hooks/orange/notify/OM%3A7/", {}, "OM:7"),
        ("/orange/notify", {}, None),
        ("/orange/notify/", {}, None),
        ("/orange/callback", {"order_id": "OM-3"}, "OM-3"),
        ("/orange/notify/OM-1", {"reference": ["OM-4"]}, "OM-4"),
        ("/orange/notify/x", {"order_id": "OM-5"}, "OM-5"),
    ],
)
def test_reference_of(path: str, query: dict[str, Any], expected: str | None) -> None:
    body = {"status": "SUCCESS", "notif_token": "tok"}
    assert reference_of(envelope(body, path=path, query=query)) == expected


@pytest.mark.parametrize(
    ("shape", "path", "query", "expected"),
    [
        ("/orange/notif/{order_id}", "/orange/notif/OM-1", {}, "OM-1"),
        ("/orange/notif/{order_id}", "/orange/notif/OM-1/", {}, "OM-1"),
        ("/orange/notif/{order_id}", "/orange/notif/OM%3A7", {}, "OM:7"),
        ("/orange/notif/{order_id}", "/orange/notify/OM-1", {}, None),  # another shape: no order named
        ("/orange/notif/{order_id}", "/prefix/orange/notif/OM-1", {}, None),
        ("/orange/notif/{order_id}", "/orange/notif", {"order_id": "OM-2"}, None),  # the default rules are off
        ("https://shop.example/om/order-{order_id}/cb", "/om/order-OM-3/cb", {}, "OM-3"),
        ("/om/callback?shop=1&order={order_id}", "/anything", {"order": "OM-4"}, "OM-4"),
        ("/om/callback?order={order_id}", "/om/callback", {"order_id": "OM-4"}, None),
    ],
)
def test_reference_of_a_declared_notif_url(shape: str, path: str, query: dict[str, Any], expected: str | None) -> None:
    body = {"status": "SUCCESS", "notif_token": "tok"}
    assert reference_of(envelope(body, path=path, query=query), NotifUrl.parse(shape)) == expected


@pytest.mark.parametrize(
    ("shape", "path", "query", "fragment"),
    [
        ("/orange/notif/{order_id}", "/orange/notif/a%20b", {}, "path's order id is not a valid reference"),
        ("/orange/notif/{order_id}", "/orange/notif/" + "x" * 101, {}, "101 characters long"),
        ("/n?order={order_id}", "/n", {"order": ["a", "b"]}, "2 times"),
        ("/n?order={order_id}", "/n", {"order": "../x"}, "query parameter order is not a valid reference"),
    ],
)
def test_declared_notif_url_with_a_bad_order_id_is_malformed(
    shape: str, path: str, query: dict[str, Any], fragment: str
) -> None:
    client = OrangeMoneyClient(
        api_url="http://127.0.0.1:9", client_id="i", client_secret="s", merchant_key="m", notif_url=shape
    )
    with pytest.raises(MalformedDelivery, match=fragment):
        client.parse_delivery(envelope({"status": "SUCCESS", "notif_token": "t"}, path=path, query=query))
    client.close()


def test_a_bad_notif_url_shape_is_refused_by_the_client() -> None:
    with pytest.raises(ValueError, match="exactly once"):
        OrangeMoneyClient(api_url="http://127.0.0.1:9", client_id="i", client_secret="s", merchant_key="m",
                          notif_url="/orange/notif")  # fmt: skip


def test_sandbox_notifications_follow_the_merchants_notif_url(
    sandbox_server: SandboxServer, sandbox: SandboxClient, ref: str
) -> None:
    """Orange posts to whatever notif_url the merchant chose: the envelopes carry its path and query."""
    token = bearer(sandbox_server.url)
    shape = {"notif_url": f"https://shop.example/om/callback?shop=7&order={ref}"}
    answer = requests.post(f"{sandbox_server.url}{INIT_PATH}", json=init_body(ref, shape),
                           headers={"Authorization": f"Bearer {token}"}, timeout=5)  # fmt: skip
    assert answer.status_code == 201
    raw = sandbox.notification("orange_money", ref)
    assert (raw["path"], raw["query"]) == ("/om/callback", {"shop": "7", "order": ref})
    other = new_reference()
    state = sandbox.create("orange_money", reference=other, amount=5000, notif_url="/orange/notif/{order_id}/")
    assert state["notif_url"] == "/orange/notif/{order_id}/"
    assert sandbox.notification("orange_money", other)["path"] == f"/orange/notif/{other}/"
    assert sandbox.notification("orange_money", other, path=f"/n?order_id={other}")["query"] == {"order_id": other}
    with pytest.raises(SandboxError, match="notif_url"):
        sandbox.create("orange_money", reference=new_reference(), amount=5000, notif_url="ftp://x/{order_id}")


@pytest.mark.parametrize(
    ("body", "path", "query", "fragment"),
    [
        ("status=SUCCESS&notif_token=x", "/orange/notify/OM-1", {}, "not JSON"),
        ('["SUCCESS"]', "/orange/notify/OM-1", {}, "not a JSON object"),
        ('{"status": "SUCCESS", "txnid": "MP1"}', "/orange/notify/OM-1", {}, "missing notif_token"),
        ('{"status": "SUCCESS", "notif_token": ""}', "/orange/notify/OM-1", {}, "missing notif_token"),
        ('{"status": "SUCCESS", "notif_token": 12}', "/orange/notify/OM-1", {}, "missing notif_token"),
        ('{"status": 200, "notif_token": "t"}', "/orange/notify/OM-1", {}, "status must be a string"),
        ('{"status": "SUCCESS", "notif_token": "t"}', "/orange/notify/a%20b", {}, "path"),
        ('{"status": "SUCCESS", "notif_token": "t"}', "/n", {"order_id": ["a", "b"]}, "2 times"),
        ('{"status": "SUCCESS", "notif_token": "t"}', "/n", {"order_id": "../x y"}, "order_id"),
    ],
)
def test_malformed_notifications(body: str, path: str, query: dict[str, Any], fragment: str) -> None:
    client = OrangeMoneyClient(api_url="http://127.0.0.1:9", client_id="i", client_secret="s", merchant_key="m")
    with pytest.raises(MalformedDelivery, match=fragment):
        client.parse_delivery(envelope(body, path=path, query=query))
    client.close()


def test_forged_and_tampered_notifications(sandbox: SandboxClient, orange: OrangeMoneyClient, ref: str) -> None:
    view = create(sandbox, ref, 5000, "XOF", "waiting")
    forged = WebhookEnvelope.model_validate(sandbox.notification("orange_money", ref, forged=True))
    with pytest.raises(ForgedDelivery, match="does not match"):
        orange.authenticate(forged, orange.parse_delivery(forged), view)
    # Claiming SUCCESS with the right token authenticates: the claim is never trusted, check() decides.
    claimed = WebhookEnvelope.model_validate(sandbox.notification("orange_money", ref, tamper={"status": "SUCCESS"}))
    delivery = orange.parse_delivery(claimed)
    orange.authenticate(claimed, delivery, view)
    assert delivery.claimed_status == "SUCCESS"
    assert orange.check(view).outcome is Outcome.PENDING
    no_token = WebhookEnvelope.model_validate(sandbox.notification("orange_money", ref, tamper={"notif_token": None}))
    with pytest.raises(MalformedDelivery, match="notif_token"):
        orange.parse_delivery(no_token)


def test_automatic_notifications(sandbox: SandboxClient, orange: OrangeMoneyClient, receiver: Any, ref: str) -> None:
    view = create(sandbox, ref, 5000, "XOF", "waiting_then_accepted", notify_url=receiver.url)
    assert orange.check(view).outcome is Outcome.PENDING  # INITIATED → PENDING: not notified
    assert orange.check(view).outcome is Outcome.SUCCEEDED
    [got] = receiver.wait(1)
    assert (got.method, got.headers["Content-Type"]) == ("POST", "application/json")
    assert json.loads(got.body)["notif_token"] == view.provider_data["notif_token"]
    assert json.loads(got.body)["status"] == "SUCCESS"

    other = create(sandbox, new_reference(), 5000, "XOF", "waiting", notify_url=receiver.url)
    sandbox.set_status("orange_money", other.reference, "EXPIRED")  # EXPIRED is not notified
    sandbox.set_status("orange_money", other.reference, "FAILED")
    received = receiver.wait(2)
    assert [json.loads(r.body)["status"] for r in received] == ["SUCCESS", "FAILED"]
    state = sandbox.get("orange_money", other.reference)
    assert [n["status"] for n in state["notifications"]] == ["FAILED"]


def test_notification_delivered_on_request(sandbox: SandboxClient, receiver: Any, ref: str) -> None:
    view = create(sandbox, ref, 5000, "XOF", "refused")
    url = f"{sandbox.base_url}/_sandbox/orange_money/transactions/{ref}/notification"
    result = requests.post(url, json={"deliver_to": receiver.url}, timeout=5).json()  # with the delivery report
    assert (result["delivered"], result["delivery_error"], result["enqueued"]) == (200, None, False)
    [got] = receiver.wait(1)
    assert json.loads(got.body) == json.loads(result["envelope"]["body"])
    assert json.loads(got.body)["notif_token"] == view.provider_data["notif_token"]


# --------------------------------------------------------------------------- control API


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"reference": "OM-1", "amount": 5000, "colour": "red"}, "unknown field"),
        ({"reference": "OM-1"}, "amount"),
        ({"reference": "OM 1", "amount": 5000}, "reference"),
        ({"reference": "OM-1", "amount": 5000, "fate": "lost"}, "fate"),
        ({"reference": "OM-1", "amount": 1250, "currency": "USD"}, "whole number"),
        ({"reference": "OM-1", "amount": 5000, "confirm_currency": "OUV"}, "confirm_currency"),
        ({"reference": "OM-1", "amount": 5000, "pay_token": "short"}, "pay_token"),
        ({"reference": "OM-1", "amount": 5000, "notify_url": "enqueue"}, "broker_url"),
        ({"reference": "OM-1", "amount": 5000, "lang": "de"}, "lang"),
    ],
)
def test_control_api_rejects_bad_input(sandbox: SandboxClient, payload: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SandboxError, match=fragment) as error:
        sandbox.create("orange_money", **payload)
    assert error.value.status == 400


def test_control_api_errors_and_listing(sandbox: SandboxClient, ref: str) -> None:
    state = sandbox.create("orange_money", reference=ref, amount=5000, pay_token="p" * 64, notif_token="n" * 32)
    assert state["provider_data"] == {"pay_token": "p" * 64, "notif_token": "n" * 32}
    assert (state["status"], state["txnid"][:2]) == ("SUCCESS", "MP")
    with pytest.raises(SandboxError) as duplicate:
        sandbox.create("orange_money", reference=ref, amount=5000)
    assert duplicate.value.status == 409
    with pytest.raises(SandboxError) as unknown:
        sandbox.get("orange_money", "OM-NOPE")
    assert unknown.value.status == 404
    with pytest.raises(SandboxError, match="status must be one of") as bad_status:
        sandbox.set_status("orange_money", ref, "ACCEPTED")
    assert bad_status.value.status == 400
    with pytest.raises(SandboxError, match="path"):
        sandbox.notification("orange_money", ref, path="orange?x=1")
    listed = requests.get(f"{sandbox.base_url}/_sandbox/orange_money/transactions", timeout=5).json()
    assert [t["reference"] for t in listed] == [ref]
