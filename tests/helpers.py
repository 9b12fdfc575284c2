"""Builders for contract messages used across the tests."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from sqlalchemy import create_engine, text

from reconciliation.models import InboxDelivery

if TYPE_CHECKING:
    from worker.runtime import Runtime


@contextmanager
def scratch_database(base: str, prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the server at ``base`` (its URL), dropped afterwards
    together with any connection still open to it."""
    name = f"{prefix}_{secrets.token_hex(3)}"
    admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def new_reference(prefix: str = "TXN") -> str:
    """A fresh merchant reference in the marketplace's own format (TXN- + 12 upper hex)."""
    return f"{prefix}-{secrets.token_hex(6).upper()}"


def registration(
    reference: str,
    *,
    amount: int = 5000,
    currency: str = "XOF",
    account: str = "tech-42",
    plan: str = "depannage-monthly",
    periods: int = 1,
    provider: str = "cinetpay",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "schema": "payrecon.payment/1",
        "provider": provider,
        "reference": reference,
        "amount": amount,
        "currency": currency,
        "account": account,
        "plan": plan,
        "periods": periods,
        "provider_data": {},
        **extra,
    }


def age(rt: Runtime, inbox_id: int, seconds: float) -> None:
    """Let time pass for a delivery's work: its arrival and the start of its work move back."""
    with rt.sessions.begin() as session:
        row = session.get(InboxDelivery, inbox_id)
        assert row is not None and row.opened_at is not None
        row.first_seen_at -= timedelta(seconds=seconds)
        row.opened_at -= timedelta(seconds=seconds)


REDIS_SERVER = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of this test's own: only it is ever shut down, never the shared one."""

    def __init__(self, directory: Path, *, appendonly: bool = True) -> None:
        self.directory = directory
        self.port = _free_port()
        self.appendonly = appendonly  # queued messages survive a restart (off: like the machine's Redis)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        assert REDIS_SERVER is not None, "redis-server is not on PATH"
        argv = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        argv += ["--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.directory)]
        with (self.directory / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            assert self.proc.poll() is None, (self.directory / "redis.log").read_text(errors="replace")
            try:
                with self.client() as client:
                    # The server answering is ours, not another one that took the port meanwhile.
                    if client.info("server")["process_id"] == self.proc.pid:
                        return
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, "private redis-server did not start"
            time.sleep(0.05)

    def shutdown(self) -> None:
        """``SHUTDOWN``, as ``redis-cli shutdown`` or ``docker restart`` does: the AOF is flushed."""
        assert self.proc is not None
        with self.client() as client:
            client.shutdown()
        self.proc.wait(timeout=10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def resigned(envelope: dict[str, Any], secret_key: str = "test-secret-key", **changes: str) -> dict[str, Any]:  # noqa: S107
    """The same CinetPay notification with some fields changed and correctly signed again (the
    suite's secret key by default)."""
    from urllib.parse import parse_qsl

    from providers.cinetpay import build_notification

    fields = dict(parse_qsl(envelope["body"], keep_blank_values=True))
    fields.update(changes)
    body, token = build_notification(fields, secret_key)
    headers = {k: v for k, v in envelope["headers"].items() if k.lower() != "x-token"}
    return {**envelope, "body": body, "headers": {**headers, "x-token": token}}


def queued_tasks(client: redis.Redis, queue: str = "webhooks") -> list[tuple[str, dict[str, Any]]]:
    """What waits on the Redis list ``queue``, oldest first, as Celery protocol v2 ``(task name, kwargs)``
    (kombu's Redis transport LPUSHes a JSON message whose base64 body is ``[args, kwargs, embed]``)."""
    import base64
    import json

    found = []
    for raw in reversed(client.lrange(queue, 0, -1)):
        message = json.loads(raw)
        assert message["content-type"] == "application/json"
        assert message["properties"]["delivery_info"]["routing_key"] == queue
        _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        found.append((message["headers"]["task"], kwargs))
    return found


def payrecon_command() -> str:
    """The ``payrecon`` program pip installed next to this Python (the one a user runs)."""
    import sys

    program = Path(sys.executable).parent / "payrecon"
    assert program.exists(), f"{program} is missing: install the project (pip install -e .)"
    return str(program)


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan."""
    return [plan, *(node for child in plan.get("Plans", []) for node in plan_nodes(child))]
