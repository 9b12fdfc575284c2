"""Conformance kit for Wave, with Wave's own checks (rotation, staleness, Bearer, search, statement)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest

from providers.base import DeliveryKind, ForgedDelivery, Outcome, RegistrationView
from providers.sandbox import SandboxClient
from providers.sandbox.wave import WaveConfig
from providers.wave import WaveClient, signature_header
from schemas.messages import WebhookEnvelope
from tests.providers.kits import Kit
from tests.providers.support import closing_factory, fast_options

CONFIG = WaveConfig()


def make_client(url: str, **overrides: Any) -> WaveClient:
    options = fast_options(url) | {"api_key": CONFIG.api_key, "webhook_secrets": CONFIG.webhook_secrets}
    return WaveClient(**(options | overrides))


def create(
    sandbox: SandboxClient, reference: str, amount: int, currency: str, fate: str, **options: Any
) -> RegistrationView:
    state = sandbox.create("wave", reference=reference, amount=amount, currency=currency, fate=fate, **options)
    return RegistrationView(reference=reference, amount=amount, currency=currency, provider_data=state["provider_data"])


def notify(sandbox: SandboxClient, view: RegistrationView, forged: bool = False, **options: Any) -> dict[str, Any]:
    return sandbox.notification("wave", view.reference, forged=forged, **options)


@contextmanager
def clients(url: str) -> Iterator[Callable[..., WaveClient]]:
    """``make(**overrides)`` for several clients on the sandbox, all closed at the end."""
    with closing_factory(partial(make_client, url)) as make:
        yield make


def new_reference() -> str:
    return f"ORDER-{secrets.token_hex(6).upper()}"


def _envelope(sandbox: SandboxClient, reference: str, **options: Any) -> WebhookEnvelope:
    return WebhookEnvelope.model_validate(sandbox.notification("wave", reference, **options))


def _with_header(envelope: WebhookEnvelope, name: str, value: str | None) -> WebhookEnvelope:
    headers = {k: v for k, v in envelope.headers.items() if k.lower() != name.lower()}
    if value is not None:
        headers[name] = value
    return envelope.model_copy(update={"headers": headers})


# --------------------------------------------------------------------------- extra checks


def rotated_key_client_side(sandbox: SandboxClient, url: str) -> None:
    """The client holds [new, old]: a delivery signed with either secret passes, another one fails."""
    with clients(url) as make:
        reference = new_reference()
        sandbox.create("wave", reference=reference, amount=5000, fate="accepted")
        envelope = _envelope(sandbox, reference)
        sandbox_secret = CONFIG.webhook_secrets[0]
        for secrets_held in ([sandbox_secret, "wave_sn_WHS_next"], ["wave_sn_WHS_next", sandbox_secret]):
            client = make(webhook_secrets=secrets_held)
            client.authenticate(envelope, client.parse_delivery(envelope), None)
        client = make(webhook_secrets=["wave_sn_WHS_next", "wave_sn_WHS_older"])
        with pytest.raises(ForgedDelivery, match="does not match"):
            client.authenticate(envelope, client.parse_delivery(envelope), None)


def rotated_key_signature_side(sandbox: SandboxClient, url: str) -> None:
    """The signature carries two v1 values (old secret first): the second one matching is enough."""
    with clients(url) as make:
        reference = new_reference()
        sandbox.create("wave", reference=reference, amount=5000, fate="accepted")
        envelope = _envelope(sandbox, reference, rotate=True)
        header = envelope.header("Wave-Signature") or ""
        assert header.count("v1=") == 2
        client = make()
        client.authenticate(envelope, client.parse_delivery(envelope), None)
        # Built by hand: only the second of three values is right.
        body = envelope.body
        timestamp = str(int(time.time()))
        good = signature_header([CONFIG.webhook_secrets[0]], timestamp, body).split(",")[1]
        forged = f"t={timestamp},v1={'0' * 64},{good},v1=deadbeef"
        client.authenticate(_with_header(envelope, "Wave-Signature", forged), client.parse_delivery(envelope), None)


def stale_timestamp_refused(sandbox: SandboxClient, url: str) -> None:
    with clients(url) as make:
        reference = new_reference()
        sandbox.create("wave", reference=reference, amount=5000, fate="accepted")
        envelope = _envelope(sandbox, reference, stale=True)
        client = make()
        with pytest.raises(ForgedDelivery, match="stale timestamp"):
            client.authenticate(envelope, client.parse_delivery(envelope), None)
        # The same delivery within a wider tolerance is authentic: only the clock was wrong.
        make(tolerance=900).authenticate(envelope, client.parse_delivery(envelope), None)
        # Received when it was signed and read ten minutes later (a backlog, a verification put off): authentic;
        # the time it is read is not asked.
        signed_at = datetime.now(UTC) - timedelta(minutes=10)
        on_time = envelope.model_copy(update={"received_at": signed_at})
        client.authenticate(on_time, client.parse_delivery(on_time), None)
        fresh = _envelope(sandbox, reference)
        with pytest.raises(ForgedDelivery, match="stale timestamp"):  # signed now, received ten minutes ago
            client.authenticate(fresh.model_copy(update={"received_at": signed_at}), client.parse_delivery(fresh), None)


def missing_header_refused(sandbox: SandboxClient, url: str) -> None:
    with clients(url) as make:
        reference = new_reference()
        sandbox.create("wave", reference=reference, amount=5000, fate="accepted")
        envelope = _envelope(sandbox, reference)
        client = make(webhook_shared_secret=CONFIG.shared_secret)
        bare = _with_header(envelope, "Wave-Signature", None)
        with pytest.raises(ForgedDelivery, match="missing Wave-Signature header; missing Authorization header"):
            client.authenticate(bare, client.parse_delivery(bare), None)
        for garbled in ("", "v1=abc", "t=abc,v1=00", "t=1,t=2,v1=00", "garbage"):
            bad = _with_header(envelope, "Wave-Signature", garbled)
            with pytest.raises(ForgedDelivery, match="garbled"):
                client.authenticate(bad, client.parse_delivery(bad), None)
        unconfigured = make(webhook_secrets=())
        with pytest.raises(ForgedDelivery, match="no webhook secret configured"):
            unconfigured.authenticate(envelope, unconfigured.parse_delivery(envelope), None)


def bearer_strategy(sandbox: SandboxClient, url: str) -> None:
    with clients(url) as make:
        reference = new_reference()
        sandbox.create("wave", reference=reference, amount=5000, fate="accepted")
        envelope = _envelope(sandbox, reference, strategy="bearer")
        assert envelope.header("Authorization") == f"Bearer {CONFIG.shared_secret}"
        assert envelope.header("Wave-Signature") is None
        shared_only = make(webhook_secrets=(), webhook_shared_secret=CONFIG.shared_secret)
        shared_only.authenticate(envelope, shared_only.parse_delivery(envelope), None)
        both = make(webhook_shared_secret=CONFIG.shared_secret)
        both.authenticate(envelope, both.parse_delivery(envelope), None)  # either strategy passes
        signed = _envelope(sandbox, reference)
        both.authenticate(signed, both.parse_delivery(signed), None)
        with pytest.raises(ForgedDelivery, match="missing Authorization header"):
            shared_only.authenticate(signed, shared_only.parse_delivery(signed), None)
        forged = _envelope(sandbox, reference, strategy="bearer", forged=True)
        with pytest.raises(ForgedDelivery, match="bearer secret does not match"):
            shared_only.authenticate(forged, shared_only.parse_delivery(forged), None)
        signing_only = make()
        with pytest.raises(ForgedDelivery, match="missing Wave-Signature header"):
            signing_only.authenticate(envelope, signing_only.parse_delivery(envelope), None)


def event_dedupe_key_is_stable(sandbox: SandboxClient, url: str) -> None:
    with clients(url) as make:
        reference = new_reference()
        state = sandbox.create("wave", reference=reference, amount=5000, fate="waiting")
        sandbox.set_status("wave", reference, "succeeded")
        client = make()
        first = client.parse_delivery(_envelope(sandbox, reference))
        again = client.parse_delivery(_envelope(sandbox, reference, forged=True))  # same event, resent
        assert first.dedupe_key == again.dedupe_key and first.dedupe_key.startswith("event:AE_")
        assert first.provider_ids["checkout_session_id"] == state["checkout_session_id"]
        assert first.claimed_status == "complete/succeeded"
        sandbox.set_status("wave", reference, "processing")
        sandbox.set_status("wave", reference, "succeeded")
        assert client.parse_delivery(_envelope(sandbox, reference)).dedupe_key != first.dedupe_key


def search_fallback(sandbox: SandboxClient, url: str) -> None:
    """No session id registered: the client finds the session by client_reference."""
    with clients(url) as make:
        client = make()
        reference = new_reference()
        view = create(sandbox, reference, 7000, "XOF", "accepted")
        bare = RegistrationView(reference=reference, amount=7000, currency="XOF")
        answer = client.check(bare)
        assert (answer.outcome, answer.amount, answer.reference) == (Outcome.SUCCEEDED, 7000, reference)
        assert '"result"' in answer.raw
        assert answer.provider_transaction_id == sandbox.get("wave", reference)["wave_transaction_id"]
        assert client.check(view).provider_transaction_id == answer.provider_transaction_id
        assert sandbox.get("wave", reference)["check_count"] == 2


def transactions_pagination(sandbox: SandboxClient, url: str) -> None:
    """120 payments on one day, 50 a page: three pages, every line once, fees and balance right."""
    with clients(url) as make:
        day = "2026-03-14"
        for index in range(120):
            sandbox.create(
                "wave",
                reference=f"PAGE-{index:03d}",
                amount=1000 + index,
                fate="accepted",
                when_completed=f"{day}T{index // 60:02d}:{index % 60:02d}:00Z",
            )
        client = make()
        day_value = datetime.fromisoformat(day).date()
        first = client.list_transactions(day_value)
        assert (len(first.items), first.has_next_page) == (50, True)
        lines = list(client.iter_transactions(day_value))
        assert [line.client_reference for line in lines] == [f"PAGE-{i:03d}" for i in range(120)]
        assert all(line.amount + line.fee == 1000 + i for i, line in enumerate(lines))
        assert lines[0].fee == 10 and lines[-1].balance == sum(line.amount for line in lines)
        assert {line.transaction_type for line in lines} == {"api_checkout"}
        assert lines[0].timestamp == datetime(2026, 3, 14, 0, 0, tzinfo=UTC)
        third = client.list_transactions(
            day_value, after=client.list_transactions(day_value, after=first.end_cursor).end_cursor
        )
        assert (len(third.items), third.has_next_page) == (20, False)
        assert list(client.iter_transactions(datetime(2026, 3, 15, tzinfo=UTC).date())) == []


def ignored_event_types(sandbox: SandboxClient, url: str) -> None:
    with clients(url) as make:
        reference = new_reference()
        sandbox.create("wave", reference=reference, amount=5000, fate="accepted")
        envelope = _envelope(sandbox, reference, event_type="merchant.payment_received")
        client = make()
        delivery = client.parse_delivery(envelope)
        assert (delivery.kind, delivery.reference) == (DeliveryKind.IGNORED, None)
        assert delivery.dedupe_key == f"event:{json.loads(envelope.body)['id']}"
        client.authenticate(envelope, delivery, None)  # authentic, just not about a payment we track


KIT = Kit(
    name="wave",
    signed=True,
    make_client=make_client,
    bad_credentials={"api_key": "wave_sn_prod_wrong-key"},
    create=create,
    notify=notify,
    status_path=lambda view: f"/v1/checkout/sessions/{view.provider_data['checkout_session_id']}",
    new_reference=new_reference,
    currency="XOF",
    extra=[
        ("rotated-key-client-side", rotated_key_client_side),
        ("rotated-key-signature-side", rotated_key_signature_side),
        ("stale-timestamp", stale_timestamp_refused),
        ("missing-or-garbled-header", missing_header_refused),
        ("bearer-strategy", bearer_strategy),
        ("event-dedupe-key", event_dedupe_key_is_stable),
        ("search-fallback", search_fallback),
        ("transactions-pagination", transactions_pagination),
        ("ignored-event-types", ignored_event_types),
    ],
)
