"""Events toward the merchant apps: written with the change, signed, retried, deduplicable."""

from __future__ import annotations

import hashlib
import hmac
import json
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

from providers.sandbox.client import SandboxClient
from reconciliation.db import transaction
from reconciliation.models import DeadLetter, OutboxDelivery, OutboxEvent
from reconciliation.subscriptions import expire_due
from tests.conftest import worker_env
from tests.helpers import new_reference, registration
from worker import events, pipeline
from worker.cli import main
from worker.runtime import Runtime
from worker.settings import AppSettings

SECRET = "app-webhook-secret"


class Receiver:
    """A merchant app's endpoint: verifies the signature, answers what the test scripts."""

    def __init__(self) -> None:
        self.answers: list[int] = []
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"])).decode()
                t, v1 = (part.split("=", 1)[1] for part in self.headers["PayRecon-Signature"].split(","))
                expected = hmac.new(SECRET.encode(), f"{t}.{raw}".encode(), hashlib.sha256).hexdigest()
                receiver.received.append(
                    {"valid": hmac.compare_digest(v1, expected), "id": self.headers["PayRecon-Event-Id"],
                     "body": json.loads(raw)}
                )  # fmt: skip
                self.send_response(receiver.answers.pop(0) if receiver.answers else 200)
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
    app = AppSettings(name="depannage", url=receiver.url, secret=SECRET, products=("depannage",))
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


def test_events_are_written_with_the_change(rt: Runtime, sandbox: SandboxClient) -> None:
    paid(rt, sandbox)
    assert sorted(types(rt)) == ["payment.succeeded", "subscription.granted"]
    with rt.sessions() as session:
        granted = session.scalars(select(OutboxEvent).where(OutboxEvent.type == "subscription.granted")).one()
    assert granted.product == "depannage" and granted.payload["days"] == 30 and granted.payload["ends_at"]


def test_a_rolled_back_change_writes_no_event(rt: Runtime, sandbox: SandboxClient) -> None:
    paid(rt, sandbox)
    later = datetime.now(UTC) + timedelta(days=40)
    with pytest.raises(RuntimeError), transaction(rt.sessions) as session:
        assert len(expire_due(session, later)) == 1
        raise RuntimeError("forced rollback")
    assert "subscription.expired" not in types(rt)
    with transaction(rt.sessions) as session:
        expire_due(session, later)
    assert "subscription.expired" in types(rt)


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


def test_the_readme_verification_snippet_accepts_our_signature() -> None:
    import time
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    snippet = readme.split("Verify before trusting it:\n\n```python\n")[1].split("```")[0]
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)  # noqa: S102 - our own README's code
    raw = '{"id": "evt_1", "type": "subscription.granted"}'
    header = events.signature(SECRET, int(time.time()), raw)
    assert namespace["verify"](raw.encode(), header, SECRET) is True
    assert namespace["verify"](raw.encode(), header, "another secret") is False
    assert namespace["verify"]((raw + " ").encode(), header, SECRET) is False
