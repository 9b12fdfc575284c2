"""``payrecon enqueue`` as a user runs it: the installed program, only CELERY_BROKER_URL set, a Redis of
the test's own (no worker consumes there, so what is on the queue is exactly what was sent)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from providers.sandbox.server import SandboxServer
from tests.conftest import ROOT
from tests.helpers import PrivateRedis, new_reference, payrecon_command, queued_tasks, registration


def enqueue(broker_url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``payrecon enqueue ARGS`` with no environment but PATH and the broker (no DATABASE_URL)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CELERY_BROKER_URL": broker_url}
    return subprocess.run(
        [payrecon_command(), "enqueue", *args],
        check=False,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_lines(path: Path, documents: list[Any]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in documents))
    return path


def test_needs_only_the_broker(private_redis: PrivateRedis, tmp_path: Path) -> None:
    payment = registration(new_reference())
    result = enqueue(private_redis.url, "payment", str(write_lines(tmp_path / "one.jsonl", [payment])))
    assert result.returncode == 0, result.stderr
    assert "sent 1 payment message(s) to payrecon.register_payment via redis://" in result.stdout
    with private_redis.client() as client:
        assert queued_tasks(client) == [("payrecon.register_payment", {"payment": payment})]


def test_a_bad_second_line_sends_nothing(private_redis: PrivateRedis, tmp_path: Path) -> None:
    good, bad, also_good = (registration(new_reference()) for _ in range(3))
    bad["amount"] = "5000"
    result = enqueue(private_redis.url, "payment", str(write_lines(tmp_path / "three.jsonl", [good, bad, also_good])))
    with private_redis.client() as client:
        assert queued_tasks(client) == []  # the first line was not sent ahead of the check
    assert result.returncode == 2
    assert "error: nothing sent: 1 of 3 payment message(s) invalid" in result.stderr


def test_problems_read_line_field_message_without_the_input(private_redis: PrivateRedis, tmp_path: Path) -> None:
    good, bad = registration(new_reference()), registration(new_reference(), account="tech-secret-777")
    bad["amount"] = 12.5
    del bad["plan"]
    bad["currency"] = "EURO"
    source = tmp_path / "lines.jsonl"
    source.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n{oops\n")
    # A line that is not JSON is reported first (the file is read whole before anything is checked).
    result = enqueue(private_redis.url, "payment", str(source))
    assert result.returncode == 2
    assert (
        result.stderr.splitlines()[0]
        == "line 4: not JSON: Expecting property name enclosed in double quotes (column 2)"
    )
    source.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    result = enqueue(private_redis.url, "payment", str(source))
    assert result.returncode == 2
    assert result.stderr.splitlines()[:3] == [
        "line 3: amount: must be a JSON integer",
        "line 3: currency: String should match pattern '^[A-Z]{3}$'",
        "line 3: plan: Field required",
    ]
    assert "tech-secret-777" not in result.stderr and "12.5" not in result.stderr  # the input is not repeated
    items = enqueue(private_redis.url, "payment", "-", stdin=json.dumps([good, bad]))
    assert items.returncode == 2 and items.stderr.startswith("item 2: amount: must be a JSON integer\n")


@pytest.mark.parametrize("content", ["", "\n  \n", "[]"])
def test_an_empty_input_is_an_error(private_redis: PrivateRedis, tmp_path: Path, content: str) -> None:
    source = tmp_path / "empty.jsonl"
    source.write_text(content)
    result = enqueue(private_redis.url, "webhook", str(source))
    assert result.returncode == 2
    assert "no message to send" in result.stderr and "error: nothing sent" in result.stderr
    assert "sent 0" not in result.stdout + result.stderr


def test_a_broker_that_is_down_is_named_and_nothing_is_claimed_sent(tmp_path: Path) -> None:
    payment = registration(new_reference())
    result = enqueue("redis://:hunter22@127.0.0.1:9/0", "payment", str(write_lines(tmp_path / "p.jsonl", [payment])))
    assert result.returncode == 1
    assert "redis://:**@127.0.0.1:9/0 failed on message 1 of 1 (line 1)" in result.stderr
    assert "none was sent" in result.stderr and "hunter22" not in result.stderr


def test_the_readme_says_what_the_sandbox_answers_and_the_envelope_in_it_is_what_to_send(
    private_redis: PrivateRedis, sandbox_server: SandboxServer
) -> None:
    """docs/sandbox.md's example: its notification answer wraps the envelope (the fields the page
    names, no others); the whole answer is refused with what to send, its envelope is sent."""
    readme = (ROOT / "docs" / "sandbox.md").read_text(encoding="utf-8")  # the sandbox's page, linked from the README
    sentence = readme[readme.index("A notification route answers a JSON object") :].split("\n\n")[0]
    documented_fields = set(re.findall(r"`(\w+)`", sentence)) - {"deliver_to"}  # the option, not a field
    ref = new_reference()
    with requests.Session() as http:
        created = http.post(
            f"{sandbox_server.url}/_sandbox/cinetpay/transactions",
            json={"transaction_id": ref, "amount": 15000, "currency": "XOF", "fate": "accepted"},
            timeout=10,
        )
        assert created.status_code == 201
        answer = http.post(
            f"{sandbox_server.url}/_sandbox/cinetpay/transactions/{ref}/notification", json={}, timeout=10
        )
    assert answer.status_code == 200
    wrapper = answer.json()
    assert set(wrapper) == documented_fields == {"envelope", "delivered", "delivery_error", "enqueued", "enqueue_error"}
    refused = enqueue(private_redis.url, "webhook", "-", stdin=json.dumps(wrapper))
    assert refused.returncode == 2
    assert refused.stderr.startswith(
        'line 1: this is the sandbox\'s notification answer, not an envelope: send its "envelope" field'
    )
    # What docs/sandbox.md pipes into `payrecon enqueue webhook -`: `jq -c .envelope`, one line.
    sent = enqueue(private_redis.url, "webhook", "-", stdin=json.dumps(wrapper["envelope"]) + "\n")
    assert sent.returncode == 0, sent.stderr
    with private_redis.client() as client:
        assert queued_tasks(client) == [("payrecon.ingest_webhook", {"envelope": wrapper["envelope"]})]
