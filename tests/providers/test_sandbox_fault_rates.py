"""The sandbox's fault rates (a share of every wire answer faulted, seeded) and its notification retries."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from providers.sandbox import SandboxClient, SandboxError
from providers.sandbox.web import Notifier

CHECK = "/v2/payment/check"


def check(url: str, txn_id: str) -> requests.Response:
    body = {"apikey": "test-api-key", "site_id": "445160", "transaction_id": txn_id}
    return requests.post(f"{url}{CHECK}", json=body, timeout=5)


def test_every_wire_answer_faulted_at_probability_one(sandbox: SandboxClient, txn_id: str) -> None:
    sandbox.create_cinetpay(txn_id, 5000)
    shown = sandbox.set_fault_rates([{"probability": 1, "fault": {"status": 503}}], seed=3)
    assert shown["rates"][0]["fault"] == {"status": 503}
    assert check(sandbox.base_url, txn_id).status_code == 503
    assert sandbox.get_cinetpay(txn_id)["check_count"] == 0  # answered before the transaction was looked at
    assert sandbox.health()["status"] == "ok"  # control routes are never faulted
    rates = sandbox.fault_rates()
    assert rates is not None and rates["drawn"] == 1 and rates["rates"][0]["injected"] == 1
    sandbox.set_fault_rates([])
    assert sandbox.fault_rates() is None
    assert check(sandbox.base_url, txn_id).status_code == 200


def test_shares_follow_the_seed_and_queued_faults_come_first(sandbox: SandboxClient, txn_id: str) -> None:
    sandbox.create_cinetpay(txn_id, 5000)
    sandbox.add_faults(CHECK, [{"status": 500}])
    rates = [
        {"probability": 0.3, "fault": {"status": 429, "retry_after": 0}},
        {"probability": 0.2, "fault": {"delay": 0.01}},
    ]
    sandbox.set_fault_rates(rates, seed=42)
    statuses = [check(sandbox.base_url, txn_id).status_code for _ in range(41)]
    assert statuses[0] == 500  # the queued fault, not drawn
    draws = random.Random(42)
    expected = [429 if draws.random() < 0.3 else 200 for _ in range(40)]
    assert statuses[1:] == expected
    shown = sandbox.fault_rates()
    assert shown is not None and shown["drawn"] == 40
    assert shown["rates"][0]["injected"] == expected.count(429)
    sandbox.reset()
    assert sandbox.fault_rates() is None


@pytest.mark.parametrize(
    "payload",
    [
        {"rates": [{"probability": 0.7, "fault": {"status": 500}}, {"probability": 0.4, "fault": {"status": 503}}]},
        {"rates": [{"probability": 1.5, "fault": {"status": 500}}]},
        {"rates": [{"probability": 0.1, "fault": {}}]},
        {"rates": [{"probability": 0.1, "fault": {"status": 500}, "extra": 1}]},
        {"rates": "all"},
        {"rates": [], "typo": 1},
    ],
)
def test_bad_fault_rates_are_refused(sandbox: SandboxClient, payload: dict[str, Any]) -> None:
    response = requests.post(f"{sandbox.base_url}/_sandbox/fault_rates", json=payload, timeout=5)
    assert response.status_code == 400 and "error" in response.json()
    assert sandbox.fault_rates() is None


def test_the_client_reports_a_refusal(sandbox: SandboxClient) -> None:
    with pytest.raises(SandboxError) as info:
        sandbox.set_fault_rates([{"probability": 2, "fault": {"status": 500}}])
    assert info.value.status == 400


class _Flaky(BaseHTTPRequestHandler):
    answers: list[int] = []
    seen: list[float] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).seen.append(time.monotonic())
        status = type(self).answers.pop(0) if type(self).answers else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/notify"
    server.shutdown()
    server.server_close()


def test_a_failed_notification_is_tried_again_while_retry_for_lasts(flaky: str) -> None:
    _Flaky.answers, _Flaky.seen = [500, 503], []
    outcome: list[tuple[int | None, str | None]] = []
    notifier = Notifier(retry_for=10.0)
    notifier.send_later("POST", flaky, "x=1", {}, lambda status, error: outcome.append((status, error)))
    notifier.join(10)
    assert outcome == [(200, None)] and len(_Flaky.seen) == 3


def test_without_retry_for_a_notification_is_sent_once(flaky: str) -> None:
    _Flaky.answers, _Flaky.seen = [500], []
    outcome: list[tuple[int | None, str | None]] = []
    notifier = Notifier()
    notifier.send_later("POST", flaky, "x=1", {}, lambda status, error: outcome.append((status, error)))
    notifier.join(5)
    assert outcome == [(500, None)] and len(_Flaky.seen) == 1
    enqueued: list[tuple[bool, str | None]] = []
    started = time.monotonic()
    no_broker = Notifier(retry_for=0.6)
    no_broker.enqueue_later({}, lambda ok, error: enqueued.append((ok, error)))
    no_broker.join(5)
    assert 0.2 < time.monotonic() - started < 3  # tried again after 0.25 s, then out of time
    assert enqueued == [(False, "the sandbox has no broker_url")]
