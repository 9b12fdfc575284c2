"""CinetPayClient.check() and notifications against the real sandbox, over HTTP."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests

from providers.base import (
    DeliveryKind,
    ForgedDelivery,
    Outcome,
    ProviderAuthError,
    ProviderNotFound,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderTransientError,
    RegistrationView,
)
from providers.cinetpay import CinetPayClient, compute_x_token
from providers.sandbox import SandboxClient, SandboxError, SandboxServer
from schemas.messages import WebhookEnvelope


def reg(reference: str) -> RegistrationView:
    return RegistrationView(reference=reference, amount=5000, currency="XOF")


# --------------------------------------------------------------------------- check()


def test_accepted(sandbox: SandboxClient, cinetpay: CinetPayClient, txn_id: str) -> None:
    created = sandbox.create_cinetpay(txn_id, 5000, payment_method="MOMO")
    status = cinetpay.check(reg(txn_id))
    assert status.outcome is Outcome.SUCCEEDED
    assert (status.amount, status.currency, status.provider_code) == (5000, "XOF", "00")
    assert isinstance(status.amount, int)
    assert status.paid_at is not None and status.paid_at.tzinfo is not None
    assert abs(status.paid_at - datetime.now(UTC)) < timedelta(minutes=1)
    assert status.provider_transaction_id == created["operator_id"] and status.provider_transaction_id
    assert '"payment_method": "MOMO"' in status.raw


def test_minor_units_for_a_two_decimal_currency(sandbox: SandboxClient, cinetpay: CinetPayClient, txn_id: str) -> None:
    sandbox.create_cinetpay(txn_id, 1250, currency="USD")
    status = cinetpay.check(reg(txn_id))
    assert (status.amount, status.currency) == (1250, "USD")
    assert '"amount": "12.50"' in status.raw  # major units on the wire


def test_refused(sandbox: SandboxClient, cinetpay: CinetPayClient, txn_id: str) -> None:
    sandbox.create_cinetpay(txn_id, 5000, fate="refused")
    status = cinetpay.check(reg(txn_id))
    assert (status.outcome, status.provider_code, status.provider_status) == (Outcome.FAILED, "627", "REFUSED")
    assert (status.paid_at, status.provider_transaction_id) == (None, None)
    assert '"payment_date": " "' in status.raw


def test_waiting_forever(sandbox: SandboxClient, cinetpay: CinetPayClient, txn_id: str) -> None:
    sandbox.create_cinetpay(txn_id, 5000, fate="waiting")
    outcomes = [cinetpay.check(reg(txn_id)) for _ in range(3)]
    assert {(s.outcome, s.provider_code) for s in outcomes} == {(Outcome.PENDING, "662")}
    assert sandbox.get_cinetpay(txn_id)["check_count"] == 3


def test_waiting_then_accepted_after_n_checks(sandbox: SandboxClient, cinetpay: CinetPayClient, txn_id: str) -> None:
    sandbox.create_cinetpay(txn_id, 5000, fate="waiting_then_accepted", pending_checks=3)
    outcomes = [cinetpay.check(reg(txn_id)).outcome for _ in range(5)]
    assert outcomes == [Outcome.PENDING] * 3 + [Outcome.SUCCEEDED] * 2
    state = sandbox.get_cinetpay(txn_id)
    assert (state["status"], state["check_count"], state["waiting_answers"]) == ("ACCEPTED", 5, 3)


def test_waiting_then_refused(sandbox: SandboxClient, cinetpay: CinetPayClient, txn_id: str) -> None:
    sandbox.create_cinetpay(txn_id, 5000, fate="waiting_then_refused")  # default: one waiting answer
    assert [cinetpay.check(reg(txn_id)).outcome for _ in range(2)] == [Outcome.PENDING, Outcome.FAILED]


def test_provider_reports_a_different_amount(sandbox: SandboxClient, cinetpay: CinetPayClient, txn_id: str) -> None:
    sandbox.create_cinetpay(txn_id, 5000, confirm_amount=100, confirm_currency="XAF")
    status = cinetpay.check(reg(txn_id))
    # The client reports what CinetPay says; comparing with the registration is the pipeline's job.
    assert (status.outcome, status.amount, status.currency) == (Outcome.SUCCEEDED, 100, "XAF")


def test_forced_status_change(sandbox: SandboxClient, cinetpay: CinetPayClient, txn_id: str) -> None:
    sandbox.create_cinetpay(txn_id, 5000, fate="refused")
    assert cinetpay.check(reg(txn_id)).outcome is Outcome.FAILED
    sandbox.set_cinetpay_status(txn_id, "ACCEPTED")  # success after refusal
    assert cinetpay.check(reg(txn_id)).outcome is Outcome.SUCCEEDED


def test_500_then_success_is_retried(sandbox: SandboxClient, cinetpay: CinetPayClient, txn_id: str) -> None:
    sandbox.create_cinetpay(txn_id, 5000, faults=[{"status": 500}])
    assert cinetpay.check(reg(txn_id)).outcome is Outcome.SUCCEEDED
    assert sandbox.get_cinetpay(txn_id)["check_count"] == 2


def test_429_then_success_honours_retry_after(sandbox: SandboxClient, cinetpay: CinetPayClient, txn_id: str) -> None:
    sandbox.create_cinetpay(txn_id, 5000, faults=[{"status": 429, "retry_after": 0}])
    started = time.monotonic()
    assert cinetpay.check(reg(txn_id)).outcome is Outcome.SUCCEEDED
    assert time.monotonic() - started < 1.0
    assert sandbox.get_cinetpay(txn_id)["check_count"] == 2


def test_500_forever_gives_up_after_max_attempts(sandbox: SandboxClient, make_client: Any, txn_id: str) -> None:
    sandbox.create_cinetpay(txn_id, 5000, faults=[{"status": 503}] * 10)
    client = make_client(max_attempts=4)
    with pytest.raises(ProviderTransientError) as info:
        client.check(reg(txn_id))
    assert info.value.http_status == 503 and info.value.retryable
    assert sandbox.get_cinetpay(txn_id)["check_count"] == 4


def test_429_forever_is_rate_limited(sandbox: SandboxClient, cinetpay: CinetPayClient, txn_id: str) -> None:
    sandbox.create_cinetpay(txn_id, 5000, faults=[{"status": 429}] * 3)
    with pytest.raises(ProviderRateLimited, match="TOO_MANY_REQUEST"):
        cinetpay.check(reg(txn_id))
    assert sandbox.get_cinetpay(txn_id)["check_count"] == 3


def test_slow_answer_beyond_read_timeout(sandbox: SandboxClient, make_client: Any, txn_id: str) -> None:
    sandbox.create_cinetpay(txn_id, 5000, faults=[{"delay": 0.6}])
    client = make_client(timeout=(1, 0.3), max_attempts=1)
    with pytest.raises(ProviderTransientError, match="timeout"):
        client.check(reg(txn_id))
    # With a retry, the second (fast) attempt succeeds.
    sandbox.create_cinetpay(f"{txn_id}-b", 5000, faults=[{"delay": 0.6}])
    retrying = make_client(timeout=(1, 0.3), max_attempts=2)
    assert retrying.check(reg(f"{txn_id}-b")).outcome is Outcome.SUCCEEDED


def test_dropped_connection_is_transient(sandbox: SandboxClient, make_client: Any, txn_id: str) -> None:
    sandbox.create_cinetpay(txn_id, 5000, faults=[{"drop": True}])
    with pytest.raises(ProviderTransientError, match="connection failed"):
        make_client(max_attempts=1).check(reg(txn_id))


def test_non_json_200_is_a_protocol_error(sandbox: SandboxClient, cinetpay: CinetPayClient, txn_id: str) -> None:
    sandbox.create_cinetpay(txn_id, 5000, faults=[{"status": 200, "body": "<html>maintenance</html>"}])
    with pytest.raises(ProviderProtocolError, match="not JSON"):
        cinetpay.check(reg(txn_id))


def test_bad_apikey_and_site_id(sandbox: SandboxClient, make_client: Any, txn_id: str) -> None:
    sandbox.create_cinetpay(txn_id, 5000)
    with pytest.raises(ProviderAuthError, match="609 AUTH_NOT_FOUND") as info:
        make_client(api_key="not-the-key").check(reg(txn_id))
    assert "not-the-key" not in str(info.value)
    with pytest.raises(ProviderAuthError, match="613"):
        make_client(site_id="1").check(reg(txn_id))


def test_http_403_goes_through_raise_for_status(sandbox: SandboxClient, cinetpay: CinetPayClient, txn_id: str) -> None:
    sandbox.create_cinetpay(txn_id, 5000, faults=[{"status": 403, "headers": {"X-Request-Id": "req-7"}}])
    with pytest.raises(ProviderAuthError) as info:
        cinetpay.check(reg(txn_id))
    assert (info.value.http_status, info.value.code, info.value.request_id) == (403, "403", "req-7")


def test_unknown_transaction(sandbox: SandboxClient, cinetpay: CinetPayClient) -> None:
    with pytest.raises(ProviderNotFound) as info:
        cinetpay.check(reg("never-created"))
    assert (info.value.code, info.value.http_status, info.value.retryable) == ("627", 200, False)


def test_global_faults_come_before_transaction_faults(
    sandbox: SandboxClient, cinetpay: CinetPayClient, txn_id: str
) -> None:
    sandbox.create_cinetpay(txn_id, 5000, faults=[{"status": 502}])
    assert sandbox.add_faults("/v2/payment/check", [{"status": 500}]) == {"path": "/v2/payment/check", "queued": 1}
    assert cinetpay.check(reg(txn_id)).outcome is Outcome.SUCCEEDED  # 500 (global), 502, then 00
    # The global fault was answered before the transaction was read, so it is not counted.
    assert sandbox.get_cinetpay(txn_id)["check_count"] == 2
    assert sandbox.health()["faults"] == {}


# --------------------------------------------------------------------------- wire API directly


def test_init_then_check_then_force(sandbox_server: SandboxServer, sandbox: SandboxClient, txn_id: str) -> None:
    base = {"apikey": "test-api-key", "site_id": "445160", "transaction_id": txn_id}
    init = base | {"amount": 1000, "currency": "XOF", "description": "Abonnement", "notify_url": "http://x/n"}
    init |= {"return_url": "http://x/r", "channels": "ALL"}
    with requests.Session() as http:
        created = http.post(f"{sandbox_server.url}/v2/payment", json=init, timeout=5).json()
        assert (created["code"], created["message"]) == ("201", "CREATED")
        assert created["data"]["payment_url"].startswith(sandbox_server.url)
        duplicate = http.post(f"{sandbox_server.url}/v2/payment", json=init, timeout=5).json()
        assert duplicate["code"] == "620"
        bad = http.post(f"{sandbox_server.url}/v2/payment", json=init | {"amount": 1002}, timeout=5).json()
        assert bad["code"] == "611"
        missing = http.post(f"{sandbox_server.url}/v2/payment", json=base, timeout=5).json()
        assert missing["code"] == "608" and "amount" in missing["description"]
        # Form-encoded check by payment token, as the FR docs allow.
        token = created["data"]["payment_token"]
        form = {"apikey": "test-api-key", "site_id": "445160", "token": token}
        waiting = http.post(f"{sandbox_server.url}/v2/payment/check", data=form, timeout=5).json()
        assert (waiting["code"], waiting["data"]["status"], waiting["data"]["amount"]) == (
            "662",
            "WAITING_FOR_CUSTOMER",
            "1000",
        )
        unknown_path = http.get(f"{sandbox_server.url}/v3/nothing", timeout=5)
        assert unknown_path.status_code == 404 and "error" in unknown_path.json()


# --------------------------------------------------------------------------- control API errors


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"amount": 5000}, "transaction_id"),
        ({"transaction_id": "a b", "amount": 5000}, "transaction_id"),
        ({"transaction_id": "t1"}, "amount"),
        ({"transaction_id": "t1", "amount": 50.5}, "amount must be an integer"),
        ({"transaction_id": "t1", "amount": True}, "amount must be an integer"),
        ({"transaction_id": "t1", "amount": 5, "currency": "FRF"}, "currency must be one of"),
        ({"transaction_id": "t1", "amount": 5, "fate": "lucky"}, "fate must be one of"),
        ({"transaction_id": "t1", "amount": 5, "faults": [{"status": 999}]}, "HTTP status"),
        ({"transaction_id": "t1", "amount": 5, "faults": [{}]}, "at least one of"),
        ({"transaction_id": "t1", "amount": 5, "faults": [{"delay": 600}]}, "between 0 and 60"),
        ({"transaction_id": "t1", "amount": 5, "notify_url": "ftp://x"}, "notify_url"),
        ({"transaction_id": "t1", "amount": 5, "colour": "red"}, "unknown field"),
    ],
)
def test_control_api_rejects_bad_input(sandbox: SandboxClient, payload: dict[str, Any], message: str) -> None:
    with pytest.raises(SandboxError, match=message) as info:
        sandbox._call("POST", "/_sandbox/cinetpay/transactions", payload)
    assert info.value.status == 400


def test_ids_with_reserved_characters_round_trip(sandbox: SandboxClient, cinetpay: CinetPayClient) -> None:
    sandbox.create_cinetpay("shop:order.1-a_b", 5000, fate="waiting")
    assert sandbox.set_cinetpay_status("shop:order.1-a_b", "ACCEPTED")["status"] == "ACCEPTED"
    assert cinetpay.check(reg("shop:order.1-a_b")).outcome is Outcome.SUCCEEDED
    assert [t["transaction_id"] for t in sandbox.list_cinetpay()] == ["shop:order.1-a_b"]


def test_control_api_errors_by_status(sandbox_server: SandboxServer, sandbox: SandboxClient, txn_id: str) -> None:
    sandbox.create_cinetpay(txn_id, 5000)
    with pytest.raises(SandboxError) as dup:
        sandbox.create_cinetpay(txn_id, 5000)
    with pytest.raises(SandboxError) as missing:
        sandbox.get_cinetpay("nope")
    with pytest.raises(SandboxError) as bad_status:
        sandbox.set_cinetpay_status(txn_id, "PAID")
    with pytest.raises(SandboxError) as bad_path:
        sandbox.add_faults("/_sandbox/reset", [{"status": 500}])
    assert (dup.value.status, missing.value.status, bad_status.value.status) == (409, 404, 400)
    assert bad_path.value.status == 400 and "provider API path" in bad_path.value.message
    with requests.Session() as http:
        not_json = http.post(f"{sandbox_server.url}/_sandbox/cinetpay/transactions", data="{", timeout=5)
        assert (not_json.status_code, not_json.json()) == (400, {"error": "body is not valid JSON"})
        wrong_method = http.delete(f"{sandbox_server.url}/_sandbox/reset", timeout=5)
        assert wrong_method.status_code == 405


# --------------------------------------------------------------------------- notifications


def test_sandbox_notifications_authenticate(sandbox: SandboxClient, cinetpay: CinetPayClient, txn_id: str) -> None:
    sandbox.create_cinetpay(txn_id, 5000, phone="+2250701020304", payment_method="OM")
    env = WebhookEnvelope.model_validate(sandbox.cinetpay_notification(txn_id))
    delivery = cinetpay.parse_delivery(env)
    cinetpay.authenticate(env, delivery, reg(txn_id))
    fields = {k: v[0] for k, v in parse_qs(env.body, keep_blank_values=True).items()}
    assert (delivery.reference, delivery.claimed_amount, delivery.claimed_currency) == (txn_id, 5000, "XOF")
    assert (fields["cel_phone_num"], fields["cpm_phone_prefixe"], fields["cpm_site_id"]) == (
        "0701020304",
        "225",
        "445160",
    )
    assert env.header("X-TOKEN") == compute_x_token(fields, "test-secret-key")
    assert env.received_at.tzinfo is not None and env.path == "/notify/cinetpay"


@pytest.mark.parametrize(
    "options", [{"forged": True}, {"tamper": {"cpm_amount": "1"}}, {"tamper": {"cpm_trans_id": "other"}}]
)
def test_forged_and_tampered_notifications_do_not(
    sandbox: SandboxClient, cinetpay: CinetPayClient, txn_id: str, options: dict[str, Any]
) -> None:
    sandbox.create_cinetpay(txn_id, 5000)
    env = WebhookEnvelope.model_validate(sandbox.cinetpay_notification(txn_id, **options))
    delivery = cinetpay.parse_delivery(env)
    with pytest.raises(ForgedDelivery, match="x-token does not match"):
        cinetpay.authenticate(env, delivery, None)


def test_ping_envelope(sandbox: SandboxClient, cinetpay: CinetPayClient) -> None:
    env = WebhookEnvelope.model_validate(sandbox.cinetpay_ping())
    assert (env.method, env.body) == ("GET", "")
    assert cinetpay.parse_delivery(env).kind is DeliveryKind.PING


def test_notification_delivered_on_request(sandbox: SandboxClient, receiver: Any, txn_id: str) -> None:
    sandbox.create_cinetpay(txn_id, 5000)
    result = sandbox.send_cinetpay_notification(txn_id, deliver_to=receiver.url)
    assert result["delivered"] == 200
    [got] = receiver.wait(1)
    assert (got.method, got.body) == ("POST", result["envelope"]["body"])


def test_automatic_notification_on_status_change(
    sandbox: SandboxClient, cinetpay: CinetPayClient, receiver: Any, txn_id: str
) -> None:
    sandbox.create_cinetpay(txn_id, 5000, fate="waiting_then_accepted", pending_checks=1, notify_url=receiver.url)
    assert receiver.received == []  # creation is not a status change
    assert cinetpay.check(reg(txn_id)).outcome is Outcome.PENDING
    assert cinetpay.check(reg(txn_id)).outcome is Outcome.SUCCEEDED  # turns final: notifies
    [got] = receiver.wait(1)
    assert got.method == "POST" and got.path == "/notify/cinetpay"
    assert got.headers["Content-Type"] == "application/x-www-form-urlencoded"
    env = WebhookEnvelope.model_validate(
        {
            "schema": "payrecon.webhook/1",
            "provider": "cinetpay",
            "received_at": datetime.now(UTC).isoformat(),
            "method": got.method,
            "path": got.path,
            "headers": got.headers,
            "body": got.body,
        }
    )
    delivery = cinetpay.parse_delivery(env)
    cinetpay.authenticate(env, delivery, reg(txn_id))  # correctly signed
    assert (delivery.reference, delivery.claimed_status) == (txn_id, "SUCCES")
    sandbox.set_cinetpay_status(txn_id, "REFUSED")  # forced change: notifies again
    second = receiver.wait(2)[1]
    assert "cpm_error_message=TRANSACTION_CANCEL" in second.body
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        notifications = sandbox.get_cinetpay(txn_id)["notifications"]
        if all("delivered" in n for n in notifications):
            break
        time.sleep(0.02)
    assert [(n["kind"], n["status"], n["delivered"]) for n in notifications] == [
        ("auto", "ACCEPTED", 200),
        ("auto", "REFUSED", 200),
    ]


def test_latency_delays_every_wire_answer() -> None:
    import time

    from providers.base import RegistrationView
    from providers.cinetpay import CinetPayClient
    from providers.sandbox.client import SandboxClient
    from providers.sandbox.server import SandboxServer

    with SandboxServer(latency=0.3) as server, SandboxClient(server.url) as control:
        control.create_cinetpay("TXN-LATENCY", 5000)
        client = CinetPayClient(
            api_url=server.url, api_key="sandbox-api-key", site_id="100000", secret_key="sandbox-secret-key"
        )
        started = time.monotonic()
        answer = client.check(RegistrationView(reference="TXN-LATENCY"))
        check_time = time.monotonic() - started
        client.close()
    assert answer.outcome.value == "succeeded"
    assert check_time >= 0.3  # a lower bound only: the sleep is the behaviour under test
