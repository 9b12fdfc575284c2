"""Wave without the network: signatures, event parsing, status mapping, session and statement answers."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from typing import Any

import pytest

from providers.base import (
    DeliveryKind,
    ForgedDelivery,
    MalformedDelivery,
    Outcome,
    ProviderClient,
    ProviderProtocolError,
)
from providers.wave import (
    WaveClient,
    classify,
    compute_signature,
    parse_session,
    parse_signature_header,
    parse_transactions_page,
    pick_session,
    signature_header,
)
from schemas.messages import WebhookEnvelope

SECRET = "wave_sn_WHS_xz4m6g8rjs9bshxy05xj4khcvjv7j3hcp4fbpvv6met0zdrjvezg"
VECTOR_BODY = (
    '{"id":"AE_ijzo7oGgrlM9","type":"checkout.session.completed",'
    '"data":{"id":"cos-18qq25rgr100a","client_reference":"order-42"}}'
)
VECTOR_T = 1639081943
# Computed with `openssl dgst -sha256 -hmac <secret>` over t + body, not with the code under test.
VECTOR_SIG = "898ffe7959def5ea99d0ae806d247e1033428aefe2fec020e762073af3ee2c2f"
VECTOR_SIG_OLD = "499e809b5f8cc753b318e47e2bed475537154e8f551a4b2ae49cd66760b7166a"  # key "old-secret"
NOW = 1_760_000_000.0

SESSION: dict[str, Any] = {
    "id": "cos-18qq25rgr100a",
    "amount": "5000",
    "checkout_status": "complete",
    "client_reference": "order-42",
    "currency": "XOF",
    "error_url": "https://example.com/error",
    "last_payment_error": None,
    "business_name": "Shop",
    "payment_status": "succeeded",
    "transaction_id": "TCQWCJXDBH6U5OATMGA",
    "success_url": "https://example.com/success",
    "wave_launch_url": "https://pay.wave.com/c/cos-18qq25rgr100a",
    "when_completed": "2021-12-08T10:15:32Z",
    "when_created": "2021-12-08T10:13:04Z",
    "when_expires": "2021-12-08T10:43:04Z",
}


def make_client(**overrides: Any) -> WaveClient:
    # Never used for network calls in this module.
    options: dict[str, Any] = {
        "api_url": "http://127.0.0.1:9",
        "api_key": "wave_sn_prod_key",
        "webhook_secrets": [SECRET],
    }
    return WaveClient(**(options | overrides))


def envelope(body: str, headers: dict[str, str] | None = None, *, received: float = NOW) -> WebhookEnvelope:
    return WebhookEnvelope.model_validate(
        {
            "schema": "payrecon.webhook/1",
            "provider": "wave",
            "received_at": datetime.fromtimestamp(received, UTC).isoformat(),
            "method": "POST",
            "path": "/wave/webhook",
            "headers": headers or {},
            "body": body,
        }
    )


def event(event_type: str = "checkout.session.completed", **data: Any) -> str:
    return json.dumps({"id": "AE_ijzo7oGgrlM9", "type": event_type, "data": {**SESSION, **data}})


def signed(body: str, *, t: float = NOW, keys: tuple[str, ...] = (SECRET,)) -> WebhookEnvelope:
    return envelope(body, {"Content-Type": "application/json", "Wave-Signature": signature_header(keys, int(t), body)})


# --------------------------------------------------------------------------- signatures


def test_signature_matches_an_independent_vector() -> None:
    assert compute_signature(SECRET, VECTOR_T, VECTOR_BODY) == VECTOR_SIG
    assert compute_signature("old-secret", str(VECTOR_T), VECTOR_BODY) == VECTOR_SIG_OLD
    assert signature_header(["old-secret", SECRET], VECTOR_T, VECTOR_BODY) == (
        f"t={VECTOR_T},v1={VECTOR_SIG_OLD},v1={VECTOR_SIG}"
    )


def test_vector_authenticates_as_it_arrives_and_not_when_it_arrives_ten_minutes_later() -> None:
    """The signature's time against the delivery's arrival (the receiver's ``received_at``), not against the time it
    is read: a delivery read an hour late (an outage, a backlog, a verification put off) is as authentic as when it
    came; a replay reaches the receiver late, and is refused."""
    header = {"Wave-Signature": f"t={VECTOR_T}, v1={VECTOR_SIG.upper()}"}  # spaces, upper-case hex
    client = make_client()
    on_time = envelope(VECTOR_BODY, header, received=VECTOR_T + 300.0)
    delivery = client.parse_delivery(on_time)
    assert (delivery.reference, delivery.dedupe_key) == ("order-42", "event:AE_ijzo7oGgrlM9")
    client.authenticate(on_time, delivery, None)  # whenever it is read: the clock is not asked
    late = envelope(VECTOR_BODY, header, received=VECTOR_T + 301.0)
    with pytest.raises(ForgedDelivery, match="stale timestamp: signed 301 s ago, tolerance 300 s"):
        client.authenticate(late, delivery, None)
    early = envelope(VECTOR_BODY, header, received=VECTOR_T - 301.0)  # a timestamp from the future is as suspect
    with pytest.raises(ForgedDelivery, match="stale timestamp: dated 301 s in the future"):
        client.authenticate(early, delivery, None)


def test_parse_signature_header() -> None:
    assert parse_signature_header("t=1,v1=aa,v0=zz,v1=bb") == ("1", ("aa", "bb"))
    assert parse_signature_header(" t = 12 , v1 = cc ") == ("12", ("cc",))
    for garbled in ("", "t=1", "v1=aa", "t=x,v1=aa", "t=1,t=1,v1=aa", "t=1;v1=aa", "t=١٢,v1=aa", "t=1," + "v1=a," * 17):
        with pytest.raises(ForgedDelivery, match="garbled"):
            parse_signature_header(garbled)


def test_rotation_any_secret_any_signature() -> None:
    body = event()
    # Signature from the old key only; the client holds [new, old].
    make_client(webhook_secrets=["wave_sn_WHS_new", SECRET]).authenticate(
        signed(body), make_client().parse_delivery(signed(body)), None
    )
    # Two v1 values, only the second matches the single key the client holds.
    two = signed(body, keys=("someone-else", SECRET))
    make_client().authenticate(two, make_client().parse_delivery(two), None)
    with pytest.raises(ForgedDelivery, match="does not match any configured secret"):
        make_client(webhook_secrets=["wave_sn_WHS_new"]).authenticate(two, make_client().parse_delivery(two), None)


def test_tampered_body_and_hostile_headers_are_forged_not_crashes() -> None:
    body = event()
    good = signed(body)
    tampered = envelope(body.replace('"5000"', '"50"'), dict(good.headers))
    client = make_client()
    with pytest.raises(ForgedDelivery, match="does not match"):
        client.authenticate(tampered, client.parse_delivery(tampered), None)
    t = int(NOW)
    for header in (f"t={t},v1=é" + "0" * 63, f"t={t},v1=", f"t={t},v1={'0' * 5000}"):
        hostile = envelope(body, {"Wave-Signature": header})
        with pytest.raises(ForgedDelivery):
            client.authenticate(hostile, client.parse_delivery(hostile), None)


def test_bearer_strategy_and_configuration() -> None:
    body = event()
    shared = make_client(webhook_secrets=(), webhook_shared_secret="wave_sn_WHS_shared")
    ok = envelope(body, {"authorization": "bearer wave_sn_WHS_shared"})  # header and scheme case-insensitive
    shared.authenticate(ok, shared.parse_delivery(ok), None)
    for value in ("Bearer wave_sn_WHS_share", "Basic wave_sn_WHS_shared", "Bearer", "Bearer é"):
        bad = envelope(body, {"Authorization": value})
        with pytest.raises(ForgedDelivery, match="bearer secret does not match"):
            shared.authenticate(bad, shared.parse_delivery(bad), None)
    nothing = make_client(webhook_secrets=(), webhook_shared_secret="")
    with pytest.raises(ForgedDelivery, match="no webhook secret configured"):
        nothing.authenticate(ok, nothing.parse_delivery(ok), None)
    # Both configured: a wrong signature still passes when the bearer is right, and the reason
    # names the header that was sent first when both fail.
    both = make_client(webhook_shared_secret="wave_sn_WHS_shared")
    mixed = envelope(body, {"Wave-Signature": f"t={int(NOW)},v1=00", "Authorization": "Bearer wave_sn_WHS_shared"})
    both.authenticate(mixed, both.parse_delivery(mixed), None)
    only_sig = envelope(body, {"Wave-Signature": f"t={int(NOW)},v1=00"})
    with pytest.raises(ForgedDelivery, match=r"^Wave-Signature does not match any configured secret; missing Auth"):
        both.authenticate(only_sig, both.parse_delivery(only_sig), None)


def test_client_guards_its_secrets() -> None:
    client = make_client(webhook_shared_secret="wave_sn_WHS_shared")
    text = repr(client)
    assert "wave_sn_prod_key" not in text and SECRET not in text and "wave_sn_WHS_shared" not in text
    assert "1 signing secret(s), shared secret" in text
    with pytest.raises(TypeError, match="sequence of secrets"):
        make_client(webhook_secrets=SECRET)
    assert isinstance(client, ProviderClient)


# --------------------------------------------------------------------------- deliveries


def test_completed_event_is_a_payment_delivery() -> None:
    delivery = make_client().parse_delivery(signed(event()))
    assert delivery.kind is DeliveryKind.PAYMENT
    assert (delivery.dedupe_key, delivery.reference) == ("event:AE_ijzo7oGgrlM9", "order-42")
    assert (delivery.claimed_status, delivery.claimed_amount, delivery.claimed_currency) == (
        "complete/succeeded",
        5000,
        "XOF",
    )
    assert delivery.provider_ids == {
        "checkout_session_id": "cos-18qq25rgr100a",
        "transaction_id": "TCQWCJXDBH6U5OATMGA",
    }
    assert delivery.lookup is None


def test_payment_failed_event_claims_an_open_session() -> None:
    body = event(
        "checkout.session.payment_failed",
        checkout_status="open",
        payment_status="processing",
        transaction_id=None,
        amount="12.50",
        currency="GMD",
        last_payment_error={"code": "insufficient-funds", "message": "Not enough money"},
    )
    delivery = make_client().parse_delivery(envelope(body))
    assert (delivery.kind, delivery.claimed_status, delivery.claimed_amount) == (
        DeliveryKind.PAYMENT,
        "open/processing",
        1250,
    )
    assert delivery.provider_ids == {"checkout_session_id": "cos-18qq25rgr100a"}


@pytest.mark.parametrize(
    "event_type", ["merchant.payment_received", "b2b.payment_received", "b2b.payment_failed", "test.test_event"]
)
def test_other_event_types_are_ignored(event_type: str) -> None:
    body = json.dumps({"id": "AE_other", "type": event_type, "data": {"amount": "100", "client_reference": "x"}})
    delivery = make_client().parse_delivery(envelope(body))
    assert (delivery.kind, delivery.dedupe_key, delivery.reference) == (DeliveryKind.IGNORED, "event:AE_other", None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("id=AE_1&type=x", "body is not JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({"type": "checkout.session.completed", "data": {}}), "missing or bad event id"),
        (json.dumps({"id": "", "type": "x.y", "data": {}}), "missing or bad event id"),
        (json.dumps({"id": "A" * 201, "type": "x.y", "data": {}}), "missing or bad event id"),
        (json.dumps({"id": "AE_1", "data": {}}), "missing type"),
        (json.dumps({"id": "AE_1", "type": "x.y", "data": None}), "data is not an object"),
        (
            json.dumps(
                {"id": "AE_1", "type": "checkout.session.completed", "data": {**SESSION, "client_reference": None}}
            ),
            "no client_reference: checkout.session.completed event AE_1",
        ),
        (event(amount="50.5"), "data.amount '50.5' is not an exact XOF amount"),
        (event(amount=[1]), "data.amount has type list"),
        (event(currency="ZZZ"), "data.currency 'ZZZ' is not supported"),
        (event(currency=None), "data.amount without currency"),
    ],
)
def test_malformed_deliveries_name_the_field(body: str, message: str) -> None:
    with pytest.raises(MalformedDelivery, match=re.escape(message)):
        make_client().parse_delivery(envelope(body))


# --------------------------------------------------------------------------- sessions


@pytest.mark.parametrize(
    ("checkout_status", "payment_status", "outcome"),
    [
        ("complete", "succeeded", Outcome.SUCCEEDED),
        ("complete", "cancelled", Outcome.FAILED),
        ("expired", "processing", Outcome.FAILED),
        ("expired", "cancelled", Outcome.FAILED),
        ("open", "processing", Outcome.PENDING),
        ("open", "cancelled", Outcome.PENDING),  # a failed attempt on an open session: the customer may retry
        ("open", "succeeded", Outcome.PENDING),  # contradictory: re-check, never guess
        ("expired", "succeeded", Outcome.PENDING),
        ("complete", "processing", Outcome.PENDING),
    ],
)
def test_classify(checkout_status: str, payment_status: str, outcome: Outcome) -> None:
    assert classify(checkout_status, payment_status)[0] is outcome


def test_classify_refuses_unknown_values() -> None:
    with pytest.raises(ValueError, match="checkout_status"):
        classify("paid", "succeeded")
    with pytest.raises(ValueError, match="payment_status"):
        classify("open", "failed")


def test_parse_session_success() -> None:
    status = parse_session("order-42", SESSION, raw="{}")
    assert (status.outcome, status.amount, status.currency) == (Outcome.SUCCEEDED, 5000, "XOF")
    assert status.paid_at == datetime(2021, 12, 8, 10, 15, 32, tzinfo=UTC)
    assert (status.provider_status, status.provider_transaction_id) == ("complete/succeeded", "TCQWCJXDBH6U5OATMGA")
    assert (status.provider_code, status.provider_message, status.raw) == (None, None, "{}")


def test_parse_session_open_with_a_failed_attempt() -> None:
    session = {
        **SESSION,
        "checkout_status": "open",
        "payment_status": "processing",
        "when_completed": None,
        "transaction_id": None,
        "last_payment_error": {"code": "insufficient-funds", "message": "Not enough money"},
    }
    status = parse_session("order-42", session, raw="")
    assert (status.outcome, status.provider_code) == (Outcome.PENDING, "insufficient-funds")
    assert status.provider_message == "insufficient-funds: Not enough money"
    assert (status.paid_at, status.provider_transaction_id) == (None, None)


def test_parse_session_refuses_what_it_cannot_read() -> None:
    for broken, message in [
        ({"checkout_status": None}, "no checkout_status"),
        ({"amount": "5000.5"}, "not an exact XOF amount"),
        ({"when_completed": "yesterday"}, "bad when_completed"),
        ({"payment_status": "refunded"}, "unknown payment_status"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_session("order-42", {**SESSION, **broken}, raw="")


def test_pick_session() -> None:
    old_paid = {**SESSION, "id": "cos-a", "when_created": "2026-01-01T10:00:00Z"}
    new_open = {**SESSION, "id": "cos-b", "payment_status": "processing", "when_created": "2026-01-01T11:00:00Z"}
    newer_expired = {**new_open, "id": "cos-c", "checkout_status": "expired", "when_created": "2026-01-01T12:00:00Z"}
    undated = {**new_open, "id": "cos-d", "when_created": None}
    assert pick_session([new_open, old_paid, newer_expired])["id"] == "cos-a"
    assert pick_session([new_open, undated, newer_expired])["id"] == "cos-c"
    same_second = {**new_open, "id": "cos-e"}
    assert pick_session([new_open, same_second])["id"] == "cos-e"  # a tie goes to the later one listed
    with pytest.raises(ValueError, match="no sessions"):
        pick_session([])


# --------------------------------------------------------------------------- statement


def page(items: list[dict[str, Any]], **page_info: Any) -> str:
    info = {"start_cursor": None, "end_cursor": "TFRf", "has_next_page": False} | page_info
    return json.dumps({"page_info": info, "date": "2022-12-18", "items": items})


def test_statement_page_as_wave_sent_it_in_2022() -> None:
    # Older answers carry no transaction_type, balance or is_reversal: still readable.
    item = {
        "timestamp": "2022-12-18T01:17:09Z",
        "transaction_id": "T_E4PDZ6KN4Q",
        "amount": "3366",
        "fee": "34",
        "currency": "XOF",
        "counterparty_name": "Khady Gueye",
        "counterparty_mobile": "+221776922446",
        "client_reference": '{"type":"booking","id":150995}',
        "checkout_api_session_id": "cos-1bsdxe8p8108y",
    }
    parsed = parse_transactions_page(date(2022, 12, 18), page([item]))
    line = parsed.items[0]
    assert (line.amount + line.fee, line.balance, line.transaction_type, line.is_reversal) == (3400, None, None, False)
    assert line.timestamp == datetime(2022, 12, 18, 1, 17, 9, tzinfo=UTC)
    assert (line.checkout_api_session_id, line.raw["counterparty_name"]) == ("cos-1bsdxe8p8108y", "Khady Gueye")
    assert (parsed.end_cursor, parsed.has_next_page, parsed.start_cursor) == ("TFRf", False, None)


def test_statement_signed_amounts_in_minor_units() -> None:
    item = {
        "timestamp": "2022-12-18T20:52:30Z",
        "transaction_id": "T_SL5FVDWSGE",
        "transaction_type": "api_checkout_refund",
        "amount": "-12.25",
        "fee": "-0.25",
        "balance": "1000.00",
        "currency": "GMD",
        "is_reversal": True,
    }
    line = parse_transactions_page(date(2022, 12, 18), page([item])).items[0]
    assert (line.amount, line.fee, line.balance, line.is_reversal) == (-1225, -25, 100000, True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<html>", "not JSON"),
        (json.dumps({"items": []}), "no items list or page_info"),
        (page([], has_next_page="no"), "has_next_page is not a boolean"),
        (page([]).replace("2022-12-18", "2022-12-19"), "asked for 2022-12-18"),
        (page([{"timestamp": "2022-12-18T01:17:09Z", "amount": "1", "currency": "XOF"}]), "without transaction_id"),
        (page([{"transaction_id": "T_1", "timestamp": "x", "amount": "1", "currency": "XOF"}]), "bad timestamp"),
        (
            page([{"transaction_id": "T_1", "timestamp": "2022-12-18T01:17:09Z", "amount": "1.5", "currency": "XOF"}]),
            "not an exact XOF",
        ),
        (page([{"transaction_id": "T_1", "timestamp": "2022-12-18T01:17:09Z", "currency": "XOF"}]), "no amount"),
        (page(["T_1"]), "non-object item"),
    ],
)
def test_statement_protocol_errors(text: str, message: str) -> None:
    with pytest.raises(ProviderProtocolError, match=message):
        parse_transactions_page(date(2022, 12, 18), text)
