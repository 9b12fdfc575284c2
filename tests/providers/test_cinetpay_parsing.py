"""CinetPay without the network: x-token, notification parsing, status mapping, check answers."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest

from providers.base import (
    DeliveryKind,
    ForgedDelivery,
    MalformedDelivery,
    Outcome,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderClient,
    ProviderError,
    ProviderNotFound,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderTransientError,
    ProviderUnreadableAnswer,
)
from providers.cinetpay import (
    CPM_FIELDS,
    CinetPayClient,
    _parsed_form,
    build_notification,
    classify,
    compute_x_token,
    parse_check_response,
    parse_form,
)
from schemas.messages import WebhookEnvelope

SECRET = "my-secret"
FIELDS = {
    "cpm_site_id": "100000",
    "cpm_trans_id": "order-42",
    "cpm_trans_date": "2025-01-15 10:30:00",
    "cpm_amount": "5000",
    "cpm_currency": "XOF",
    "signature": "sig-abc",
    "payment_method": "OM",
    "cel_phone_num": "0701020304",
    "cpm_phone_prefixe": "225",
    "cpm_language": "fr",
    "cpm_version": "V4",
    "cpm_payment_config": "SINGLE",
    "cpm_page_action": "PAYMENT",
    "cpm_custom": "",
    "cpm_designation": "Abonnement mensuel",
    "cpm_error_message": "SUCCES",
}


def make_client() -> CinetPayClient:
    # Never used for network calls in this module.
    return CinetPayClient(api_url="http://127.0.0.1:9", api_key="k", site_id="100000", secret_key=SECRET)


def envelope(body: str, headers: dict[str, str] | None = None, method: str = "POST", **extra: Any) -> WebhookEnvelope:
    return WebhookEnvelope.model_validate(
        {
            "schema": "payrecon.webhook/1",
            "provider": "cinetpay",
            "received_at": "2025-01-15T10:30:05+00:00",
            "method": method,
            "path": "/notify/cinetpay",
            "headers": headers if headers is not None else {},
            "body": body,
            **extra,
        }
    )


def signed(fields: dict[str, str], key: str = SECRET, header: str = "x-token") -> WebhookEnvelope:
    body, token = build_notification(fields, key)
    return envelope(body, {"Content-Type": "application/x-www-form-urlencoded", header: token})


# --------------------------------------------------------------------------- x-token


def test_x_token_matches_a_vector_computed_by_hand() -> None:
    concatenation = (
        "100000order-422025-01-15 10:30:005000XOFsig-abcOM0701020304225frV4SINGLEPAYMENTAbonnement mensuelSUCCES"
    )
    by_hand = hmac.new(SECRET.encode(), concatenation.encode(), hashlib.sha256).hexdigest()
    assert by_hand == "087131f48cad607f147370f914265882083285bff20c7271e009c6e3dc3051f5"
    assert compute_x_token(FIELDS, SECRET) == by_hand


def test_x_token_treats_missing_fields_as_empty_and_ignores_extra_ones() -> None:
    without_custom = {k: v for k, v in FIELDS.items() if k != "cpm_custom"}
    assert compute_x_token(without_custom, SECRET) == compute_x_token(FIELDS, SECRET)
    assert compute_x_token(FIELDS | {"cpm_result": "00"}, SECRET) == compute_x_token(FIELDS, SECRET)
    assert len(CPM_FIELDS) == 16 and CPM_FIELDS[0] == "cpm_site_id" and CPM_FIELDS[-1] == "cpm_error_message"


def test_build_notification_is_form_encoded_in_cpm_order() -> None:
    body, token = build_notification(FIELDS, SECRET)
    assert body.startswith("cpm_site_id=100000&cpm_trans_id=order-42&cpm_trans_date=2025-01-15+10%3A30%3A00")
    assert [pair.split("=")[0] for pair in body.split("&")] == list(CPM_FIELDS)
    assert token == compute_x_token(FIELDS, SECRET)


def test_authentic_notification_is_accepted() -> None:
    client = make_client()
    env = signed(FIELDS, header="X-Token")  # header names are case-insensitive
    delivery = client.parse_delivery(env)
    client.authenticate(env, delivery, None)
    assert delivery.kind is DeliveryKind.PAYMENT and delivery.reference == "order-42"


@pytest.mark.parametrize(
    ("env_factory", "reason"),
    [
        (lambda: signed(FIELDS, key="wrong-key"), "x-token does not match"),
        (lambda: envelope(build_notification(FIELDS, SECRET)[0]), "missing x-token header"),
        (lambda: envelope(build_notification(FIELDS, SECRET)[0], {"x-token": "  "}), "missing x-token header"),
        (lambda: envelope(build_notification(FIELDS, SECRET)[0], {"x-token": "é" * 64}), "does not match"),
        (
            # Field changed after signing: amount lowered from 5000 to 1.
            lambda: envelope(
                build_notification(FIELDS | {"cpm_amount": "1"}, SECRET)[0],
                {"x-token": compute_x_token(FIELDS, SECRET)},
            ),
            "x-token does not match",
        ),
        (lambda: signed(FIELDS | {"cpm_site_id": "999999"}), "site id '999999' is not ours"),
    ],
    ids=["wrong-key", "missing-header", "blank-header", "non-ascii-header", "tampered-amount", "foreign-site"],
)
def test_forged_notifications_are_refused(env_factory: Any, reason: str) -> None:
    client = make_client()
    env = env_factory()
    delivery = client.parse_delivery(env)
    with pytest.raises(ForgedDelivery, match=reason):
        client.authenticate(env, delivery, None)


def test_client_satisfies_protocol_and_hides_secrets() -> None:
    client = CinetPayClient(api_url="http://x", api_key="API-SECRET", site_id="1", secret_key="HMAC-SECRET")
    try:
        assert isinstance(client, ProviderClient)
        assert "API-SECRET" not in repr(client) and "HMAC-SECRET" not in repr(client)
        assert client.name == "cinetpay"
    finally:
        client.close()


# --------------------------------------------------------------------------- parsing


def test_valid_notification_is_parsed_into_a_claim() -> None:
    env = signed(FIELDS | {"cpm_amount": "12.50", "cpm_currency": "USD"})
    delivery = make_client().parse_delivery(env)
    assert delivery.kind is DeliveryKind.PAYMENT
    assert (delivery.claimed_amount, delivery.claimed_currency) == (1250, "USD")
    assert delivery.claimed_status == "SUCCES"
    # The key covers what the x-token covers (the 16 CPM values) and the token; computed by hand here.
    signed_values = [(FIELDS | {"cpm_amount": "12.50", "cpm_currency": "USD"})[name] for name in CPM_FIELDS]
    material = json.dumps(["cinetpay-notification/2", env.header("x-token"), *signed_values])
    expected = hashlib.sha256(material.encode()).hexdigest()
    assert delivery.dedupe_key == expected
    # A byte-identical redelivery shares the key; another token does not.
    assert make_client().parse_delivery(env).dedupe_key == expected
    assert make_client().parse_delivery(signed(FIELDS, key="other")).dedupe_key != expected


def test_empty_get_is_a_ping() -> None:
    client = make_client()
    env = envelope("", method="GET")
    delivery = client.parse_delivery(env)
    assert (delivery.kind, delivery.dedupe_key, delivery.reference) == (DeliveryKind.PING, "ping", None)
    client.authenticate(env, delivery, None)  # nothing to forge: accepted without a token


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (json.dumps(FIELDS), "body is JSON"),
        ("<html>hello</html>", "not form-encoded"),
        ("cpm_trans_id=a&&cpm_amount=1", "not form-encoded"),
        ("cpm_trans_id=%ff", "not form-encoded"),
        (urlencode({k: v for k, v in FIELDS.items() if k != "cpm_trans_id"}), "missing cpm_trans_id"),
        (urlencode(FIELDS | {"cpm_trans_id": " "}), "missing cpm_trans_id"),
        (urlencode(FIELDS | {"cpm_amount": "10.5"}), "cpm_amount '10.5' is not an exact XOF amount"),
        (urlencode(FIELDS | {"cpm_amount": "abc"}), "cpm_amount 'abc'"),
        (urlencode(FIELDS | {"cpm_currency": "ZZZ"}), "cpm_currency 'ZZZ' is not supported"),
        (urlencode(FIELDS) + "&cpm_trans_id=other", "field 'cpm_trans_id' is given 2 times"),
    ],
    ids=[
        "json",
        "html",
        "empty-pair",
        "bad-utf8",
        "no-trans-id",
        "blank-trans-id",
        "decimal-xof",
        "nan",
        "currency",
        "dup",
    ],
)
def test_malformed_notifications(body: str, message: str) -> None:
    with pytest.raises(MalformedDelivery, match=message) as info:
        make_client().parse_delivery(envelope(body, {"x-token": "00"}))
    assert info.value.reason == "malformed"


def test_empty_body_with_query_is_malformed_not_a_ping() -> None:
    with pytest.raises(MalformedDelivery, match="query parameters"):
        make_client().parse_delivery(envelope("", method="GET", query={"cpm_trans_id": "x"}))


# --------------------------------------------------------------------------- status mapping

MAPPING: list[tuple[str, str | None, Outcome | type[ProviderError]]] = [
    ("00", "ACCEPTED", Outcome.SUCCEEDED),
    ("627", "REFUSED", Outcome.FAILED),
    ("662", "WAITING_FOR_CUSTOMER", Outcome.PENDING),
    ("00", None, ProviderProtocolError),  # success code without a status says nothing
    ("00", "SOMETHING_NEW", ProviderProtocolError),
    ("600", "ACCEPTED", Outcome.SUCCEEDED),  # data.status wins over the code
    ("660", "ACCEPTED", Outcome.REFUNDED),  # ...except a refund, the later fact
    ("660", None, Outcome.REFUNDED),
    ("661", None, Outcome.SUCCEEDED),
    *[(code, None, Outcome.PENDING) for code in ("201", "607", "623", "638", "662", "663")],
    *[
        (str(code), None, Outcome.FAILED)
        for code in (600, 602, 604, 606, 627, 630, 631, 632, 633, 634, 635, 636, 637, 641, 642, 664)
    ],
    *[(code, None, ProviderTransientError) for code in ("603", "621", "622", "626", "628", "629", "624", "804")],
    ("801", None, ProviderRateLimited),
    *[(code, None, ProviderAuthError) for code in ("609", "613", "601")],
    *[(str(code), None, ProviderBadRequest) for code in (608, 610, 611, 612, 614, 615, 616, 617, 618)],
    *[(code, None, ProviderBadRequest) for code in ("605", "619", "620", "625", "800", "802", "803", "699")],
    *[(code, None, ProviderProtocolError) for code in ("999", "1010", "abc", "7", "500")],
]


@pytest.mark.parametrize(("code", "status", "expected"), MAPPING, ids=[f"{c}-{s}" for c, s, _ in MAPPING])
def test_status_mapping_table(code: str, status: str | None, expected: Any) -> None:
    assert classify(code, status) == expected


def answer(code: Any, message: str = "M", data: Any = None, **extra: Any) -> str:
    return json.dumps({"code": code, "message": message, "data": data, "api_response_id": "1663323067.7677"} | extra)


def test_parse_documented_success_example() -> None:
    data = {
        "amount": "100",
        "currency": "XOF",
        "status": "ACCEPTED",
        "payment_method": "OM",
        "description": "Paiement abonnement",
        "metadata": None,
        "operator_id": "MP220915.2257.A76307",
        "payment_date": "2022-09-15 22:57:15",
        "fund_availability_date": "2022-09-17 00:00:00",
    }
    text = answer("00", "SUCCES", data)
    status = parse_check_response("ref-1", text)
    assert status.outcome is Outcome.SUCCEEDED
    assert (status.amount, status.currency) == (100, "XOF") and isinstance(status.amount, int)
    assert status.paid_at == datetime(2022, 9, 15, 22, 57, 15, tzinfo=UTC)
    assert status.provider_transaction_id == "MP220915.2257.A76307"
    assert (status.provider_code, status.provider_status, status.raw) == ("00", "ACCEPTED", text)


def test_parse_refusal_with_blank_date_and_numeric_amount() -> None:
    data = {"amount": 12.5, "currency": "USD", "status": "REFUSED", "operator_id": None, "payment_date": " "}
    status = parse_check_response("ref-1", answer("627", "TRANSACTION_CANCEL", data))
    assert (status.outcome, status.amount, status.paid_at, status.provider_transaction_id) == (
        Outcome.FAILED,
        1250,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ("<html>", ProviderUnreadableAnswer, "not JSON"),  # an outage's page: retried (retryable)
        ("[1]", ProviderProtocolError, "not a JSON object"),
        (answer("00", data={"status": "ACCEPTED", "amount": "10.5", "currency": "XOF"}), ProviderProtocolError, "10.5"),
        (answer("00", data={"status": "ACCEPTED", "amount": "10"}), ProviderProtocolError, "without currency"),
        (
            answer("00", data={"status": "ACCEPTED", "amount": "1", "currency": "XOF", "payment_date": "15/09/2022"}),
            ProviderProtocolError,
            "payment_date",
        ),
        (answer("627", "TRANSACTION_CANCEL"), ProviderNotFound, "without transaction data"),
        (answer(609, "AUTH_NOT_FOUND", description="bad apikey"), ProviderAuthError, "609 AUTH_NOT_FOUND: bad apikey"),
        (answer("", "?"), ProviderProtocolError, "no code"),
    ],
    ids=["html", "array", "decimal-xof", "no-currency", "bad-date", "unknown-txn", "int-code", "no-code"],
)
def test_parse_bad_answers(text: str, error: type[ProviderError], match: str) -> None:
    with pytest.raises(error, match=match) as info:
        parse_check_response("ref-1", text)
    assert info.value.provider == "cinetpay"
    assert type(info.value) is error
    assert info.value.retryable is (error is ProviderUnreadableAnswer)


def test_a_body_parsed_again_is_read_from_the_cache_and_each_caller_gets_its_own_fields() -> None:
    """parse_delivery then authenticate read the same body: the second parse is the first's, and neither
    caller can change what the other reads; a malformed body is refused every time."""
    body = urlencode(FIELDS)
    _parsed_form.cache_clear()
    first = parse_form(body)
    first["cpm_amount"] = "1"
    assert parse_form(body) == FIELDS and _parsed_form.cache_info().hits == 1
    for _ in range(2):
        with pytest.raises(MalformedDelivery, match="given 2 times"):
            parse_form(body + "&cpm_amount=2")
    long = urlencode({**FIELDS, "cpm_designation": "x" * 5000})
    assert parse_form(long)["cpm_designation"] == "x" * 5000 and _parsed_form.cache_info().currsize == 1  # not kept
