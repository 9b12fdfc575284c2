"""The sandbox enqueuing notifications on payrecon's broker, against a real Redis.

Messages are read back from the Redis list ``webhooks`` (kombu's Redis transport:
LPUSH by the producer, BRPOP by the worker) and decoded as Celery protocol v2.
Redis db 14 of the suite's Redis (``PAYRECON_TEST_SANDBOX_REDIS_DB``), flushed before and after.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import redis
import requests
from tenacity import wait_none

from providers.base import ForgedDelivery, RegistrationView
from providers.cinetpay import CinetPayClient
from providers.sandbox import SandboxClient, SandboxError, SandboxServer
from schemas.messages import WebhookEnvelope
from tests.conftest import OWN_REDIS
from tests.providers.support import fresh_sandbox

API_KEY, SITE_ID, SECRET_KEY = "test-api-key", "445160", "test-secret-key"
REDIS_DB = int(os.environ.get("PAYRECON_TEST_SANDBOX_REDIS_DB", "14"))
ROOT = Path(__file__).resolve().parents[2]
QUEUE = "webhooks"


@pytest.fixture(scope="session")
def broker_url(redis_base: str) -> Iterator[str]:
    """A Redis db of its own, flushed before and after; on a shared Redis (PAYRECON_TEST_REDIS), a
    file lock keeps concurrent runs of these tests on one machine from sharing it."""
    url = f"{redis_base}/{REDIS_DB}"
    with contextlib.ExitStack() as stack:
        if not OWN_REDIS:
            lock = stack.enter_context(
                (Path(tempfile.gettempdir()) / f"payrecon-sandbox-redis-{REDIS_DB}.lock").open("w")
            )
            deadline = time.monotonic() + 300
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        pytest.fail(f"another test run holds {lock.name}")
                    time.sleep(0.2)
        client = redis.Redis.from_url(url)
        try:
            client.flushdb()
            yield url
            client.flushdb()
        finally:
            client.close()


@pytest.fixture(scope="session")
def broker_server(broker_url: str) -> Iterator[SandboxServer]:
    with SandboxServer(
        cinetpay_api_key=API_KEY, cinetpay_site_id=SITE_ID, cinetpay_secret_key=SECRET_KEY, broker_url=broker_url
    ) as server:
        yield server


@pytest.fixture
def broker_sandbox(broker_server: SandboxServer) -> Iterator[SandboxClient]:
    yield from fresh_sandbox(broker_server)


@pytest.fixture
def queue(broker_url: str) -> Iterator[redis.Redis]:
    """The broker's Redis, with an empty ``webhooks`` list."""
    client = redis.Redis.from_url(broker_url)
    client.delete(QUEUE)
    yield client
    client.delete(QUEUE)
    client.close()


@pytest.fixture
def verifier(broker_server: SandboxServer) -> Iterator[CinetPayClient]:
    """The merchant's CinetPay client, as the worker holds it (authenticate() makes no call)."""
    client = CinetPayClient(
        api_url=broker_server.url, api_key=API_KEY, site_id=SITE_ID, secret_key=SECRET_KEY, wait=wait_none()
    )
    yield client
    client.close()


def reg(reference: str) -> RegistrationView:
    return RegistrationView(reference=reference, amount=5000, currency="XOF")


def pop_task(queue: redis.Redis, timeout: float = 5.0) -> tuple[dict[str, Any], list[Any], dict[str, Any]]:
    """The oldest message on ``webhooks`` as Celery protocol v2: ``(headers, args, kwargs)``."""
    popped = queue.brpop([QUEUE], timeout=timeout)
    assert popped is not None, f"nothing was enqueued on {QUEUE!r}"
    message = json.loads(popped[1])
    assert message["content-type"] == "application/json"
    assert message["properties"]["body_encoding"] == "base64"
    assert message["properties"]["delivery_info"]["routing_key"] == QUEUE
    args, kwargs, embed = json.loads(base64.b64decode(message["body"]))
    assert set(embed) >= {"callbacks", "errbacks", "chain", "chord"}
    return message["headers"], args, kwargs


def authenticate(verifier: CinetPayClient, envelope: dict[str, Any], reference: str | None) -> None:
    env = WebhookEnvelope.model_validate(envelope)
    verifier.authenticate(env, verifier.parse_delivery(env), None if reference is None else reg(reference))


def wait_for_record(sandbox: SandboxClient, txn_id: str, count: int, key: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while True:
        notifications: list[dict[str, Any]] = sandbox.get_cinetpay(txn_id)["notifications"]
        if (len(notifications) >= count and all(key in n for n in notifications)) or time.monotonic() > deadline:
            return notifications
        time.sleep(0.02)


# --------------------------------------------------------------------------- on request


def test_enqueued_notification_is_an_ingest_webhook_task(
    broker_sandbox: SandboxClient, queue: redis.Redis, verifier: CinetPayClient, txn_id: str
) -> None:
    broker_sandbox.create_cinetpay(txn_id, 5000)
    result = broker_sandbox.send_cinetpay_notification(txn_id, enqueue=True)
    assert (result["enqueued"], result["enqueue_error"], result["delivered"]) == (True, None, None)
    headers, args, kwargs = pop_task(queue)
    assert headers["task"] == "payrecon.ingest_webhook"
    assert (args, kwargs) == ([], {"envelope": result["envelope"]})
    authenticate(verifier, kwargs["envelope"], txn_id)  # the x-token verifies with the merchant's key
    assert "cpm_error_message=SUCCES" in kwargs["envelope"]["body"]
    assert queue.llen(QUEUE) == 0  # exactly one message
    [record] = broker_sandbox.get_cinetpay(txn_id)["notifications"]
    assert (record["kind"], record["enqueued"], record["enqueue_error"]) == ("manual", True, None)


def test_client_helpers_enqueue_and_return_the_envelope(
    broker_sandbox: SandboxClient, queue: redis.Redis, verifier: CinetPayClient, txn_id: str
) -> None:
    broker_sandbox.create_cinetpay(txn_id, 5000)
    forged = broker_sandbox.cinetpay_notification(txn_id, forged=True, enqueue=True)
    ping = broker_sandbox.cinetpay_ping(enqueue=True)
    first, second = pop_task(queue), pop_task(queue)
    assert first[2] == {"envelope": forged} and second[2] == {"envelope": ping}
    with pytest.raises(ForgedDelivery, match="x-token does not match"):
        authenticate(verifier, forged, txn_id)
    assert (ping["method"], ping["body"], second[0]["task"]) == ("GET", "", "payrecon.ingest_webhook")
    assert broker_sandbox.cinetpay_notification(txn_id) and queue.llen(QUEUE) == 0  # enqueue defaults to False


def test_enqueue_and_deliver_to_together(
    broker_sandbox: SandboxClient, queue: redis.Redis, receiver: Any, txn_id: str
) -> None:
    broker_sandbox.create_cinetpay(txn_id, 5000)
    result = broker_sandbox.send_cinetpay_notification(txn_id, deliver_to=receiver.url, enqueue=True)
    assert (result["delivered"], result["enqueued"]) == (200, True)
    [got] = receiver.wait(1)
    assert got.body == result["envelope"]["body"] == pop_task(queue)[2]["envelope"]["body"]


def test_concurrent_enqueues(broker_sandbox: SandboxClient, broker_server: SandboxServer, queue: redis.Redis) -> None:
    ids = [f"order-concurrent-{n}" for n in range(8)]
    for txn in ids:
        broker_sandbox.create_cinetpay(txn, 5000)
    errors: list[BaseException] = []

    def enqueue(txn: str) -> None:
        try:
            with SandboxClient(broker_server.url) as client:
                client.cinetpay_notification(txn, enqueue=True)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=enqueue, args=(txn,)) for txn in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert errors == []
    messages = [pop_task(queue) for _ in ids]
    assert len({headers["id"] for headers, _, _ in messages}) == len(ids)
    bodies = [parse_qs(kwargs["envelope"]["body"]) for _, _, kwargs in messages]
    assert sorted(body["cpm_trans_id"][0] for body in bodies) == ids


# --------------------------------------------------------------------------- notify_url "enqueue"


def test_notify_url_enqueue_on_forced_status_change(
    broker_sandbox: SandboxClient, queue: redis.Redis, verifier: CinetPayClient, txn_id: str
) -> None:
    created = broker_sandbox.create_cinetpay(txn_id, 5000, fate="waiting", notify_url="enqueue")
    assert created["notify_url"] == "enqueue"
    time.sleep(0.1)
    assert queue.llen(QUEUE) == 0  # creation is not a status change
    broker_sandbox.set_cinetpay_status(txn_id, "ACCEPTED")
    headers, _, kwargs = pop_task(queue)
    assert headers["task"] == "payrecon.ingest_webhook"
    envelope = kwargs["envelope"]
    assert (envelope["schema"], envelope["method"], envelope["path"]) == (
        "payrecon.webhook/1",
        "POST",
        "/notify/cinetpay",
    )
    assert "cpm_error_message=SUCCES" in envelope["body"]
    authenticate(verifier, envelope, txn_id)
    [record] = wait_for_record(broker_sandbox, txn_id, 1, "enqueued")
    assert (record["kind"], record["status"], record["url"], record["enqueued"], record["error"]) == (
        "auto",
        "ACCEPTED",
        "enqueue",
        True,
        None,
    )


def test_notify_url_enqueue_when_a_fate_turns_final(
    broker_sandbox: SandboxClient, queue: redis.Redis, verifier: CinetPayClient, txn_id: str
) -> None:
    broker_sandbox.create_cinetpay(txn_id, 5000, fate="waiting_then_refused", pending_checks=1, notify_url="enqueue")
    verifier.check(reg(txn_id))  # waiting
    verifier.check(reg(txn_id))  # turns REFUSED: notifies
    envelope = pop_task(queue)[2]["envelope"]
    assert "cpm_error_message=TRANSACTION_CANCEL" in envelope["body"]
    authenticate(verifier, envelope, txn_id)


# --------------------------------------------------------------------------- refusals and failures


def test_enqueue_without_a_broker_is_refused(sandbox: SandboxClient, txn_id: str) -> None:
    assert sandbox.health()["broker"] is None
    sandbox.create_cinetpay(txn_id, 5000)
    with pytest.raises(SandboxError, match="broker_url") as refused:
        sandbox.send_cinetpay_notification(txn_id, enqueue=True)
    assert refused.value.status == 400
    with pytest.raises(SandboxError, match="broker_url") as refused:
        sandbox.cinetpay_ping(enqueue=True)
    assert refused.value.status == 400
    with pytest.raises(SandboxError, match="broker_url") as refused:
        sandbox.create_cinetpay(f"{txn_id}-b", 5000, notify_url="enqueue")
    assert refused.value.status == 400
    assert sandbox.get_cinetpay(txn_id)["notifications"] == []  # nothing recorded
    assert [t["transaction_id"] for t in sandbox.list_cinetpay()] == [txn_id]


@pytest.mark.parametrize("notify_url", ["ENQUEUE", "enqueue ", "ftp://example.org/notify", "", 42])
def test_notify_url_must_be_http_or_enqueue(broker_sandbox: SandboxClient, notify_url: Any, txn_id: str) -> None:
    with pytest.raises(SandboxError, match='http\\(s\\) URL or "enqueue"') as refused:
        broker_sandbox.create_cinetpay(txn_id, 5000, notify_url=notify_url)
    assert refused.value.status == 400


@pytest.mark.parametrize("route", ["transactions/{id}/notification", "ping"])
def test_enqueue_must_be_a_boolean(broker_sandbox: SandboxClient, broker_server: SandboxServer, route: str) -> None:
    broker_sandbox.create_cinetpay("order-flag", 5000)
    url = f"{broker_server.url}/_sandbox/cinetpay/{route.format(id='order-flag')}"
    with requests.Session() as http:
        response = http.post(url, json={"enqueue": "yes"}, timeout=5)
    assert response.status_code == 400
    assert response.json() == {"error": "enqueue must be true or false"}


def test_unreachable_broker_is_reported_not_raised(txn_id: str) -> None:
    # Port 1 refuses connections; the password must never be shown.
    with (
        SandboxServer(broker_url="redis://:s3cret@127.0.0.1:1/0") as server,
        SandboxClient(server.url) as client,
    ):
        assert client.health()["broker"] == "redis://:**@127.0.0.1:1/0"
        client.create_cinetpay(txn_id, 5000)
        result = client.send_cinetpay_notification(txn_id, enqueue=True)
        assert result["enqueued"] is False and result["enqueue_error"]
        assert "s3cret" not in result["enqueue_error"]
        with pytest.raises(SandboxError, match="not enqueued"):
            client.cinetpay_notification(txn_id, enqueue=True)


def test_explicit_broker_url_wins_over_the_environment(
    broker_url: str, queue: redis.Redis, monkeypatch: pytest.MonkeyPatch, txn_id: str
) -> None:
    # Celery itself would let CELERY_BROKER_URL override broker=...
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("CELERY_BROKER_WRITE_URL", "redis://127.0.0.1:1/0")
    server = SandboxServer(broker_url=broker_url)
    with server, SandboxClient(server.url) as client:
        client.create_cinetpay(txn_id, 5000)
        envelope = client.cinetpay_notification(txn_id, enqueue=True)
        assert pop_task(queue)[2] == {"envelope": envelope}
    assert server.notifier.broker is not None
    assert server.notifier.broker._app is None  # stop() closed the broker connections


def test_serve_banner_names_the_queue_and_masks_the_password() -> None:
    code = "from providers.sandbox import serve; serve(port=0, broker_url='redis://:s3cret@127.0.0.1:6379/14')"
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        banner = []
        for line in process.stdout:
            banner.append(line)
            if line.startswith("Press Ctrl+C"):
                break
        process.send_signal(signal.SIGTERM)
        rest, errors = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    text = "".join(banner) + rest + errors
    assert process.returncode == 0, text
    assert "s3cret" not in text
    assert "payrecon.ingest_webhook on queue 'webhooks' of redis://:**@127.0.0.1:6379/14" in text
    assert "payrecon provider sandbox stopped" in rest
