"""WaveClient and the Wave sandbox over real HTTP: wire API, sessions, statement, events, control API."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import requests

from providers.base import (
    DeliveryKind,
    ForgedDelivery,
    Outcome,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderNotFound,
    ProviderProtocolError,
    RegistrationView,
)
from providers.sandbox import SandboxClient, SandboxError, SandboxServer
from providers.sandbox.wave import WaveConfig
from providers.wave import WaveClient
from schemas.messages import WebhookEnvelope
from tests.providers.support import closing_factory, fast_options

CONFIG = WaveConfig()
AUTH = {"Authorization": f"Bearer {CONFIG.api_key}"}


@pytest.fixture
def make(sandbox_server: SandboxServer) -> Iterator[Any]:
    """Factory of WaveClients on the shared sandbox that never sleep between retries."""
    options = fast_options(sandbox_server.url) | {
        "api_key": CONFIG.api_key,
        "webhook_secrets": CONFIG.webhook_secrets,
        "webhook_shared_secret": CONFIG.shared_secret,
    }
    with closing_factory(lambda **overrides: WaveClient(**(options | overrides))) as factory:
        yield factory


@pytest.fixture
def wave(make: Any) -> WaveClient:
    client: WaveClient = make()
    return client


def create(sandbox: SandboxClient, reference: str, amount: int = 5000, **options: Any) -> RegistrationView:
    state = sandbox.create("wave", reference=reference, amount=amount, **options)
    return RegistrationView(reference, amount, "XOF", provider_data=state["provider_data"])


def wire(server: SandboxServer, method: str, path: str, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("headers", AUTH)
    return requests.request(method, f"{server.url}{path}", timeout=5, **kwargs)


def new_session(server: SandboxServer, **fields: Any) -> dict[str, Any]:
    body = {"amount": "5000", "currency": "XOF", "success_url": "https://shop.example/ok"}
    body |= {"error_url": "https://shop.example/ko"} | fields
    response = wire(server, "POST", "/v1/checkout/sessions", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


# --------------------------------------------------------------------------- wire API


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing-auth-header"),
        ({"Authorization": CONFIG.api_key}, "invalid-auth"),
        ({"Authorization": "Bearer wave_sn_prod_other"}, "no-matching-api-key"),
    ],
)
def test_every_wire_route_checks_the_key(sandbox_server: SandboxServer, headers: dict[str, str], code: str) -> None:
    for method, path in [
        ("POST", "/v1/checkout/sessions"),
        ("GET", "/v1/checkout/sessions/cos-x"),
        ("GET", "/v1/checkout/sessions/search?client_reference=x"),
        ("GET", "/v1/checkout/sessions?transaction_id=T_1"),
        ("GET", "/v1/transactions?date=2026-01-01"),
    ]:
        response = wire(sandbox_server, method, path, headers=headers)
        assert (response.status_code, response.json()["code"]) == (401, code), path


def test_bad_key_is_an_auth_error_with_wave_code(sandbox: SandboxClient, make: Any) -> None:
    view = create(sandbox, "order-auth")
    with pytest.raises(ProviderAuthError) as caught:
        make(api_key="wave_sn_prod_revoked-key-1234").check(view)
    assert (caught.value.http_status, caught.value.code) == (401, "no-matching-api-key")
    assert "revoked-key-1234" not in str(caught.value)


def test_create_session_on_the_wire(sandbox_server: SandboxServer, sandbox: SandboxClient, wave: WaveClient) -> None:
    session = new_session(sandbox_server, client_reference="order-wire", restrict_payer_mobile="+221770000001")
    assert session["id"].startswith("cos-") and (session["amount"], session["currency"]) == ("5000", "XOF")
    assert (session["checkout_status"], session["payment_status"]) == ("open", "processing")
    assert session["when_completed"] is None and session["transaction_id"] is None
    created = datetime.fromisoformat(session["when_created"])
    assert datetime.fromisoformat(session["when_expires"]) - created == timedelta(minutes=30)
    assert session["wave_launch_url"].endswith(f"/_sandbox/wave/pay/{session['id']}")
    assert requests.get(session["wave_launch_url"], timeout=5).json()["session"]["id"] == session["id"]

    view = RegistrationView("order-wire", 5000, "XOF", provider_data={"session_id": session["id"]})
    assert wave.check(view).outcome is Outcome.PENDING
    sandbox.set_status("wave", "order-wire", "succeeded")
    paid = wave.check(view)
    assert (paid.outcome, paid.amount, paid.provider_status) == (Outcome.SUCCEEDED, 5000, "complete/succeeded")
    assert paid.paid_at is not None and paid.paid_at >= created


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"amount": 5000}, "amount"),
        ({"amount": "50.5"}, "amount"),
        ({"amount": "0"}, "amount"),
        ({"currency": "EUR"}, "currency"),
        ({"success_url": None}, "success_url"),
        ({"error_url": "ftp://x"}, "error_url"),
        ({"client_reference": ""}, "client_reference"),
        ({"restrict_payer_mobile": "0770000000"}, "restrict_payer_mobile"),
    ],
)
def test_create_session_validation(sandbox_server: SandboxServer, fields: dict[str, Any], loc: str) -> None:
    body = {"amount": "5000", "currency": "XOF", "success_url": "https://a.example", "error_url": "https://b.example"}
    response = wire(sandbox_server, "POST", "/v1/checkout/sessions", json=body | fields)
    answer = response.json()
    assert (response.status_code, answer["code"]) == (400, "request-validation-error")
    assert [detail["loc"] for detail in answer["details"]] == [["body", loc]]


def test_create_session_needs_json(sandbox_server: SandboxServer) -> None:
    for body in (b"amount=5000", b"[1]"):
        response = wire(sandbox_server, "POST", "/v1/checkout/sessions", data=body, headers=AUTH)
        assert (response.status_code, response.json()["code"]) == (400, "request-not-json")


def test_unknown_session_and_reference(sandbox: SandboxClient, wave: WaveClient) -> None:
    with pytest.raises(ProviderNotFound) as caught:
        wave.check(RegistrationView("order-x", 5000, "XOF", provider_data={"checkout_session_id": "cos-nope"}))
    assert (caught.value.http_status, caught.value.code) == (404, "checkout-session-not-found")
    with pytest.raises(ProviderNotFound, match="no checkout session has client_reference 'order-x'"):
        wave.check(RegistrationView("order-x", 5000, "XOF"))


def test_session_of_another_reference_is_refused(sandbox: SandboxClient, wave: WaveClient) -> None:
    other = create(sandbox, "order-other")
    with pytest.raises(ProviderProtocolError, match="belongs to client_reference 'order-other'"):
        wave.check(RegistrationView("order-mine", 5000, "XOF", provider_data=other.provider_data))
    with pytest.raises(ProviderBadRequest, match="provider_data checkout_session_id"):
        wave.check(RegistrationView("order-mine", 5000, "XOF", provider_data={"checkout_session_id": 42}))


def test_search_prefers_the_succeeded_session(
    sandbox_server: SandboxServer, sandbox: SandboxClient, wave: WaveClient
) -> None:
    view = create(sandbox, "order-twice", fate="accepted")
    newer = new_session(sandbox_server, client_reference="order-twice")  # the customer came back
    found = wave.check(RegistrationView("order-twice", 5000, "XOF"))
    assert found.outcome is Outcome.SUCCEEDED
    assert json.loads(found.raw)["result"][1]["id"] == newer["id"]
    assert wave.check(view).outcome is Outcome.SUCCEEDED  # the registered session is still paid
    assert sandbox.get("wave", "order-twice")["checkout_session_id"] == newer["id"]


def test_search_otherwise_takes_the_newest(
    sandbox_server: SandboxServer, sandbox: SandboxClient, wave: WaveClient
) -> None:
    create(sandbox, "order-retry", fate="refused")
    assert wave.check(RegistrationView("order-retry", 5000, "XOF")).outcome is Outcome.FAILED
    new_session(sandbox_server, client_reference="order-retry")
    assert wave.check(RegistrationView("order-retry", 5000, "XOF")).outcome is Outcome.PENDING
    sandbox.set_status("wave", "order-retry", "succeeded")
    assert wave.check(RegistrationView("order-retry", 5000, "XOF")).outcome is Outcome.SUCCEEDED


def test_search_needs_a_reference(sandbox_server: SandboxServer) -> None:
    response = wire(sandbox_server, "GET", "/v1/checkout/sessions/search")
    assert (response.status_code, response.json()["code"]) == (400, "request-validation-error")
    empty = wire(sandbox_server, "GET", "/v1/checkout/sessions/search?client_reference=nobody")
    assert (empty.status_code, empty.json()) == (200, {"result": []})


def test_lookup_by_wave_transaction_id(sandbox_server: SandboxServer, sandbox: SandboxClient) -> None:
    state = sandbox.create("wave", reference="order-tid", amount=5000, transaction_id="T_CUSTOM0001")
    response = wire(sandbox_server, "GET", "/v1/checkout/sessions?transaction_id=T_CUSTOM0001")
    assert (response.status_code, response.json()["id"]) == (200, state["checkout_session_id"])
    missing = wire(sandbox_server, "GET", "/v1/checkout/sessions?transaction_id=T_NONE")
    assert (missing.status_code, missing.json()["code"]) == (404, "checkout-session-not-found")


# --------------------------------------------------------------------------- statuses


def test_failed_attempt_is_pending_until_the_session_closes(sandbox: SandboxClient, wave: WaveClient) -> None:
    error = {"code": "insufficient-funds", "message": "Solde insuffisant"}
    view = create(sandbox, "order-retrying", fate="waiting_then_refused", pending_checks=2, last_payment_error=error)
    first = wave.check(view)
    assert (first.outcome, first.provider_code, first.provider_status) == (
        Outcome.PENDING,
        "insufficient-funds",
        "open/processing",
    )
    assert first.provider_message == "insufficient-funds: Solde insuffisant"
    assert [wave.check(view).outcome for _ in range(2)] == [Outcome.PENDING, Outcome.FAILED]


def test_refused_as_expired(sandbox: SandboxClient, wave: WaveClient) -> None:
    view = create(sandbox, "order-expired", fate="refused", refused_status="expired")
    answer = wave.check(view)
    assert (answer.outcome, answer.provider_status, answer.paid_at) == (Outcome.FAILED, "expired/processing", None)
    assert json.loads(answer.raw)["when_completed"] is not None


def test_when_completed_places_the_payment(sandbox: SandboxClient, wave: WaveClient) -> None:
    view = create(sandbox, "order-dated", when_completed="2026-02-27T23:59:30+00:00", transaction_id="T_DATED")
    answer = wave.check(view)
    assert answer.paid_at == datetime(2026, 2, 27, 23, 59, 30, tzinfo=UTC)
    assert answer.provider_transaction_id == "T_DATED"
    assert json.loads(answer.raw)["when_created"] < "2026-02-27T23:59:30Z"


def test_per_transaction_faults_and_check_count(sandbox: SandboxClient, wave: WaveClient) -> None:
    view = create(sandbox, "order-flaky", faults=[{"status": 503}, {"status": 429, "retry_after": 0}])
    assert wave.check(view).outcome is Outcome.SUCCEEDED  # both retried within the call
    assert sandbox.get("wave", "order-flaky")["check_count"] == 3


def test_confirmed_currency_is_what_wave_says(sandbox: SandboxClient, wave: WaveClient) -> None:
    view = create(sandbox, "order-gmd", confirm_amount=1250, confirm_currency="GMD")
    answer = wave.check(view)
    assert (answer.amount, answer.currency) == (1250, "GMD")
    assert json.loads(answer.raw)["amount"] == "12.50"


# --------------------------------------------------------------------------- statement


def test_statement_fees_refunds_and_balance(sandbox: SandboxClient, wave: WaveClient) -> None:
    create(sandbox, "order-a", 3400, when_completed="2026-05-02T08:00:00Z")
    create(
        sandbox, "order-b", 10000, fee=250, when_completed="2026-05-02T09:00:00Z", refunded_at="2026-05-03T10:00:00Z"
    )
    create(sandbox, "order-c", 5000, fate="refused", when_completed="2026-05-02T10:00:00Z")
    create(sandbox, "order-d", 2000, when_completed="2026-05-01T23:59:59Z")
    day = list(wave.iter_transactions(date(2026, 5, 2)))
    assert [(line.client_reference, line.amount, line.fee, line.balance) for line in day] == [
        ("order-a", 3366, 34, 1980 + 3366),
        ("order-b", 9750, 250, 1980 + 3366 + 9750),
    ]
    assert day[0].checkout_api_session_id == sandbox.get("wave", "order-a")["checkout_session_id"]
    (refund,) = wave.iter_transactions(date(2026, 5, 3))
    assert (refund.transaction_type, refund.amount, refund.fee, refund.is_reversal) == (
        "api_checkout_refund",
        -9750,
        -250,
        True,
    )
    assert refund.balance == 1980 + 3366 and refund.transaction_id != day[1].transaction_id
    assert [line.amount for line in wave.iter_transactions(date(2026, 5, 1))] == [1980]


def test_statement_cursor_errors(sandbox_server: SandboxServer, sandbox: SandboxClient, wave: WaveClient) -> None:
    with pytest.raises(ProviderBadRequest) as caught:
        wave.list_transactions(date(2026, 5, 2), after="not-a-cursor")
    assert caught.value.code == "request-validation-error"
    create(sandbox, "order-p", when_completed="2026-05-02T01:00:00Z")
    first = wave.list_transactions(date(2026, 5, 2))
    assert first.end_cursor is not None and not first.has_next_page
    with pytest.raises(ProviderBadRequest):
        wave.list_transactions(date(2026, 5, 3), after=first.end_cursor)  # a cursor of another day
    bad_date = wire(sandbox_server, "GET", "/v1/transactions?date=02-05-2026")
    assert (bad_date.status_code, bad_date.json()["code"]) == (400, "request-validation-error")
    empty = wire(sandbox_server, "GET", "/v1/transactions?date=2020-01-01").json()
    assert empty == {
        "page_info": {"start_cursor": None, "end_cursor": None, "has_next_page": False},
        "date": "2020-01-01",
        "items": [],
    }


def test_statement_pages_of_a_small_wallet(make: Any) -> None:
    with SandboxServer(wave=WaveConfig(page_size=2, opening_balance=100)) as server, SandboxClient(server.url) as sb:
        for index in range(5):
            sb.create(
                "wave", reference=f"order-{index}", amount=1000, fee=0, when_completed=f"2026-06-01T0{index}:00:00Z"
            )
        client = make(api_url=server.url)
        pages = [client.list_transactions(date(2026, 6, 1))]
        while pages[-1].has_next_page:
            pages.append(client.list_transactions(date(2026, 6, 1), after=pages[-1].end_cursor))
        assert [len(p.items) for p in pages] == [2, 2, 1]
        assert [line.balance for p in pages for line in p.items] == [1100, 2100, 3100, 4100, 5100]


# --------------------------------------------------------------------------- events


def test_status_change_notifies_a_signed_event(sandbox: SandboxClient, wave: WaveClient, receiver: Any) -> None:
    view = create(sandbox, "order-notified", fate="waiting", notify_url=receiver.url)
    sandbox.set_status("wave", "order-notified", "succeeded")
    (received,) = receiver.wait(1)
    assert received.headers["Content-Type"] == "application/json"
    envelope = WebhookEnvelope.model_validate(
        {
            "schema": "payrecon.webhook/1",
            "provider": "wave",
            "received_at": datetime.now(UTC).isoformat(),
            "method": received.method,
            "path": "/wave/webhook",
            "headers": received.headers,
            "body": received.body,
        }
    )
    delivery = wave.parse_delivery(envelope)
    wave.authenticate(envelope, delivery, view)
    assert (delivery.reference, delivery.claimed_status, delivery.claimed_amount) == (
        "order-notified",
        "complete/succeeded",
        5000,
    )
    # The control API's envelope for the same status is the same event: one inbox row.
    again = wave.parse_delivery(WebhookEnvelope.model_validate(sandbox.notification("wave", "order-notified")))
    assert again.dedupe_key == delivery.dedupe_key
    deadline = time.monotonic() + 5
    while "delivered" not in (record := sandbox.get("wave", "order-notified")["notifications"][0]):
        assert time.monotonic() < deadline, record  # the record is completed by the delivery thread
        time.sleep(0.02)
    assert (record["type"], record["delivered"], record["event_id"]) == (
        "checkout.session.completed",
        200,
        delivery.dedupe_key.removeprefix("event:"),
    )


def test_payment_failed_event_and_no_event_without_one(sandbox: SandboxClient, wave: WaveClient) -> None:
    create(sandbox, "order-quiet", fate="waiting")
    with pytest.raises(SandboxError) as caught:
        sandbox.notification("wave", "order-quiet")
    assert caught.value.status == 409 and "sends no event" in caught.value.message
    error = {"code": "payer-mobile-mismatch", "message": "wrong phone"}
    create(sandbox, "order-failing", fate="waiting", last_payment_error=error)
    envelope = WebhookEnvelope.model_validate(sandbox.notification("wave", "order-failing"))
    event = json.loads(envelope.body)
    assert event["type"] == "checkout.session.payment_failed" and event["data"]["last_payment_error"] == error
    delivery = wave.parse_delivery(envelope)
    assert (delivery.kind, delivery.claimed_status) == (DeliveryKind.PAYMENT, "open/processing")
    wave.authenticate(envelope, delivery, None)


def test_tampered_event_is_refused(sandbox: SandboxClient, wave: WaveClient) -> None:
    create(sandbox, "order-tampered")
    envelope = WebhookEnvelope.model_validate(sandbox.notification("wave", "order-tampered", tamper={"amount": "1"}))
    delivery = wave.parse_delivery(envelope)
    assert delivery.claimed_amount == 1
    with pytest.raises(ForgedDelivery, match="does not match"):
        wave.authenticate(envelope, delivery, None)


def test_sandbox_with_two_secrets_signs_with_the_first(make: Any) -> None:
    config = WaveConfig(webhook_secrets=("wave_sn_WHS_new", "wave_sn_WHS_old"))
    with SandboxServer(wave=config) as server, SandboxClient(server.url) as sb:
        sb.create("wave", reference="order-rot", amount=5000)
        plain = WebhookEnvelope.model_validate(sb.notification("wave", "order-rot"))
        rotated = WebhookEnvelope.model_validate(sb.notification("wave", "order-rot", rotate=True))
        old_only = make(api_url=server.url, webhook_secrets=["wave_sn_WHS_old"], webhook_shared_secret=None)
        new_only = make(api_url=server.url, webhook_secrets=["wave_sn_WHS_new"], webhook_shared_secret=None)
        with pytest.raises(ForgedDelivery):
            old_only.authenticate(plain, old_only.parse_delivery(plain), None)
        new_only.authenticate(plain, new_only.parse_delivery(plain), None)
        for client in (old_only, new_only):  # during the rotation both keys work
            client.authenticate(rotated, client.parse_delivery(rotated), None)
        assert (rotated.header("Wave-Signature") or "").count("v1=") == 2


# --------------------------------------------------------------------------- control API


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"colour": "blue"}, "unknown field(s) colour"),
        ({"reference": "a b"}, "reference (the client_reference)"),
        ({"amount": "5000"}, "amount must be an integer"),
        ({"currency": "EUR"}, "Wave wallets"),
        ({"fate": "lost"}, "fate must be one of"),
        ({"refused_status": "failed"}, "refused_status"),
        ({"when_completed": "2026-05-02 10:00"}, "when_completed must be an ISO-8601 timestamp with an offset"),
        ({"refunded_at": 3}, "refunded_at must be"),
        ({"last_payment_error": {"code": ""}}, "last_payment_error needs a string code"),
        ({"last_payment_error": {"code": "x", "why": "y"}}, "unknown field(s) why"),
        ({"transaction_id": "T-1"}, "transaction_id (Wave's T_… id)"),
        ({"fee": -1}, "fee must be >= 0"),
        ({"notify_url": "enqueue"}, "needs a sandbox started with a broker_url"),
    ],
)
def test_control_create_validation(sandbox: SandboxClient, fields: dict[str, Any], message: str) -> None:
    payload = {"reference": "order-bad", "amount": 5000} | fields
    with pytest.raises(SandboxError) as caught:
        sandbox.create("wave", **payload)
    assert caught.value.status == 400 and message in caught.value.message


def test_control_errors_and_state(sandbox: SandboxClient) -> None:
    state = sandbox.create("wave", reference="order-state", amount=5000, fate="waiting")
    assert state["provider_data"] == {"checkout_session_id": state["checkout_session_id"]}
    assert (state["status"], state["checkout_status"], state["payment_status"]) == ("processing", "open", "processing")
    with pytest.raises(SandboxError) as duplicate:
        sandbox.create("wave", reference="order-state", amount=5000)
    assert duplicate.value.status == 409
    with pytest.raises(SandboxError) as missing:
        sandbox.get("wave", "order-none")
    assert missing.value.status == 404
    with pytest.raises(SandboxError, match="status must be one of processing, succeeded, cancelled, expired"):
        sandbox.set_status("wave", "order-state", "ACCEPTED")
    for options, message in [
        ({"strategy": "hmac"}, "strategy must be"),
        ({"strategy": "bearer", "stale": True}, "only apply to the signature strategy"),
        ({"event_type": "Completed!"}, "event_type must look like"),
        ({"forged": "yes"}, "forged must be true or false"),
        ({"enqueue": True}, "broker_url"),
    ]:
        with pytest.raises(SandboxError, match=message.replace("(", r"\(")):
            sandbox.notification("wave", "order-state", **options)
    done = sandbox.set_status("wave", "order-state", "cancelled")
    assert (done["checkout_status"], done["payment_status"], done["scripted"]) == ("complete", "cancelled", False)


def test_config_refuses_a_bare_string_secret() -> None:
    with pytest.raises(ValueError, match="non-empty tuple"):
        WaveConfig(webhook_secrets="wave_sn_WHS_x")  # type: ignore[arg-type]
