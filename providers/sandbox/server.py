"""The sandbox HTTP server: ``SandboxServer`` (tests, embedding) and ``serve()`` (CLI).

One ``ThreadingHTTPServer`` (a daemon thread per connection, HTTP/1.1 keep-alive)
routes every request through a :class:`~providers.sandbox.web.Router` holding each
provider's wire and control routes plus the shared ones:

* ``GET /_sandbox/health``: ``{"status": "ok", "providers": [...], "faults": {...},
  "broker": <broker URL, password masked, or null>}``
* ``POST /_sandbox/faults`` ``{"path", "faults": [...]}``: global faults for a wire
  path, consumed in order before any per-transaction fault;
* ``POST /_sandbox/fault_rates`` ``{"rates": [{"probability", "fault"}, ...], "seed"?}``: from
  now on, each wire answer no queued fault claims gets one of these faults at random with its
  probability (exclusive; ``{"rates": []}`` stops); ``GET`` shows them with what they injected;
* ``POST /_sandbox/reset``: forget every transaction, fault and fault rate.

Adding a provider: write a class with ``name`` and ``register(router)`` next to
``cinetpay.py`` (``wire.WireSandbox`` and ``control.ProviderControl`` hold what the
providers share) and append it to ``SandboxServer.providers``.
"""

from __future__ import annotations

import email.utils
import http.client
import signal
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Self, cast
from urllib.parse import parse_qs, urlsplit

from providers.http import header_fields, header_lines
from providers.sandbox.broker import INGEST_TASK, QUEUE, mask_url
from providers.sandbox.cinetpay import CinetPaySandbox
from providers.sandbox.mtn_momo import MtnMomoConfig, MtnMomoSandbox
from providers.sandbox.orange_money import OrangeMoneyConfig, OrangeMoneySandbox
from providers.sandbox.state import ControlError, FaultRates, SandboxState, check_keys, parse_faults
from providers.sandbox.wave import WaveConfig, WaveSandbox
from providers.sandbox.web import Notifier, ProviderSandbox, Request, Response, Router, json_response

DEFAULT_PORT = 8765  # same as `payrecon sandbox --port`
#: The sandbox's own, public, CinetPay merchant credentials (never real ones).
SANDBOX_API_KEY = "sandbox-api-key"
SANDBOX_SITE_ID = "100000"
SANDBOX_SECRET_KEY = "sandbox-secret-key"  # noqa: S105 - a published test value
MAX_BODY = 1_000_000
#: Connections waiting to be accepted (``listen``'s backlog).
LISTEN_BACKLOG = 1024


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver listens with a backlog of 5: a worker opening its batch's hundred keep-alive connections at
    # once overflowed it, and each connection dropped so waited for the client's SYN retransmission (1 s, then
    # 3...) while its batch waited for it. The kernel caps this at net.core.somaxconn.
    request_queue_size = LISTEN_BACKLOG
    router: Router
    verbose: bool

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (timeout tests do it on purpose) is not an error worth a traceback.
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


_date: tuple[int, str] = (0, "")


def _now() -> str:
    """The ``Date`` of an answer (``BaseHTTPRequestHandler.date_time_string``), formatted once a second."""
    global _date  # noqa: PLW0603 - a cache; a tuple is replaced whole, so a thread reads one or the other
    second, cached = int(time.time()), _date
    if cached[0] != second:
        cached = _date = (second, email.utils.formatdate(second, usegmt=True))
    return cached[1]


class _Headers:
    """A request's headers as ``_Handler._handle`` reads them (``get`` the first of a name, any case; ``items``
    in order), parsed as email's compat32 parser gives them to ``http.server`` (``providers.http``'s reader) at
    a fraction of its cost: that parser was a fifth of the sandbox's CPU under load."""

    __slots__ = ("_fields", "_first")

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self._fields = fields
        self._first: dict[str, str] = {}
        for name, value in fields:
            self._first.setdefault(name.lower(), value)

    def get(self, name: str, default: Any = None) -> Any:
        return self._first.get(name.lower(), default)

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "payrecon-sandbox/0.1"
    timeout = 30  # idle keep-alive connections are closed after this
    # An answer goes out in one write (``_write``); the base handler's own error answers (a malformed request)
    # take two, which without TCP_NODELAY Nagle + delayed ACK would hold ~40 ms on a keep-alive connection.
    disable_nagle_algorithm = True

    def parse_request(self) -> bool:
        """``BaseHTTPRequestHandler.parse_request`` (Python 3.11's, the same checks and answers) with the
        headers read by ``providers.http``'s reader into ``_Headers`` instead of email's parser."""
        self.command = None  # type: ignore[assignment]  # as the base class: set in case the first line is bad
        self.request_version = version = self.default_request_version
        self.close_connection = True
        requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")  # type: ignore[attr-defined]
        self.requestline = requestline
        words = requestline.split()
        if not words:
            return False
        if len(words) >= 3:  # enough to tell the protocol's version
            version = words[-1]
            try:
                if not version.startswith("HTTP/"):
                    raise ValueError
                number = version.split("/", 1)[1].split(".")
                if len(number) != 2 or any(not part.isdigit() or len(part) > 10 for part in number):
                    raise ValueError
                major, minor = int(number[0]), int(number[1])
            except (ValueError, IndexError):
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request version ({version!r})")
                return False
            if (major, minor) >= (1, 1) and self.protocol_version >= "HTTP/1.1":
                self.close_connection = False
            if (major, minor) >= (2, 0):
                self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"Invalid HTTP version ({version[5:]})")
                return False
            self.request_version = version
        if not 2 <= len(words) <= 3:
            self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request syntax ({requestline!r})")
            return False
        command, path = words[:2]
        if len(words) == 2:
            self.close_connection = True
            if command != "GET":
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad HTTP/0.9 request type ({command!r})")
                return False
        self.command, self.path = command, path
        if self.path.startswith("//"):  # as the base class (gh-87389): never an absolute URI without a scheme
            self.path = "/" + self.path.lstrip("/")
        try:
            self.headers = _Headers(header_fields(header_lines(self.rfile)))  # type: ignore[assignment]
        except http.client.LineTooLong as err:
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long", str(err))
            return False
        except http.client.HTTPException as err:
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers", str(err))
            return False
        connection = self.headers.get("Connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive" and self.protocol_version >= "HTTP/1.1":
            self.close_connection = False
        expect = self.headers.get("Expect", "")
        if (
            expect.lower() == "100-continue"
            and self.protocol_version >= "HTTP/1.1"
            and self.request_version >= "HTTP/1.1"
        ):
            return self.handle_expect_100()
        return True

    def _handle(self) -> None:
        server = cast(_HTTPServer, self.server)
        if self.headers.get("Transfer-Encoding"):
            self._write(411, b'{"error": "send a Content-Length, not chunked"}', {})
            self.close_connection = True
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._write(413 if length > MAX_BODY else 400, b'{"error": "bad Content-Length"}', {})
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        response = server.router.dispatch(request)
        if response.delay:
            time.sleep(response.delay)
        if response.drop:
            self.close_connection = True
            return
        self._write(response.status, response.body, response.headers)

    def _write(self, status: int, body: bytes, headers: Any) -> None:
        """An answer in one write (one TCP segment: the client reads it in one go), built at once: the bytes
        ``send_response``, ``send_header`` and ``end_headers`` would write, then the body (none for a HEAD; the
        body alone for HTTP/0.9, which has no head)."""
        self.log_request(status)
        reason = self.responses[status][0] if status in self.responses else ""
        head = [f"{self.protocol_version} {status} {reason}", f"Server: {self.version_string()}", f"Date: {_now()}"]
        for name, value in headers.items():
            head.append(f"{name}: {value}")
            if name.lower() == "connection":  # as send_header
                if value.lower() == "close":
                    self.close_connection = True
                elif value.lower() == "keep-alive":
                    self.close_connection = False
        if "Content-Type" not in headers:
            head.append("Content-Type: application/json")
        head.append(f"Content-Length: {len(body)}")
        data = (
            b"" if self.request_version == "HTTP/0.9" else "\r\n".join(head).encode("latin-1", "strict") + b"\r\n\r\n"
        )
        if self.command != "HEAD":
            data += body
        try:
            self.wfile.write(data)
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    def log_message(self, format: str, *args: Any) -> None:
        if cast(_HTTPServer, self.server).verbose:
            super().log_message(format, *args)


class SandboxServer:
    """Local imitation of the providers' APIs, in memory, on a background thread.

    ``port=0`` picks a free port; read it back from :attr:`url` after :meth:`start`.
    ``broker_url`` (payrecon's Celery broker, e.g. ``redis://127.0.0.1:6379/0``) lets
    the control API enqueue notifications as ``payrecon.ingest_webhook`` tasks on queue
    ``webhooks``, as payrecon's receiver would, instead of POSTing them.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        cinetpay_api_key: str = SANDBOX_API_KEY,
        cinetpay_site_id: str = SANDBOX_SITE_ID,
        cinetpay_secret_key: str = SANDBOX_SECRET_KEY,
        verbose: bool = False,
        broker_url: str | None = None,
        latency: float = 0.0,
        mtn_momo: MtnMomoConfig | None = None,
        orange_money: OrangeMoneyConfig | None = None,
        wave: WaveConfig | None = None,
        notify_retry_for: float = 0.0,
    ) -> None:
        """Configure the server and the merchant credentials it accepts; nothing is bound or connected yet.

        ``notify_retry_for``: seconds during which a status-change notification that could not be
        delivered or enqueued is tried again (0: once, the default).
        """
        self.host = host
        self.port = port
        self.verbose = verbose
        self.broker_url = broker_url or None
        self.state = SandboxState()
        self.notifier = Notifier(broker_url=self.broker_url, retry_for=notify_retry_for)
        self.cinetpay_credentials = {
            "api_key": cinetpay_api_key,
            "site_id": cinetpay_site_id,
            "secret_key": cinetpay_secret_key,
        }
        self.router = Router(self.state, latency=latency)
        self.mtn_momo_config = mtn_momo or MtnMomoConfig()
        self.orange_money_config = orange_money or OrangeMoneyConfig()
        self.wave_config = wave or WaveConfig()
        self.providers: list[ProviderSandbox] = [
            CinetPaySandbox(self.state, self.notifier, base_url=lambda: self.url, **self.cinetpay_credentials),
            MtnMomoSandbox(self.state, self.notifier, self.mtn_momo_config, base_url=lambda: self.url),
            OrangeMoneySandbox(self.state, self.notifier, self.orange_money_config, base_url=lambda: self.url),
            WaveSandbox(self.state, self.notifier, self.wave_config, base_url=lambda: self.url),
        ]
        for provider in self.providers:
            provider.register(self.router)
        self.router.add("GET", "/_sandbox/health", self._health)
        self.router.add("POST", "/_sandbox/faults", self._add_faults)
        self.router.add("GET", "/_sandbox/fault_rates", self._get_fault_rates)
        self.router.add("POST", "/_sandbox/fault_rates", self._set_fault_rates)
        self.router.add("POST", "/_sandbox/reset", self._reset)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def worker_env(self) -> dict[str, str]:
        """The environment variables that point a payrecon worker at this sandbox, all providers."""
        momo, orange, wave = self.mtn_momo_config, self.orange_money_config, self.wave_config
        return {
            "CINETPAY_API_URL": self.url,
            "CINETPAY_API_KEY": self.cinetpay_credentials["api_key"],
            "CINETPAY_SITE_ID": self.cinetpay_credentials["site_id"],
            "CINETPAY_SECRET_KEY": self.cinetpay_credentials["secret_key"],
            "MTN_MOMO_API_URL": self.url,
            "MTN_MOMO_API_USER": momo.api_user,
            "MTN_MOMO_API_KEY": momo.api_key,
            "MTN_MOMO_SUBSCRIPTION_KEY": momo.subscription_key,
            "MTN_MOMO_TARGET_ENVIRONMENT": momo.target_environment,
            "ORANGE_MONEY_API_URL": self.url,
            "ORANGE_MONEY_CLIENT_ID": orange.client_id,
            "ORANGE_MONEY_CLIENT_SECRET": orange.client_secret,
            "ORANGE_MONEY_MERCHANT_KEY": orange.merchant_key,
            "ORANGE_MONEY_COUNTRY": orange.country,
            "WAVE_API_URL": self.url,
            "WAVE_API_KEY": wave.api_key,
            "WAVE_WEBHOOK_SECRETS": ",".join(wave.webhook_secrets),
        }

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (only once started)."""
        if self._httpd is None:
            raise RuntimeError("sandbox server is not started")
        host, port = self._httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self) -> Self:
        """Bind and serve on a daemon thread; return ``self``."""
        if self._httpd is not None:
            return self
        httpd = _HTTPServer((self.host, self.port), _Handler)
        httpd.router = self.router
        httpd.verbose = self.verbose
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="payrecon-sandbox", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket, wait briefly for pending notifications, close the broker."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.notifier.join(5)
        self.notifier.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ shared control routes

    def _health(self, request: Request) -> Response:
        names = [p.name for p in self.providers]
        broker = mask_url(self.broker_url) if self.broker_url else None
        faults = self.state.global_faults()
        rates = self.state.fault_rates()
        return json_response(
            200, {"status": "ok", "providers": names, "faults": faults, "fault_rates": rates, "broker": broker}
        )

    def _add_faults(self, request: Request) -> Response:
        payload = request.json_object()
        check_keys(payload, {"path", "faults"}, "faults")
        path = payload.get("path")
        if not isinstance(path, str) or not path.startswith("/") or path.startswith("/_sandbox"):
            raise ControlError("path must be a provider API path such as /v2/payment/check")
        faults = parse_faults(payload.get("faults"))
        if not faults:
            raise ControlError("faults must be a non-empty list")
        queued = self.state.add_faults(path, faults)
        return json_response(200, {"path": path, "queued": queued})

    def _get_fault_rates(self, request: Request) -> Response:
        return json_response(200, {"fault_rates": self.state.fault_rates()})

    def _set_fault_rates(self, request: Request) -> Response:
        rates = FaultRates.from_json(request.json_object())
        self.state.set_fault_rates(rates)
        return json_response(200, {"fault_rates": self.state.fault_rates()})

    def _reset(self, request: Request) -> Response:
        self.state.reset()
        return json_response(200, {"status": "reset"})


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    cinetpay_api_key: str = SANDBOX_API_KEY,
    cinetpay_site_id: str = SANDBOX_SITE_ID,
    cinetpay_secret_key: str = SANDBOX_SECRET_KEY,
    verbose: bool = True,
    broker_url: str | None = None,
    latency: float = 0.0,
) -> None:
    """Run the sandbox in the foreground until SIGINT or SIGTERM (``payrecon sandbox``).

    ``broker_url``: see :class:`SandboxServer`; ``latency``: seconds added to every wire answer.
    """
    server = SandboxServer(
        host,
        port,
        cinetpay_api_key=cinetpay_api_key,
        cinetpay_site_id=cinetpay_site_id,
        cinetpay_secret_key=cinetpay_secret_key,
        verbose=verbose,
        broker_url=broker_url,
        latency=latency,
    ).start()
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if server.broker_url:
            notifications = (
                f"POSTed to notify_url / deliver_to, or enqueued as {INGEST_TASK} on queue "
                f"{QUEUE!r} of {mask_url(server.broker_url)} "
                '(notify_url "enqueue", or "enqueue": true)'
            )
        else:
            notifications = "POSTed to notify_url / deliver_to (no broker_url: no enqueuing)"
        sys.stdout.write(
            f"payrecon provider sandbox listening on {server.url}\n"
            "  point a payrecon worker at it with (sandbox credentials, not secrets):\n"
            + "".join(f"    export {name}={value}\n" for name, value in server.worker_env().items())
            + f"  notifications: {notifications}\n"
            f"  control API: {server.url}/_sandbox/ (see docs/sandbox-api.md)\n"
            "Press Ctrl+C to stop.\n"
        )
        sys.stdout.flush()
        while not stopping.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
        sys.stdout.write("payrecon provider sandbox stopped\n")
