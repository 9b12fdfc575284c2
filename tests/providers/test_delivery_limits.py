"""Issue #10: what ``parse_delivery`` hands the pipeline always fits the database, or is malformed.

* JSON nested deeper than the limit is ``MalformedDelivery`` ("body nested too deeply"), never a
  ``RecursionError``; the same for provider answers (``ProviderProtocolError``);
* a reference longer than the ``reference`` columns (100) or holding a NUL is ``MalformedDelivery``
  naming the field; every dedupe key fits the inbox's 200 characters, deterministically;
* CinetPay's dedupe key covers what its x-token covers: unsigned extras make no new delivery;
* claims (status, amount) never exceed their columns, and an absurd amount costs no CPU.

Names new with the issue are read through ``base.`` so that every test here fails, rather than the
whole module failing to import, on the code before it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest
import requests

from providers import base
from providers.base import Delivery, ForgedDelivery, MalformedDelivery, ProviderClient, ProviderProtocolError
from providers.cinetpay import CinetPayClient, build_notification, compute_x_token
from providers.http import json_body, json_object
from providers.mtn_momo import MtnMomoClient
from providers.orange_money import OrangeMoneyClient, parse_token_response
from providers.wave import WaveClient, signature_header
from schemas.messages import WebhookEnvelope
from tests.providers.test_cinetpay_parsing import FIELDS

CINETPAY_SECRET = "cinetpay-secret"
WAVE_SECRET = "wave_sn_WHS_limits"
NOW = 1_760_000_000
MOMO_REF = "3f2b8c1e-5d4a-4e6f-9a7b-1c2d3e4f5a6b"
DEEP = "[" * 100_000
# Parses as an object, and nests too deep further in (in a field nobody reads).
DEEP_INSIDE = '{"id": "AE_1", "type": "checkout.session.completed", "data": {"x": ' + DEEP

CPM = FIELDS  # a complete, signed CinetPay notification (the parsing tests' own)
SESSION = {
    "id": "cos-18qq25rgr100a",
    "amount": "5000",
    "currency": "XOF",
    "checkout_status": "complete",
    "payment_status": "succeeded",
    "client_reference": "order-42",
}


def envelope(provider: str, body: str, *, path: str = "/hook", method: str = "POST", **extra: Any) -> WebhookEnvelope:
    return WebhookEnvelope.model_validate(
        {
            "schema": "payrecon.webhook/1",
            "provider": provider,
            "received_at": datetime.fromtimestamp(NOW, UTC).isoformat(),  # Wave's signatures: made at NOW
            "method": method,
            "path": path,
            "body": body,
            **extra,
        }
    )


def cinetpay() -> CinetPayClient:
    return CinetPayClient(api_url="http://127.0.0.1:9", api_key="k", site_id="100000", secret_key=CINETPAY_SECRET)


def momo() -> MtnMomoClient:
    return MtnMomoClient(
        api_url="http://127.0.0.1:9", api_user=MOMO_REF, api_key="k", subscription_key="s", target_environment="x"
    )


def orange() -> OrangeMoneyClient:
    return OrangeMoneyClient(api_url="http://127.0.0.1:9", client_id="c", client_secret="s", merchant_key="m")


def wave() -> WaveClient:
    return WaveClient(api_url="http://127.0.0.1:9", api_key="k", webhook_secrets=[WAVE_SECRET])


@pytest.fixture(params=["cinetpay", "mtn_momo", "orange_money", "wave"])
def any_client(request: pytest.FixtureRequest) -> Iterator[tuple[str, ProviderClient]]:
    factory: dict[str, Callable[[], ProviderClient]] = {
        "cinetpay": cinetpay,
        "mtn_momo": momo,
        "orange_money": orange,
        "wave": wave,
    }
    client = factory[request.param]()
    yield request.param, client
    client.close()


def cinetpay_envelope(fields: dict[str, str], *, extra: str = "", token: str | None = None) -> WebhookEnvelope:
    body, signed = build_notification(fields, CINETPAY_SECRET)
    return envelope("cinetpay", body + extra, headers={"x-token": signed if token is None else token})


def wave_envelope(
    event_id: str = "AE_1", event_type: str = "checkout.session.completed", **data: Any
) -> WebhookEnvelope:
    body = json.dumps({"id": event_id, "type": event_type, "data": {**SESSION, **data}})
    return envelope("wave", body, headers={"Wave-Signature": signature_header([WAVE_SECRET], NOW, body)})


def momo_envelope(body: dict[str, Any], **extra: Any) -> WebhookEnvelope:
    return envelope("mtn_momo", json.dumps(body), path=f"/momo/callback/{MOMO_REF}", method="PUT", **extra)


def orange_envelope(body: dict[str, Any], path: str = "/orange/notify/OM-1", **extra: Any) -> WebhookEnvelope:
    return envelope("orange_money", json.dumps(body), path=path, **extra)


def assert_fits(delivery: Delivery) -> None:
    """What the pipeline stores from a delivery fits its columns and PostgreSQL's text."""
    assert 0 < len(delivery.dedupe_key) <= 200 and "\0" not in delivery.dedupe_key
    assert delivery.reference is None or (len(delivery.reference) <= 100 and "\0" not in delivery.reference)
    assert delivery.claimed_status is None or (
        len(delivery.claimed_status) <= 64 and "\0" not in delivery.claimed_status
    )
    assert delivery.claimed_amount is None or abs(delivery.claimed_amount) <= 2**63 - 1


# --------------------------------------------------------------------------- 1. nesting


def parse(name: str, client: ProviderClient, body: str) -> Delivery:
    return client.parse_delivery(envelope(name, body, path=f"/notify/{MOMO_REF}"))


@pytest.mark.parametrize("body", [DEEP, DEEP_INSIDE], ids=["array", "inside-an-object"])
def test_deep_bodies_are_malformed_not_a_recursion_error(any_client: tuple[str, ProviderClient], body: str) -> None:
    name, client = any_client
    with pytest.raises(MalformedDelivery) as info:
        parse(name, client, body)
    if name != "cinetpay":  # CinetPay refuses any JSON body before reading it ("body is JSON")
        assert str(info.value) == "body nested too deeply (more than 64 levels of arrays and objects)"


def test_brackets_in_strings_are_not_nesting() -> None:
    body = '{"a": "' + "[" * 5000 + '"}'
    assert not base.json_depth_exceeds(body)
    assert momo().parse_delivery(envelope("mtn_momo", body, path=f"/notify/{MOMO_REF}")).reference == MOMO_REF


def test_nesting_up_to_the_limit_is_read() -> None:
    nested = "[" * 60 + "]" * 60
    delivery = wave().parse_delivery(wave_envelope(extra_field=json.loads(nested)))
    assert delivery.reference == "order-42"
    assert base.MAX_JSON_DEPTH == 64
    assert base.json_depth_exceeds("[" * 65 + "]" * 65) and not base.json_depth_exceeds("[" * 64 + "]" * 64)
    # Escaped quotes do not end a string; brackets after one are still inside it.
    assert not base.json_depth_exceeds('["\\"' + "[" * 100 + '"]')


def test_depth_scan_is_linear() -> None:
    hostile = '["' + '\\"' * 400_000  # an unterminated string full of escaped quotes
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"not JSON|Unterminated|Expecting"):
        base.load_json(hostile + "[" * 100)
    assert time.perf_counter() - started < 2.0


def test_deep_provider_answers_are_protocol_errors() -> None:
    with pytest.raises(ProviderProtocolError, match="status answer is nested too deeply"):
        json_object(DEEP, "status answer", provider="wave", http_status=200)
    with pytest.raises(ProviderProtocolError, match="token answer is nested too deeply"):
        parse_token_response(DEEP)
    response = requests.Response()
    response.status_code, response._content = 500, ('{"code": ' + DEEP).encode()
    assert json_body(response) is None
    response._content = b'{"code": "42"}'
    assert json_body(response) == {"code": "42"}


# --------------------------------------------------------------------------- 2. references, NUL, dedupe keys


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda ref: cinetpay().parse_delivery(cinetpay_envelope(CPM | {"cpm_trans_id": ref})), "cpm_trans_id"),
        (lambda ref: wave().parse_delivery(wave_envelope(client_reference=ref)), "data.client_reference"),
        (lambda ref: momo().parse_delivery(momo_envelope({"referenceId": ref})), "body referenceId"),
        (
            lambda ref: orange().parse_delivery(orange_envelope({"notif_token": "t"}, query={"order_id": ref})),
            "query parameter order_id",
        ),
        (
            lambda ref: orange().parse_delivery(orange_envelope({"notif_token": "t"}, f"/orange/notify/{quote(ref)}")),
            "the notification path's order id",
        ),
    ],
    ids=["cinetpay", "wave", "momo", "orange-query", "orange-path"],
)
def test_references_longer_than_the_column_are_malformed(make: Callable[[str], Delivery], field: str) -> None:
    assert make("R" * 100).reference == "R" * 100
    with pytest.raises(MalformedDelivery, match=f"^{field} is 101 characters long; the limit is 100$"):
        make("R" * 101)
    assert base.MAX_REFERENCE_LENGTH == 100


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: cinetpay().parse_delivery(cinetpay_envelope(CPM | {"cpm_trans_id": "order\0-42"})), "cpm_trans_id"),
        (lambda: wave().parse_delivery(wave_envelope(client_reference="order\0-42")), "data.client_reference"),
        (lambda: wave().parse_delivery(wave_envelope(client_reference="order\ud800")), "data.client_reference"),
        (lambda: wave().parse_delivery(wave_envelope(event_id="AE\0_1")), "missing or bad event id: it"),
        (lambda: momo().parse_delivery(momo_envelope({"referenceId": "a\0b"})), "body referenceId"),
        (
            lambda: orange().parse_delivery(orange_envelope({"notif_token": "t"}, query={"order_id": "a\0b"})),
            "query parameter order_id",
        ),
        (lambda: orange().parse_delivery(orange_envelope({"notif_token": "tok\0en"}, "/orange/x")), "notif_token"),
    ],
    ids=["cinetpay", "wave", "wave-surrogate", "wave-event-id", "momo", "orange-reference", "orange-notif-token"],
)
def test_nul_in_a_stored_reference_or_id_is_malformed(make: Callable[[], Delivery], message: str) -> None:
    with pytest.raises(MalformedDelivery, match=f"^{message}.* contains an? (NUL character|unpaired surrogate)$"):
        make()


def test_a_trailing_newline_is_not_part_of_a_reference() -> None:
    with pytest.raises(MalformedDelivery, match="not a valid reference"):
        orange().parse_delivery(orange_envelope({"notif_token": "t"}, "/orange/notify/OM-1%0A"))
    with pytest.raises(MalformedDelivery, match="not a UUID"):
        momo().parse_delivery(envelope("mtn_momo", "{}", path=f"/momo/callback/{MOMO_REF}%0A"))


@pytest.mark.parametrize("length", [194, 195, 199, 200])
def test_wave_event_ids_up_to_200_characters_make_keys_that_fit(length: int) -> None:
    client = wave()
    event_id = "E" * length
    delivery = client.parse_delivery(wave_envelope(event_id))
    assert_fits(delivery)
    # Deterministic: a redelivery (re-signed, as Wave does) shares the key; another id does not.
    assert client.parse_delivery(wave_envelope(event_id)).dedupe_key == delivery.dedupe_key
    assert client.parse_delivery(wave_envelope("F" * length)).dedupe_key != delivery.dedupe_key
    if length <= 194:
        assert delivery.dedupe_key == f"event:{event_id}"  # short ids keep their readable key
    else:
        assert delivery.dedupe_key == "sha256:" + hashlib.sha256(f"event:{event_id}".encode()).hexdigest()
    ignored = client.parse_delivery(wave_envelope(event_id, "merchant.payment_received"))
    assert ignored.dedupe_key == delivery.dedupe_key and len(ignored.dedupe_key) <= 200


def test_bounded_dedupe_key() -> None:
    key = base.bounded_dedupe_key
    assert base.MAX_DEDUPE_KEY_LENGTH == 200 and base.HASHED_DEDUPE_KEY_PREFIX == "sha256:"
    assert key("x" * 200) == "x" * 200
    for natural in ("x" * 201, "a\0b", "a\ud800", "", "sha256:" + "0" * 64):
        derived = key(natural)
        assert derived.startswith("sha256:") and len(derived) == 71 and derived == key(natural)
        assert derived != natural
    assert key("x" * 201) != key("x" * 202)
    # No natural key can pose as a hashed one: hashing a key that looks hashed changes it.
    assert key(key("x" * 201)) != key("x" * 201)


# --------------------------------------------------------------------------- 3. what the key covers


def test_cinetpay_unsigned_extras_do_not_make_a_new_delivery() -> None:
    client = cinetpay()
    original = cinetpay_envelope(CPM)
    key = client.parse_delivery(original).dedupe_key
    token = original.header("x-token") or ""
    for variant in (
        cinetpay_envelope(CPM, extra="&x=1"),
        cinetpay_envelope(CPM, extra="&cpm_result=00&x=2"),
        cinetpay_envelope(CPM, token=f"  {token.upper()} "),  # authenticate strips and lowercases too
        envelope("cinetpay", original.body, method="PUT", headers={"x-token": token}),
        # A signed field left out counts as "", as in the HMAC: cpm_custom is "" here.
        envelope("cinetpay", original.body.replace("&cpm_custom=", ""), headers={"x-token": token}),
    ):
        client.authenticate(variant, client.parse_delivery(variant), None)  # still authentic...
        assert client.parse_delivery(variant).dedupe_key == key  # ...and the same delivery


def test_cinetpay_key_changes_with_what_the_signature_covers_and_the_token() -> None:
    client = cinetpay()
    key = client.parse_delivery(cinetpay_envelope(CPM)).dedupe_key
    # Another signed notification about the same payment (a later status) is another delivery.
    later = cinetpay_envelope(CPM | {"cpm_error_message": "TRANSACTION_CANCEL"})
    assert client.parse_delivery(later).dedupe_key != key
    # A forgery with the authentic fields cannot take the authentic notification's key first.
    forged = cinetpay_envelope(CPM, token="0" * 64)
    with pytest.raises(ForgedDelivery):
        client.authenticate(forged, client.parse_delivery(forged), None)
    assert client.parse_delivery(forged).dedupe_key != key
    # The HMAC signs a concatenation: characters moved across a field boundary keep the token
    # valid but change the claim (here the reference). Another claim, another key.
    shifted = CPM | {"cpm_trans_id": "order-422", "cpm_trans_date": "025-01-15 10:30:00"}
    assert compute_x_token(shifted, CINETPAY_SECRET) == compute_x_token(CPM, CINETPAY_SECRET)
    moved = client.parse_delivery(cinetpay_envelope(shifted))
    assert moved.reference == "order-422" and moved.dedupe_key != key


def test_wave_key_is_the_event_id_and_unsigned_providers_keep_their_keys() -> None:
    # Wave signs t + the whole body; a retry is re-signed with a new t, so the key is the event id.
    body = json.dumps({"id": "AE_1", "type": "checkout.session.completed", "data": SESSION})
    later = envelope("wave", body, headers={"Wave-Signature": signature_header([WAVE_SECRET], NOW + 60, body)})
    assert wave().parse_delivery(later).dedupe_key == wave().parse_delivery(wave_envelope()).dedupe_key == "event:AE_1"
    # MoMo and Orange sign nothing: hex SHA-256 of "<reference>\n<body>", as before the issue.
    momo_env = momo_envelope({"status": "SUCCESSFUL"})
    expected = hashlib.sha256(f"{MOMO_REF}\n{momo_env.body}".encode()).hexdigest()
    assert momo().parse_delivery(momo_env).dedupe_key == expected
    orange_env = orange_envelope({"notif_token": "t", "status": "SUCCESS"})
    expected = hashlib.sha256(f"OM-1\n{orange_env.body}".encode()).hexdigest()
    assert orange().parse_delivery(orange_env).dedupe_key == expected


# --------------------------------------------------------------------------- claims


def test_claimed_statuses_fit_their_column() -> None:
    long_status = "S" * 100 + "\0"
    assert_fits(cinetpay().parse_delivery(cinetpay_envelope(CPM | {"cpm_error_message": long_status})))
    assert_fits(cinetpay().parse_delivery(cinetpay_envelope(CPM, extra="&cpm_result=%00" + "R" * 80)))
    assert_fits(orange().parse_delivery(orange_envelope({"notif_token": "t", "status": long_status})))
    assert_fits(momo().parse_delivery(momo_envelope({"status": "\0" + long_status})))
    assert_fits(wave().parse_delivery(wave_envelope(event_type="other." + long_status)))
    assert orange().parse_delivery(orange_envelope({"notif_token": "t", "status": "\0"})).claimed_status is None


@pytest.mark.parametrize("amount", ["1e999999999", "9223372036854775808", "-9223372036854775808"])
def test_absurd_claimed_amounts_are_refused_or_dropped(amount: str) -> None:
    with pytest.raises(MalformedDelivery, match="cpm_amount"):
        cinetpay().parse_delivery(cinetpay_envelope(CPM | {"cpm_amount": amount}))
    with pytest.raises(MalformedDelivery, match=r"data\.amount"):
        wave().parse_delivery(wave_envelope(amount=amount))
    # MoMo's claimed amount is a hint: an unreadable one is dropped.
    delivery = momo().parse_delivery(momo_envelope({"amount": amount, "currency": "XOF"}))
    assert delivery.claimed_amount is None
    assert cinetpay().parse_delivery(cinetpay_envelope(CPM | {"cpm_amount": "9223372036854775807"})).claimed_amount


def test_a_huge_exponent_costs_no_cpu() -> None:
    started = time.perf_counter()
    with pytest.raises(ValueError, match="out of range"):
        base.bounded_minor("9e999998", "XOF")  # int() of it takes seconds
    with pytest.raises(MalformedDelivery, match="cpm_amount"):
        cinetpay().parse_delivery(cinetpay_envelope(CPM | {"cpm_amount": "9e999998"}))
    assert time.perf_counter() - started < 1.0


def test_delivery_error_messages_are_storable() -> None:
    with pytest.raises(MalformedDelivery) as info:
        wave().parse_delivery(wave_envelope(event_type="checkout.\0", client_reference=None))
    assert "\0" not in str(info.value) and "\ufffd" in str(info.value)
    assert str(ForgedDelivery("a\ud800b")) == "a\ufffdb"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"ref": "A-1"}, "A-1"),
        ({"ref": [" A-1 "]}, "A-1"),
        ({"ref": []}, None),  # present without a value: absent (Orange's copy said "given 0 times")
        ({"ref": "  "}, None),
        ({}, None),
    ],
)
def test_one_reading_of_a_query_parameter_for_every_provider(query: dict[str, Any], expected: str | None) -> None:
    assert base.query_value(query, "ref") == expected


def test_a_query_parameter_given_twice_is_malformed_not_a_guess() -> None:
    with pytest.raises(MalformedDelivery, match="query parameter 'ref' is given 2 times"):
        base.query_value({"ref": ["A-1", "B-2"]}, "ref")


def test_an_answer_keeps_what_the_database_can_hold() -> None:
    """A provider's answer is never refused by the database: NUL and lone surrogates mended, long texts cut with an
    ellipsis and a hash of the whole, a currency it names without an amount dropped when it is not one we know."""
    answer = base.VerifiedStatus(
        reference="R1", outcome=base.Outcome.FAILED, provider_status="S" * 65, provider_code="a\x00b\ud800",
        provider_message="m\x00", currency="FCFA", provider_transaction_id="T" * 201,
    )  # fmt: skip
    assert (answer.provider_code, answer.provider_message, answer.currency) == ("a\ufffdb\ufffd", "m\ufffd", None)
    assert len(answer.provider_status or "") == base.MAX_STATUS_LENGTH and "\u2026" in (answer.provider_status or "")
    assert len(answer.provider_transaction_id or "") == base.MAX_ID_LENGTH
    assert base.storable("S" * 64, base.MAX_STATUS_LENGTH) == "S" * 64  # at the limit: as it is
    paid = base.VerifiedStatus(reference="R1", outcome=base.Outcome.SUCCEEDED, provider_status="OK",
                               provider_code=None, amount=5000, currency="XOF")  # fmt: skip
    assert paid.currency == "XOF"
