"""``payrecon receive`` started exactly as docs/receiver.md starts it: a real process, real HTTP, a real Redis.

The command is read from docs/receiver.md (its environment assignment and arguments, with only the broker URL
and the port changed) and run with no other environment than ``PATH``. Callbacks are POSTed as the
providers send them and found on the queue as ``payrecon.ingest_webhook`` messages; the end-to-end cases
have the sandbox deliver each provider's callback to the receiver and a real worker settle the payment.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis
import requests
from sqlalchemy import select

from providers.sandbox.client import SandboxClient
from providers.sandbox.server import SandboxServer
from reconciliation.models import InboxDelivery, Payment, PaymentStatus, SubscriptionGrant
from schemas.messages import WebhookEnvelope
from tests.conftest import ROOT, wait_for
from tests.helpers import PrivateRedis, payrecon_command, queued_tasks
from tests.providers.kits import Kit
from tests.test_e2e_providers import KITS, PLAN, registration
from worker.runtime import Runtime

RECEIVER_DOC = ROOT / "docs" / "receiver.md"  # the receiver's page, linked from the README
SCHEMA = json.loads((ROOT / "schemas" / "webhook-envelope.v1.schema.json").read_text())
MAX_BODY = 64 * 1024  # the default: the documented command does not set --max-body-bytes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def readme_command() -> tuple[dict[str, str], list[str]]:
    """docs/receiver.md's ``payrecon receive`` command: its environment assignments and its argv."""
    text = RECEIVER_DOC.read_text(encoding="utf-8")
    section = text[text.index("# Receiving webhooks: `payrecon receive`") :]
    block = section[section.index("```sh\n") + len("```sh\n") :]
    words = shlex.split(block[: block.index("\n```")])
    env = {}
    while "=" in words[0] and not words[0].startswith("-"):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    return env, words


class Receiver:
    """``payrecon receive`` as docs/receiver.md runs it, on ``broker_url`` and a free port."""

    def __init__(self, broker_url: str, log_path: Path) -> None:
        readme_env, argv = readme_command()
        assert set(readme_env) == {"CELERY_BROKER_URL"}, readme_env
        assert argv[0].endswith("bin/payrecon") and argv[1] == "receive", argv
        self.port = free_port()
        argv[0] = payrecon_command()
        argv[argv.index("--port") + 1] = str(self.port)
        self.argv = argv
        self.receiver_name = argv[argv.index("--receiver-name") + 1]
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CELERY_BROKER_URL": broker_url}
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Receiver:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, f"payrecon receive exited early:\n{self.log()}"
            try:
                requests.get(f"{self.url}/healthz", timeout=5)
                return self
            except requests.ConnectionError:
                assert time.monotonic() < deadline, f"payrecon receive did not listen:\n{self.log()}"
                time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """A redis-server of this module's own: no worker consumes there, so the queue shows what was sent."""
    server = PrivateRedis(tmp_path_factory.mktemp("receiver-redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def receiver(own_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    started = Receiver(own_redis.url, tmp_path_factory.mktemp("receiver") / "receiver.log").start()
    yield started
    started.stop()


@pytest.fixture
def queue(own_redis: PrivateRedis) -> Iterator[redis.Redis]:
    client = own_redis.client()
    client.delete("webhooks")
    yield client
    client.delete("webhooks")
    client.close()


def envelopes(queue: redis.Redis) -> list[dict[str, Any]]:
    found = queued_tasks(queue)
    assert all(task == "payrecon.ingest_webhook" for task, _ in found)
    return [kwargs["envelope"] for _, kwargs in found]


# --------------------------------------------------------------------------- callbacks onto the queue


def test_each_providers_callback_is_enqueued_untouched(receiver: Receiver, queue: redis.Redis) -> None:
    momo_reference = str(uuid.uuid4())
    cinetpay_body = b"cpm_site_id=445160&cpm_trans_id=TXN-1A2B3C&cel_phone_num=0707070707&cpm_designation=caf%C3%A9"
    momo_body = json.dumps({"referenceId": momo_reference, "status": "SUCCESSFUL"}, indent=1).encode()
    orange_body = b'{"status":"SUCCESS","notif_token":"nt-5f3a","txnid":"MP150709.1341.A00073"}'
    wave_body = b'{"id": "AE_1",  "type": "checkout.session.completed",\n "data": {"amount": "6500"}}'
    sent = [
        ("POST", "/webhooks/cinetpay", cinetpay_body,
         {"Content-Type": "application/x-www-form-urlencoded", "x-token": "4d2c0ffee-token-value"}),
        ("GET", "/webhooks/cinetpay", b"", {}),  # CinetPay's ping
        ("PUT", f"/webhooks/mtn_momo/{momo_reference}", momo_body,
         {"Content-Type": "application/json", "Host": "callbacks.merchant.example"}),
        ("POST", "/webhooks/orange_money/notify/OM%3AABC-1?order_id=OM-ABC-1&notif_token=query-token-77&x=1&x=2",
         orange_body, {"Content-Type": "application/json"}),
        ("POST", "/webhooks/wave", wave_body,
         {"Content-Type": "application/json", "Wave-Signature": "t=1700000000,v1=abc,v1=def"}),
    ]  # fmt: skip
    started = datetime.now(UTC)
    with requests.Session() as http_session:
        for method, path, body, headers in sent:
            answer = http_session.request(method, receiver.url + path, data=body, headers=headers, timeout=10)
            assert (answer.status_code, answer.json()) == (200, {"status": "received"}), (path, answer.text)
    got = envelopes(queue)
    assert len(got) == len(sent)  # the 200 came after the message was on the broker
    for envelope, (method, path, body, headers) in zip(got, sent, strict=True):
        jsonschema.validate(envelope, SCHEMA)
        parsed = WebhookEnvelope.model_validate(envelope)
        assert (envelope["method"], envelope["path"]) == (method, path.split("?")[0])
        assert envelope["body"].encode("utf-8") == body  # byte for byte
        assert envelope["receiver"] == receiver.receiver_name and envelope["source_ip"] == "127.0.0.1"
        assert started - timedelta(seconds=1) <= parsed.received_at <= datetime.now(UTC)
        for name, value in headers.items():
            assert parsed.header(name) == value
    cinetpay, ping, momo, orange, wave = got
    assert cinetpay["provider"] == ping["provider"] == "cinetpay" and ping["body"] == "" and ping["query"] == {}
    assert momo["provider"] == "mtn_momo" and momo["headers"]["host"] == "callbacks.merchant.example"
    assert orange["provider"] == "orange_money"
    assert orange["path"] == "/webhooks/orange_money/notify/OM%3AABC-1"  # as sent, percent-encoding kept
    assert orange["query"] == {"order_id": "OM-ABC-1", "notif_token": "query-token-77", "x": ["1", "2"]}
    assert wave["provider"] == "wave"

    # One JSON line per callback, without the body, the query string or a header value.
    logged = [e for e in receiver.log_entries() if e.get("logger") == "payrecon.receiver" and "http_status" in e]
    assert [(e["provider"], e["method"], e["http_status"]) for e in logged[-5:]] == [
        ("cinetpay", "POST", 200), ("cinetpay", "GET", 200), ("mtn_momo", "PUT", 200),
        ("orange_money", "POST", 200), ("wave", "POST", 200),
    ]  # fmt: skip
    assert [e["message_id"] for e in logged[-5:]] == [
        json.loads(raw)["headers"]["id"] for raw in reversed(queue.lrange("webhooks", 0, -1))
    ]
    log = receiver.log()
    for secret in ("4d2c0ffee-token-value", "query-token-77", "nt-5f3a", "0707070707", "t=1700000000", "SUCCESS"):
        assert secret not in log


def test_bytes_that_are_not_utf8_and_repeated_headers_are_kept(receiver: Receiver, queue: redis.Redis) -> None:
    raw = b'\xff\xfe{"status": "caf\xe9"}'
    connection = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=10)
    try:
        connection.putrequest("POST", "/webhooks/wave")
        connection.putheader("Content-Length", str(len(raw)))
        connection.putheader("X-Forwarded-For", "196.47.1.2")
        connection.putheader("X-Forwarded-For", "10.0.0.1")
        connection.endheaders(raw)
        response = connection.getresponse()
        assert response.status == 200, response.read()
    finally:
        connection.close()
    (envelope,) = envelopes(queue)
    assert envelope["body"].encode("utf-8", "surrogateescape") == raw
    assert envelope["headers"]["x-forwarded-for"] == "196.47.1.2, 10.0.0.1"
    # The request came from 127.0.0.1, a trusted proxy by default: the hop before it is the source.
    assert envelope["source_ip"] == "10.0.0.1"


def test_a_body_over_the_cap_is_413_and_not_enqueued(receiver: Receiver, queue: redis.Redis) -> None:
    with requests.Session() as http_session:
        at_cap = http_session.post(f"{receiver.url}/webhooks/wave", data=b"a" * MAX_BODY, timeout=10)
        declared = http_session.post(f"{receiver.url}/webhooks/wave", data=b"b" * (MAX_BODY + 1), timeout=10)
        chunked = http_session.post(  # no Content-Length: refused while reading
            f"{receiver.url}/webhooks/cinetpay", data=iter([b"c" * 40_000, b"c" * 40_000]), timeout=10
        )
    assert at_cap.status_code == 200
    assert (declared.status_code, declared.json()) == (413, {"error": f"body over {MAX_BODY} bytes"})
    assert chunked.status_code == 413
    assert [len(e["body"]) for e in envelopes(queue)] == [MAX_BODY]


def test_other_paths_and_methods_are_refused(receiver: Receiver, queue: redis.Redis) -> None:
    with requests.Session() as http_session:
        assert http_session.get(f"{receiver.url}/webhooks/wave", timeout=10).status_code == 405
        assert http_session.head(f"{receiver.url}/webhooks/cinetpay", timeout=10).status_code == 405
        assert http_session.delete(f"{receiver.url}/webhooks/mtn_momo/x", timeout=10).status_code == 405
        assert http_session.post(f"{receiver.url}/webhooks/paypal", data=b"{}", timeout=10).status_code == 404
        assert http_session.post(f"{receiver.url}/cinetpay/notify", data=b"{}", timeout=10).status_code == 404
    assert envelopes(queue) == []


def test_health_checks_the_broker(receiver: Receiver) -> None:
    answer = requests.get(f"{receiver.url}/healthz", timeout=10)
    assert (answer.status_code, answer.json()) == (200, {"status": "ok", "broker": "reachable (redis)"})


# --------------------------------------------------------------------------- the broker down


def test_broker_down_is_503_never_200_and_back_when_it_is(private_redis: PrivateRedis, tmp_path: Path) -> None:
    receiver = Receiver(private_redis.url, tmp_path / "receiver.log").start()
    try:
        url = f"{receiver.url}/webhooks/cinetpay"
        assert requests.post(url, data=b"cpm_trans_id=BEFORE", timeout=10).status_code == 200
        private_redis.kill()
        down = requests.post(url, data=b"cpm_trans_id=DURING", timeout=30)
        assert down.status_code == 503 and down.headers["Retry-After"] == "30"
        assert "send it again later" in down.json()["error"]
        health = requests.get(f"{receiver.url}/healthz", timeout=30)
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        private_redis.start()  # the same port again
        assert requests.get(f"{receiver.url}/healthz", timeout=10).status_code == 200
        assert requests.post(url, data=b"cpm_trans_id=AFTER", timeout=10).status_code == 200
        with private_redis.client() as client:
            bodies = [e["envelope"]["body"] for _, e in queued_tasks(client)]
        assert "cpm_trans_id=AFTER" in bodies and "cpm_trans_id=DURING" not in bodies
        refused = [e for e in receiver.log_entries() if e.get("http_status") == 503]
        assert len(refused) == 1 and refused[0]["level"] == "WARNING" and "not enqueued" in refused[0]["message"]
    finally:
        receiver.stop()


def test_starts_with_the_broker_unreachable_and_masks_its_password(tmp_path: Path) -> None:
    port = free_port()
    receiver = Receiver(f"redis://:s3cret-broker-pass@127.0.0.1:{port}/0", tmp_path / "receiver.log").start()
    try:
        assert requests.get(f"{receiver.url}/healthz", timeout=30).json() == {
            "status": "unavailable",
            "broker": f"redis://:**@127.0.0.1:{port}/0 unreachable: OperationalError",
        }
        assert requests.post(f"{receiver.url}/webhooks/wave", data=b"{}", timeout=30).status_code == 503
    finally:
        receiver.stop()
    log = receiver.log()
    assert f"redis://:**@127.0.0.1:{port}/0 unreachable" in log and "s3cret-broker-pass" not in log


def test_needs_the_broker_url_and_nothing_else(tmp_path: Path) -> None:
    result = subprocess.run(
        [payrecon_command(), "receive"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1 and "CELERY_BROKER_URL is not set" in result.stderr
    assert "DATABASE_URL" not in result.stderr


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def worker_receiver(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    """The receiver on the session's broker, which the session's real worker process consumes."""
    started = Receiver(redis_url, tmp_path_factory.mktemp("receiver-e2e") / "receiver.log").start()
    yield started
    started.stop()


CALLBACK_PATHS = {
    "cinetpay": "/webhooks/cinetpay",
    "mtn_momo": "/webhooks/mtn_momo/{reference}",
    "orange_money": "/webhooks/orange_money/notify/{reference}",
    "wave": "/webhooks/wave",
}


@pytest.mark.e2e
@pytest.mark.parametrize("kit", KITS, ids=lambda k: k.name)
def test_a_callback_through_the_receiver_settles_the_payment(
    kit: Kit,
    e2e: Runtime,
    sandbox: SandboxClient,
    sandbox_server: SandboxServer,
    producer: Any,
    worker_receiver: Receiver,
) -> None:
    """The sandbox sends the provider's real callback (its path, method, headers, signed body) to the
    receiver, which enqueues it; the real worker verifies it with the sandbox and settles the payment."""
    amount = PLAN[kit.name][1]
    view = kit.create(sandbox, kit.new_reference(), amount, "XOF", "accepted")
    producer.send_task(
        "payrecon.register_payment", kwargs={"payment": registration(kit, view, amount)}, queue="webhooks"
    )

    def payment() -> Payment | None:
        with e2e.sessions() as session:
            return session.scalars(select(Payment).where(Payment.reference == view.reference)).first()

    wait_for(payment, what="registration")
    deliver_to = worker_receiver.url + CALLBACK_PATHS[kit.name].format(reference=view.reference)
    answer = requests.post(
        f"{sandbox_server.url}/_sandbox/{kit.name}/transactions/{view.reference}/notification",
        json={"deliver_to": deliver_to},
        timeout=30,
    )
    assert answer.status_code == 200 and answer.json()["delivered"] == 200, answer.text
    settled = wait_for(lambda: (p := payment()) is not None and p.status is PaymentStatus.SUCCEEDED and p, what="paid")
    with e2e.sessions() as session:
        (delivery,) = session.scalars(select(InboxDelivery).where(InboxDelivery.reference == view.reference)).all()
        grants = session.scalars(select(SubscriptionGrant).where(SubscriptionGrant.payment_id == settled.id)).all()
    assert json.loads(delivery.envelope_raw)["receiver"] == worker_receiver.receiver_name
    assert delivery.path == deliver_to.removeprefix(worker_receiver.url)
    assert len(grants) == 1
