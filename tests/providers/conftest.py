"""Fixtures for provider tests: one real sandbox server over HTTP, reset before each test."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

# The repo root must be importable however pytest is started (the package is not installed
# in the venv, and this directory has no __init__.py on purpose: "providers" would clash).
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tenacity import wait_none  # noqa: E402

from providers.cinetpay import CinetPayClient  # noqa: E402
from providers.sandbox import SandboxClient, SandboxServer  # noqa: E402

API_KEY = "test-api-key"
SITE_ID = "445160"
SECRET_KEY = "test-secret-key"


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    with SandboxServer(cinetpay_api_key=API_KEY, cinetpay_site_id=SITE_ID, cinetpay_secret_key=SECRET_KEY) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Iterator[SandboxClient]:
    with SandboxClient(sandbox_server.url) as client:
        client.reset()
        yield client


@pytest.fixture
def make_client(sandbox_server: SandboxServer) -> Iterator[Any]:
    """Factory of CinetPayClients on the sandbox that never sleep between retries."""
    clients: list[CinetPayClient] = []

    def make(**overrides: Any) -> CinetPayClient:
        options: dict[str, Any] = {
            "api_url": sandbox_server.url,
            "api_key": API_KEY,
            "site_id": SITE_ID,
            "secret_key": SECRET_KEY,
            "timeout": (1.0, 3.0),
            "wait": wait_none(),
        }
        client = CinetPayClient(**(options | overrides))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def cinetpay(make_client: Any) -> CinetPayClient:
    client: CinetPayClient = make_client()
    return client


@pytest.fixture
def txn_id() -> str:
    return f"order-{uuid.uuid4().hex[:12]}"


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: str


@dataclass
class Receiver:
    """A tiny merchant notify_url: records what it receives, answers 200."""

    url: str
    received: list[Received] = field(default_factory=list)
    event: threading.Event = field(default_factory=threading.Event)

    def wait(self, count: int = 1, timeout: float = 5.0) -> list[Received]:
        """Block until ``count`` requests arrived (or ``timeout``); return them all."""
        end = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < end:
            self.event.wait(0.05)
            self.event.clear()
        return list(self.received)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    box: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            rec = box["receiver"]
            rec.received.append(Received(self.command, self.path, dict(self.headers.items()), body))
            rec.event.set()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _record

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    box["receiver"] = Receiver(f"http://127.0.0.1:{httpd.server_address[1]}/notify/cinetpay")
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield box["receiver"]
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)
