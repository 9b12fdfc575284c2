"""Events toward the merchant apps: written with the change, signed, retried, deduplicable."""

from __future__ import annotations

import base64
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from providers.sandbox.client import SandboxClient
from reconciliation.models import DeadLetter, OutboxDelivery, OutboxEvent
from tests.conftest import worker_env
from tests.helpers import new_reference, registration
from worker import events, logs, pipeline
from worker.cli import main
from worker.runtime import Runtime
from worker.settings import AppSettings, SigningKey


def new_secret() -> str:
    """A Standard Webhooks secret, as an operator generates one."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


SECRET = new_secret()


def verified(secret: str | bytes, raw: bytes, headers: dict[str, str]) -> bool:
    """What a merchant app's official Standard Webhooks library says of a delivery."""
    try:
        Webhook(secret).verify(raw, headers)
    except WebhookVerificationError:
        return False
    return True


class Receiver:
    """A merchant app's endpoint: verifies the signature with the official Standard Webhooks library,
    answers what the test scripts."""

    def __init__(self, secret: str | bytes = SECRET) -> None:
        self.answers: list[int] = []
        self.received: list[dict[str, Any]] = []
        self.location = ""  # sent with a 3xx answer
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                headers = dict(self.headers.items())
                receiver.received.append(
                    {"valid": verified(secret, raw, headers), "id": self.headers.get("webhook-id"),
                     "body": json.loads(raw), "raw": raw, "headers": headers, "path": self.path}
                )  # fmt: skip
                status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/payrecon/events"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def with_app(rt: Runtime, receiver: Receiver) -> Iterator[Runtime]:
    original = rt.settings
    app = AppSettings(name="depannage", url=receiver.url, keys=(SigningKey.parse(SECRET),), products=("depannage",))
    rt.settings = replace(original, apps=(app,), event_retries=(60, 120))
    yield rt
    rt.settings = original


def paid(rt: Runtime, sandbox: SandboxClient, **over: Any) -> str:
    ref = new_reference()
    pipeline.register_payment(rt, registration(ref, **over))
    sandbox.create_cinetpay(ref, over.get("amount", 5000))
    pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(ref))
    return ref


def types(rt: Runtime) -> list[str]:
    with rt.sessions() as session:
        return list(session.scalars(select(OutboxEvent.type).order_by(OutboxEvent.created_at, OutboxEvent.type)))


def test_mismatch_and_refusal_are_told(rt: Runtime, sandbox: SandboxClient) -> None:
    ref = new_reference()
    pipeline.register_payment(rt, registration(ref))
    sandbox.create_cinetpay(ref, 5000, confirm_amount=100)
    pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(ref))
    refused = new_reference()
    pipeline.register_payment(rt, registration(refused))
    sandbox.create_cinetpay(refused, 5000, fate="refused")
    pipeline.ingest_webhook(rt, sandbox.cinetpay_notification(refused))
    assert sorted(types(rt)) == ["payment.failed", "payment.flagged", "payment.succeeded"]


def test_signed_delivery_retried_after_a_500_with_a_stable_id(
    with_app: Runtime, sandbox: SandboxClient, receiver: Receiver
) -> None:
    rt = with_app
    paid(rt, sandbox)
    paid(rt, sandbox, plan="coko-premium-monthly", amount=6500)  # another product: not for this app
    receiver.answers = [500]
    now = datetime.now(UTC)
    assert events.fan_out(rt, now) == 2  # depannage's payment.succeeded and subscription.granted
    first = events.deliver_due(rt, now)
    assert first == {"delivered": 1, "retry": 1, "failed": 0}
    assert events.deliver_due(rt, now) == {"delivered": 0, "retry": 0, "failed": 0}  # not due yet
    again = events.deliver_due(rt, now + timedelta(seconds=80))
    assert again == {"delivered": 1, "retry": 0, "failed": 0}
    assert all(r["valid"] for r in receiver.received)
    ids = [r["id"] for r in receiver.received]
    assert len(ids) == 3 and len(set(ids)) == 2  # the retried event kept its id: receivers deduplicate
    assert {r["body"]["type"] for r in receiver.received} == {"payment.succeeded", "subscription.granted"}


def test_given_up_events_are_dead_lettered_and_redelivered_on_demand(
    with_app: Runtime, sandbox: SandboxClient, receiver: Receiver, pg_url: str, redis_url: str, sandbox_server: Any
) -> None:
    rt = with_app
    paid(rt, sandbox)
    receiver.answers = [503] * 6
    now = datetime.now(UTC)
    events.fan_out(rt, now)
    for minutes in (0, 2, 5):  # three attempts: the schedule (60 s, 120 s) then give up
        events.deliver_due(rt, now + timedelta(minutes=minutes))
    with rt.sessions() as session:
        statuses = set(session.scalars(select(OutboxDelivery.status)))
        letters = session.scalars(select(DeadLetter.reason)).all()
    assert statuses == {"failed"} and letters == ["event_undeliverable", "event_undeliverable"]
    env = {**worker_env(pg_url, redis_url, sandbox_server), "PAYRECON_APPS": ""}
    listed = json.loads(CliRunner().invoke(main, ["events", "list", "--status", "failed", "--json"], env=env).output)
    assert len(listed) == 2 and all(e["attempts"] == 3 for e in listed)
    result = CliRunner().invoke(main, ["events", "redeliver", "--failed"], env=env)
    assert result.exit_code == 0 and "2 delivery(ies) scheduled now" in result.output
    assert events.deliver_due(rt, datetime.now(UTC) + timedelta(seconds=1)) == {"delivered": 2, "retry": 0, "failed": 0}


def test_delivery_as_a_celery_task_on_the_apps_queue(rt: Runtime, sandbox: SandboxClient, redis_base: str) -> None:
    broker = f"{redis_base}/15"  # no worker consumes there
    client = redis.Redis.from_url(broker)
    client.delete("coko_events")
    original = rt.settings
    coko = AppSettings(name="coko", url="celery://coko_events/coko.payrecon_event")
    rt.settings = replace(original, apps=(coko,), broker_url=broker)
    try:
        paid(rt, sandbox, plan="coko-premium-monthly", amount=6500)
        now = datetime.now(UTC)
        events.fan_out(rt, now)
        assert events.deliver_due(rt, now)["delivered"] == 2
        message = json.loads(client.lpop("coko_events") or b"{}")
    finally:
        rt.settings = original
        client.delete("coko_events")
        client.close()
    assert message["headers"]["task"] == "coko.payrecon_event"


def test_app_settings_errors() -> None:
    from worker.settings import ConfigError, Settings

    base = {"DATABASE_URL": "sqlite://", "CELERY_BROKER_URL": "redis://x", "PAYRECON_APPS": "depannage,coko"}
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**base, "PAYRECON_APP_DEPANNAGE_URL": "https://x/hook"})
    assert "PAYRECON_APP_DEPANNAGE_SECRET is not set" in str(info.value)
    assert "PAYRECON_APP_COKO_URL is not set" in str(info.value)
    ok = Settings.from_env({
        **base, "PAYRECON_APP_DEPANNAGE_URL": "https://x/hook", "PAYRECON_APP_DEPANNAGE_SECRET": "s3",
        "PAYRECON_APP_COKO_URL": "celery://coko_events/coko.receive", "PAYRECON_APP_COKO_PRODUCTS": "coko",
    })  # fmt: skip
    assert [(a.name, a.via_celery, a.products) for a in ok.apps] == [
        ("depannage", False, ()),
        ("coko", True, ("coko",)),
    ]
    assert "s3" not in repr(ok)


# --------------------------------------------------------------------------- Standard Webhooks


def deliver(rt: Runtime, sandbox: SandboxClient, app: AppSettings, **over: Any) -> dict[str, int]:
    """A paid payment's events (payment.succeeded, subscription.granted) sent to ``app`` once."""
    original = rt.settings
    rt.settings = replace(original, apps=(app,), **over)
    try:
        paid(rt, sandbox)
        now = datetime.now(UTC)
        events.fan_out(rt, now)
        return events.deliver_due(rt, now)
    finally:
        rt.settings = original


@pytest.mark.parametrize("receiver_knows", ["the new secret", "the old secret"])
def test_the_official_library_verifies_deliveries_with_either_secret_of_a_rotation(
    rt: Runtime, sandbox: SandboxClient, receiver_knows: str
) -> None:
    new, old = new_secret(), new_secret()
    receiver = Receiver(new if receiver_knows == "the new secret" else old)
    try:
        app = AppSettings(name="depannage", url=receiver.url, keys=(SigningKey.parse(new), SigningKey.parse(old)))
        assert deliver(rt, sandbox, app) == {"delivered": 2, "retry": 0, "failed": 0}
    finally:
        receiver.close()
    assert [r["valid"] for r in receiver.received] == [True, True]
    first = receiver.received[0]
    assert first["headers"]["webhook-id"] == first["body"]["id"]  # the event id: stable across retries
    assert len(first["headers"]["webhook-signature"].split(" ")) == 2  # one v1 signature per secret
    assert not verified(new_secret(), first["raw"], first["headers"])  # a stranger's secret does not verify
    assert "PayRecon-Signature" not in first["headers"]  # whsec_ secrets: the legacy header has ended


def test_a_plain_secret_keeps_the_legacy_header_and_verifies_as_raw_bytes(rt: Runtime, sandbox: SandboxClient) -> None:
    import hashlib
    import hmac

    plain = "app-webhook-secret"  # configured before Standard Webhooks
    receiver = Receiver(plain.encode())  # the official library takes a plain secret as raw bytes
    try:
        app = AppSettings(name="depannage", url=receiver.url, keys=(SigningKey.parse(plain),))
        assert deliver(rt, sandbox, app)["delivered"] == 2
    finally:
        receiver.close()
    assert all(r["valid"] for r in receiver.received)
    for r in receiver.received:  # what the merchant app verifies today keeps verifying
        t, v1 = (part.split("=", 1)[1] for part in r["headers"]["PayRecon-Signature"].split(","))
        expected = hmac.new(plain.encode(), f"{t}.".encode() + r["raw"], hashlib.sha256).hexdigest()
        assert hmac.compare_digest(v1, expected)
        assert t == r["headers"]["webhook-timestamp"]
        assert r["headers"]["PayRecon-Event-Id"] == r["headers"]["webhook-id"]


def test_a_redirect_is_a_failed_attempt_and_the_body_does_not_follow_it(
    with_app: Runtime, sandbox: SandboxClient, receiver: Receiver
) -> None:
    elsewhere = Receiver()
    receiver.answers = [302, 307]
    receiver.location = elsewhere.url + "?token=elsewhere-token"
    try:
        paid(with_app, sandbox)
        now = datetime.now(UTC)
        events.fan_out(with_app, now)
        assert events.deliver_due(with_app, now) == {"delivered": 0, "retry": 2, "failed": 0}
    finally:
        elsewhere.close()
    assert elsewhere.received == []  # the signed body went nowhere else
    with with_app.sessions() as session:
        errors = sorted(session.scalars(select(OutboxDelivery.last_error)))
    assert [e.split(":")[0] for e in errors] == ["HTTP 302", "HTTP 307"]
    assert all(f"redirect to {elsewhere.url}?*** not followed" in e for e in errors), errors


def test_url_query_strings_stay_out_of_stored_errors_and_logs(
    rt: Runtime, sandbox: SandboxClient, pg_url: str, redis_url: str, sandbox_server: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    import socket

    token = "tok-" + secrets.token_hex(8)
    with socket.socket() as probe:  # a port nobody listens on: a connection error that quotes the URL
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    answering = Receiver()
    answering.answers = [500] * 4
    key = (SigningKey.parse(SECRET),)
    apps = (
        AppSettings(name="refused", url=f"http://127.0.0.1:{closed}/hook?token={token}", keys=key),
        AppSettings(name="erring", url=f"{answering.url}?token={token}&app=depannage", keys=key),
    )
    original = rt.settings
    rt.settings = replace(original, apps=apps, event_retries=(60,))
    # The worker's log lines, as its logging set-up writes them (worker.signals): secrets masked.
    formatter = logs.JsonFormatter(logs.Redactor(logs.secrets_of(rt.settings)))
    try:
        with caplog.at_level("DEBUG"):
            paid(rt, sandbox)
            now = datetime.now(UTC)
            events.fan_out(rt, now)
            assert events.deliver_due(rt, now) == {"delivered": 0, "retry": 4, "failed": 0}
            assert events.deliver_due(rt, now + timedelta(minutes=5))["failed"] == 4  # given up: dead-lettered
    finally:
        rt.settings = original
        answering.close()
    assert answering.received[0]["path"] == f"/payrecon/events?token={token}&app=depannage"  # sent as configured
    with rt.sessions() as session:
        errors = list(session.scalars(select(OutboxDelivery.last_error)))
        letters = list(session.scalars(select(DeadLetter.detail)))
    assert len(errors) == 4 and len(letters) == 4
    assert sum("HTTP 500" in e for e in errors) == 2
    refused = [e for e in errors if "ConnectionError" in e]
    assert len(refused) == 2 and all(f"port={closed}" in e and "/hook?***" in e for e in refused), refused
    env = {**worker_env(pg_url, redis_url, sandbox_server), "PAYRECON_APPS": ""}
    listed = CliRunner().invoke(main, ["events", "list", "--json"], env=env).output
    assert "ConnectionError" in listed
    lines = [formatter.format(record) for record in caplog.records]
    assert any("POST /payrecon/events?***" in line for line in lines)  # urllib3's debug line, masked
    for text in (*errors, *letters, listed, *lines):
        assert token not in text


def test_signing_secret_settings() -> None:
    from worker.settings import ConfigError, Settings

    base = {
        "DATABASE_URL": "sqlite://", "CELERY_BROKER_URL": "redis://x", "PAYRECON_APPS": "depannage",
        "PAYRECON_APP_DEPANNAGE_URL": "https://depannage.example/hook?token=abc123",
    }  # fmt: skip
    new, old = new_secret(), new_secret()
    ok = Settings.from_env({**base, "PAYRECON_APP_DEPANNAGE_SECRET": f" {new} , {old} "})
    assert [k.key for k in ok.apps[0].keys] == [base64.b64decode(new[6:]), base64.b64decode(old[6:])]
    assert all(k.standard for k in ok.apps[0].keys)
    assert "abc123" not in repr(ok) and new[6:] not in repr(ok)
    unpadded = "whsec_" + base64.b64encode(secrets.token_bytes(25)).decode().rstrip("=")
    assert len(Settings.from_env({**base, "PAYRECON_APP_DEPANNAGE_SECRET": unpadded}).apps[0].keys[0].key) == 25
    plain = Settings.from_env({**base, "PAYRECON_APP_DEPANNAGE_SECRET": "legacy-secret"}).apps[0].keys
    assert plain == (SigningKey(b"legacy-secret", standard=False),)
    short = "whsec_" + base64.b64encode(b"x" * 16).decode()
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**base, "PAYRECON_APP_DEPANNAGE_SECRET": f"{new},whsec_not*base64!,{short}"})
    assert info.value.problems == [
        "PAYRECON_APP_DEPANNAGE_SECRET: secret 2 of 3 is not whsec_ followed by base64",
        "PAYRECON_APP_DEPANNAGE_SECRET: secret 3 of 3 decodes to 16 bytes; a whsec_ secret is 24 to 64 random bytes",
    ]
    assert short not in str(info.value)
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**base, "PAYRECON_APP_DEPANNAGE_URL": "ftp://x/hook?token=abc123"})
    assert "abc123" not in str(info.value) and "'ftp://x/hook?***'" in str(info.value)
    masked = logs.Redactor(logs.secrets_of(ok))(f"secret {new}, old {old}, url {base['PAYRECON_APP_DEPANNAGE_URL']}")
    assert new[6:] not in masked and old[6:] not in masked and "abc123" not in masked


def test_the_readme_verification_example_accepts_a_delivery() -> None:
    import time
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "docs" / "events.md").read_text(encoding="utf-8")
    snippet = (
        "from standardwebhooks import Webhook\n" + readme.split("```python\nfrom standardwebhooks import Webhook\n")[1]
    )
    namespace: dict[str, Any] = {}
    exec(snippet.split("```")[0], namespace)  # noqa: S102 - our own docs' code
    raw = '{"id": "evt_1", "type": "subscription.granted"}'
    app = AppSettings(name="depannage", url="https://x/hook", keys=(SigningKey.parse(SECRET),))
    sent = events.headers(app, "evt_1", int(time.time()), raw)
    assert namespace["verify"](raw.encode(), sent, SECRET) == json.loads(raw)
    with pytest.raises(WebhookVerificationError):
        namespace["verify"](raw.encode(), sent, new_secret())
    with pytest.raises(WebhookVerificationError):
        namespace["verify"]((raw + " ").encode(), sent, SECRET)


def test_scrubbed_masks_a_query_in_every_form_without_mangling_the_rest() -> None:
    refused = "ConnectionError: Max retries exceeded with url: /hook?ab (Caused by NewConnectionError('ab-cd'))"
    assert events.scrubbed(refused, "http://127.0.0.1:9/hook?ab") == (
        "ConnectionError: Max retries exceeded with url: /hook?*** (Caused by NewConnectionError('ab-cd'))"
    )  # a short query: masked where it is a query, not elsewhere
    quoted = "HTTP 400: bad token=a/b+c for user:pa55word"
    assert (
        events.scrubbed(quoted, "https://user:pa55word@x.example/h?token=a%2Fb%2Bc") == "HTTP 400: bad *** for user:***"
    )
    moved = "HTTP 301: redirect to https://elsewhere.example/in?key=k1 not followed"
    assert (
        events.scrubbed(moved, "https://x.example/h")
        == "HTTP 301: redirect to https://elsewhere.example/in?*** not followed"
    )
