"""Transport-neutral plumbing of the sandbox: request/response values, router, notifier.

Handlers are plain functions ``Request -> Response``: the HTTP server in
``server.py`` does all socket work, so handlers stay easy to read and to test.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import requests

from providers.sandbox.broker import BrokerPublisher
from providers.sandbox.state import ControlError, Fault, SandboxState

__all__ = ["ControlError", "Notifier", "ProviderSandbox", "Request", "Response", "Router"]

R = TypeVar("R")


@dataclass(frozen=True)
class Request:
    """One HTTP request as the router sees it."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]  # names lower-cased
    body: bytes
    params: Mapping[str, str] = field(default_factory=dict)  # from the route pattern

    def header(self, name: str) -> str | None:
        """Header value by case-insensitive name."""
        return self.headers.get(name.lower())

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (invalid bytes replaced)."""
        return self.body.decode("utf-8", "replace")

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object (empty body → ``{}``); ``ControlError`` otherwise."""
        if not self.body.strip():
            return {}
        try:
            value = json.loads(self.body)
        except ValueError:
            raise ControlError("body is not valid JSON") from None
        if not isinstance(value, dict):
            raise ControlError("body must be a JSON object")
        return value

    def form_or_json(self) -> dict[str, Any] | None:
        """Parse a JSON or form-encoded body, as provider APIs accept both; None if neither."""
        content_type = (self.header("content-type") or "").lower()
        text = self.text
        if "json" in content_type or text.lstrip().startswith("{"):
            try:
                value = json.loads(text)
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
        try:
            parsed = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text))
        except ValueError:
            return None
        return {key: values[-1] for key, values in parsed.items()}


@dataclass(frozen=True)
class Response:
    """What a handler answers. ``delay`` is slept before answering; ``drop`` closes the socket."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False


def json_response(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON response."""
    merged = {"Content-Type": "application/json", **(headers or {})}
    return Response(status, json.dumps(payload).encode(), merged)


def error_response(status: int, message: str) -> Response:
    """The sandbox's own error shape (control API, unknown paths)."""
    return json_response(status, {"error": message})


def fault_response(fault: Fault, default: Callable[[int], Any]) -> Response | None:
    """The answer a fault forces, or None when it only delays the normal answer.

    ``default(status)`` gives the provider-flavoured JSON body for an HTTP error.
    """
    if fault.drop:
        return Response(0, delay=fault.delay, drop=True)
    if fault.status is None:
        return None
    headers: dict[str, str] = dict(fault.headers)
    if fault.retry_after is not None:
        headers["Retry-After"] = str(int(-(-fault.retry_after // 1)))  # whole seconds, rounded up
    if fault.body is not None:
        headers["Content-Type"] = fault.content_type
        return Response(fault.status, fault.body.encode(), headers, delay=fault.delay)
    response = json_response(fault.status, default(fault.status), headers)
    return replace(response, delay=fault.delay)


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    #: Provider wire routes honour global faults; control routes never do.
    wire: bool


class Router:
    """Method + path-pattern routing, with global faults applied to wire routes."""

    def __init__(self, state: SandboxState, *, latency: float = 0.0) -> None:
        self.state = state
        #: Added to every wire answer: a provider that takes this long to answer (benchmarks).
        self.latency = latency
        self._routes: list[Route] = []

    def add(self, method: str, path: str, handler: Handler, *, wire: bool = False) -> None:
        """Route ``method path`` to ``handler``; ``{name}`` in ``path`` matches one segment."""
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path))
        self._routes.append(Route(method.upper(), re.compile(f"^{regex}$"), handler, wire))

    def dispatch(self, request: Request) -> Response:
        """Find the route, apply global faults, run the handler; never raises."""
        path_matched = False
        for route in self._routes:
            match = route.pattern.match(request.path)
            if match is None:
                continue
            path_matched = True
            if route.method != request.method:
                continue
            params = {name: unquote(value) for name, value in match.groupdict().items()}
            request = replace(request, params=params)
            try:
                return self._run(route, request)
            except ControlError as exc:
                return error_response(exc.status, exc.message)
            except Exception as exc:  # a sandbox bug must answer 500, not kill the thread
                sys.stderr.write(f"sandbox: internal error on {request.method} {request.path}: {exc!r}\n")
                return error_response(500, f"internal sandbox error: {type(exc).__name__}")
        if path_matched:
            return error_response(405, f"method {request.method} not allowed on {request.path}")
        return error_response(404, f"no such path: {request.path}")

    def _run(self, route: Route, request: Request) -> Response:
        fault = None
        if route.wire:
            fault = self.state.take_global_fault(request.path) or self.state.draw_rate_fault()
        if fault is not None:
            forced = fault_response(fault, _generic_error_body)
            if forced is not None:
                return forced
        response = route.handler(request)
        if fault is not None and fault.delay:
            response = replace(response, delay=response.delay + fault.delay)
        if route.wire and self.latency:
            response = replace(response, delay=response.delay + self.latency)
        return response


def _generic_error_body(status: int) -> dict[str, Any]:
    return {"code": str(status), "message": "SANDBOX_FAULT", "description": f"injected HTTP {status}"}


# --------------------------------------------------------------------------- outgoing calls


class Notifier:
    """Sends provider callbacks: synchronously, or best effort in daemon threads.

    With a ``broker_url`` it can also enqueue them on payrecon's broker (``broker.py``)
    instead of POSTing them.
    """

    def __init__(
        self, timeout: tuple[float, float] = (2.0, 5.0), *, broker_url: str | None = None, retry_for: float = 0.0
    ) -> None:
        """``retry_for``: how long a background delivery or enqueue that failed (an error or a non-2xx
        answer) is tried again, with backoff, as the providers retry their callbacks (0: tried once)."""
        self.timeout = timeout
        self.retry_for = retry_for
        self.broker = BrokerPublisher(broker_url, app_name="payrecon-sandbox") if broker_url else None
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    @property
    def can_enqueue(self) -> bool:
        """Whether a broker is configured."""
        return self.broker is not None

    def send(self, method: str, url: str, body: str, headers: Mapping[str, str]) -> tuple[int | None, str | None]:
        """Deliver now; return ``(http_status, None)`` or ``(None, error)``."""
        scheme = urlsplit(url).scheme
        if scheme not in ("http", "https"):
            return None, f"unsupported URL scheme {scheme!r}"
        try:
            with requests.Session() as session:
                session.headers["User-Agent"] = "payrecon-sandbox/0.1"
                response = session.request(
                    method, url, data=body.encode() if body else None, headers=dict(headers), timeout=self.timeout
                )
                response.close()
        except requests.RequestException as exc:
            return None, f"{type(exc).__name__}: {exc}"[:300]
        return response.status_code, None

    def send_later(
        self,
        method: str,
        url: str,
        body: str,
        headers: Mapping[str, str],
        done: Callable[[int | None, str | None], None],
    ) -> None:
        """Deliver in a daemon thread, then call ``done(status, error)``."""

        def run() -> None:
            status, error = self._retried(
                lambda: self.send(method, url, body, headers), lambda r: r[0] is not None and 200 <= r[0] < 300
            )
            done(status, error)

        self._background(run)

    def enqueue(self, envelope: dict[str, Any]) -> tuple[bool, str | None]:
        """Publish ``envelope`` as ``payrecon.ingest_webhook`` now; ``(True, None)`` or ``(False, error)``."""
        if self.broker is None:
            return False, "the sandbox has no broker_url"
        try:
            self.broker.publish(envelope)
        except Exception as exc:  # any broker failure is reported, like a failed POST
            return False, f"{type(exc).__name__}: {exc}"[:300]
        return True, None

    def enqueue_later(self, envelope: dict[str, Any], done: Callable[[bool, str | None], None]) -> None:
        """Publish in a daemon thread, then call ``done(enqueued, error)``."""

        def run() -> None:
            enqueued, error = self._retried(lambda: self.enqueue(envelope), lambda r: r[0])
            done(enqueued, error)

        self._background(run)

    def _retried(self, attempt: Callable[[], R], succeeded: Callable[[R], bool]) -> R:
        """``attempt()`` until it ``succeeded`` or ``retry_for`` seconds have passed; its last result."""
        deadline = time.monotonic() + self.retry_for
        pause = 0.25
        result = attempt()
        while not succeeded(result) and time.monotonic() + pause < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
            result = attempt()
        return result

    def _background(self, run: Callable[[], None]) -> None:
        thread = threading.Thread(target=run, name="sandbox-notify", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def join(self, timeout: float = 5.0) -> None:
        """Wait (bounded) for pending deliveries, e.g. before the server stops."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

    def close(self) -> None:
        """Close the broker connections, if any (reopened on the next enqueue)."""
        if self.broker is not None:
            self.broker.close()


class ProviderSandbox(Protocol):
    """One provider's wire and control handlers (``cinetpay.py``; later MoMo, Orange, Wave)."""

    name: str

    def register(self, router: Router) -> None:
        """Add this provider's routes to ``router``."""
        ...
