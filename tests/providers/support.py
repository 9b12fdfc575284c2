"""Helpers shared by the provider tests and kits: fast clients, a reset sandbox, a merchant endpoint."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, TypeVar

from tenacity import wait_none

from providers.sandbox import SandboxClient, SandboxServer


class _Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=_Closable)


def fast_options(url: str) -> dict[str, Any]:
    """Constructor options of a client on the sandbox at ``url`` that never sleeps between retries."""
    return {"api_url": url, "timeout": (1.0, 3.0), "wait": wait_none()}


@contextmanager
def closing_factory(build: Callable[..., C]) -> Iterator[Callable[..., C]]:
    """``make(**overrides)``: clients built by ``build(**overrides)``, all closed at the end."""
    made: list[C] = []

    def make(**overrides: Any) -> C:
        made.append(build(**overrides))
        return made[-1]

    try:
        yield make
    finally:
        for client in made:
            client.close()


def fresh_sandbox(server: SandboxServer) -> Iterator[SandboxClient]:
    """A control client on ``server`` after a reset (no transaction, no fault left); for fixtures."""
    with SandboxClient(server.url) as client:
        client.reset()
        yield client


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: str


@dataclass
class Receiver:
    """A tiny merchant endpoint: records what it receives, answers 200."""

    #: ``http://127.0.0.1:<port>``.
    base: str
    #: Where to send notifications: ``base`` plus a path.
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


@contextmanager
def receiving(path: str, methods: tuple[str, ...]) -> Iterator[Receiver]:
    """A :class:`Receiver` accepting ``methods`` on a free local port; its ``url`` ends with ``path``."""
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

        def log_message(self, format: str, *args: Any) -> None:
            pass

    for method in methods:
        setattr(Handler, f"do_{method}", Handler._record)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    box["receiver"] = Receiver(base, f"{base}{path}")
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield box["receiver"]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
