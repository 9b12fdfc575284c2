"""The public message contract: models, JSON Schema files, currency helpers."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from pydantic import ValidationError

from schemas import generate
from schemas.currency import AmountError, format_amount, to_minor
from schemas.messages import PaymentRegistration, WebhookEnvelope
from tests.helpers import registration


@pytest.mark.parametrize(("name", "model"), list(generate.FILES.items()))
def test_checked_in_json_schema_matches_the_model(name: str, model: type) -> None:
    on_disk = (generate.HERE / name).read_text(encoding="utf-8")
    assert on_disk == generate.render(model), f"schemas/{name} drifted: run `python -m schemas.generate`"


def test_json_schema_files_are_valid_json_with_the_contract_fields() -> None:
    envelope = json.loads((generate.HERE / "webhook-envelope.v1.schema.json").read_text())
    payment = json.loads((generate.HERE / "payment-registration.v1.schema.json").read_text())
    assert set(envelope["required"]) >= {"schema", "provider", "received_at", "method", "path", "body"}
    assert envelope["properties"]["schema"]["const"] == "payrecon.webhook/1"
    assert set(payment["required"]) >= {"schema", "provider", "reference", "amount", "currency", "account", "plan"}
    assert payment["properties"]["amount"]["type"] == "integer"


def envelope(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "schema": "payrecon.webhook/1",
        "provider": "cinetpay",
        "received_at": "2026-11-21T10:00:00+00:00",
        "method": "POST",
        "path": "/notify",
        "query": {},
        "headers": {"X-Token": "abc"},
        "body": "cpm_trans_id=1",
    }
    base.update(over)
    return base


def test_envelope_header_lookup_is_case_insensitive() -> None:
    env = WebhookEnvelope.model_validate(envelope())
    assert env.header("x-token") == "abc"
    assert env.header("missing") is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"schema": "payrecon.webhook/2"}, "schema"),
        ({"provider": "paypal"}, "provider"),
        ({"received_at": "2026-11-21T10:00:00"}, "received_at"),  # no offset
        ({"method": "post"}, "method"),
        ({"surprise": 1}, "surprise"),
        ({"body": None}, "body"),
    ],
)
def test_envelope_errors_name_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        WebhookEnvelope.model_validate(envelope(**change))
    assert field in {str(part) for err in info.value.errors() for part in err["loc"]}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": 5000.0}, "amount"),  # never a float
        ({"amount": "5000"}, "amount"),
        ({"amount": 0}, "amount"),
        ({"currency": "xof"}, "currency"),
        ({"currency": "ZZZ"}, "currency"),
        ({"periods": 0}, "periods"),
        ({"reference": "has space"}, "reference"),
    ],
)
def test_registration_errors_name_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        PaymentRegistration.model_validate({**registration("TXN-1"), **change})
    assert field in {str(part) for err in info.value.errors() for part in err["loc"]}


def test_registration_defaults_to_one_period() -> None:
    payload = registration("TXN-1")
    del payload["periods"]
    assert PaymentRegistration.model_validate(payload).periods == 1


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [("100", "XOF", 100), ("0.20", "USD", 20), ("15000", "XOF", 15000), (Decimal("1.5"), "CDF", 150)],
)
def test_to_minor(amount: str, currency: str, minor: int) -> None:
    assert to_minor(amount, currency) == minor


@pytest.mark.parametrize(
    ("amount", "currency"), [("10.5", "XOF"), ("1.234", "USD"), ("abc", "XOF"), ("NaN", "XOF"), ("1", "ZZZ")]
)
def test_to_minor_refuses_inexact_amounts(amount: str, currency: str) -> None:
    with pytest.raises(AmountError):
        to_minor(amount, currency)


def test_to_minor_refuses_floats() -> None:
    with pytest.raises(AmountError):
        to_minor(0.1, "USD")  # type: ignore[arg-type]


def test_format_amount() -> None:
    assert format_amount(15000, "XOF") == "15 000 XOF"
    assert format_amount(1250, "USD") == "12.50 USD"
