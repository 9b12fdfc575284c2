"""providers.http against a real local server (the sandbox's fault injection)."""

from __future__ import annotations

import gzip
import http.client
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
import requests
from tenacity import RetryCallState, Retrying, wait_none

from providers.base import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderNotFound,
    ProviderRateLimited,
    ProviderTransientError,
)
from providers.http import (
    ProviderSession,
    RateLimited,
    RetryPolicy,
    body_excerpt,
    build_session,
    parse_retry_after,
    send,
)
from providers.sandbox import SandboxClient, SandboxServer
from tests.providers.support import Received, receiving
from worker.runtime import CALLS_IN_FLIGHT

PATH = "/v2/payment/check"


@pytest.fixture
def session() -> Iterator[requests.Session]:
    http = build_session()
    yield http
    http.close()


def no_wait(attempts: int = 3) -> RetryPolicy:
    return RetryPolicy(max_attempts=attempts, wait=wait_none())


def test_build_session_sets_user_agent_and_pool(session: requests.Session) -> None:
    adapter = session.get_adapter("https://api-checkout.cinetpay.com")
    assert session.headers["User-Agent"] == "payrecon/0.1"
    # As many keep-alive connections as a worker process has calls in flight.
    assert adapter._pool_maxsize == CALLS_IN_FLIGHT  # type: ignore[attr-defined]
    assert adapter.max_retries.total == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, ProviderRateLimited),
        (500, ProviderTransientError),
        (503, ProviderTransientError),
        (401, ProviderAuthError),
        (403, ProviderAuthError),
        (404, ProviderNotFound),
        (400, ProviderBadRequest),
        (422, ProviderBadRequest),
    ],
)
def test_status_mapping(
    sandbox_server: SandboxServer, sandbox: SandboxClient, session: requests.Session, status: int, error: type
) -> None:
    body = "x" * 500
    headers = {"X-Correlation-Id": "corr-1"}
    sandbox.add_faults(PATH, [{"status": status, "body": body, "headers": headers}])
    with pytest.raises(ProviderError) as info:
        send(session, "demo", "POST", sandbox_server.url + PATH, policy=no_wait(1), json={})
    exc = info.value
    assert type(exc) is error or (status == 429 and type(exc) is RateLimited)
    assert (exc.http_status, exc.request_id, exc.provider) == (status, "corr-1", "demo")
    assert len(exc.message) < 250 and exc.message.endswith("…")


def test_retries_only_transient_errors(
    sandbox_server: SandboxServer, sandbox: SandboxClient, session: requests.Session
) -> None:
    sandbox.add_faults(PATH, [{"status": 502}, {"status": 429}, {"status": 400}, {"status": 500}])
    with pytest.raises(ProviderBadRequest):
        send(session, "demo", "POST", sandbox_server.url + PATH, policy=no_wait(5), json={})
    # 502 and 429 were retried, 400 stopped everything: the 500 is still queued.
    assert sandbox.health()["faults"] == {PATH: [{"status": 500}]}


def test_success_returns_the_response(
    sandbox_server: SandboxServer, sandbox: SandboxClient, session: requests.Session
) -> None:
    sandbox.add_faults(PATH, [{"status": 500}])
    response = send(session, "demo", "POST", sandbox_server.url + PATH, policy=no_wait(), json={})
    assert response.status_code == 200 and response.json()["code"] == "608"  # the real handler answered


@dataclass(frozen=True)
class _Counted(RetryPolicy):
    """A policy that records what tenacity is asked: each ``Retrying`` built, each wait with its state."""

    built: list[int] = field(default_factory=list)
    waits: list[tuple[int, float]] = field(default_factory=list)

    def retrying(self) -> Retrying:
        self.built.append(1)
        return super().retrying()

    def _wait(self, state: RetryCallState) -> float:
        self.waits.append((state.attempt_number, state.seconds_since_start or 0.0))
        return 0.0


def test_a_call_answered_at_once_builds_no_retrying_and_retries_go_on_as_tenacity_decides(
    sandbox_server: SandboxServer, sandbox: SandboxClient, session: requests.Session
) -> None:
    """The first attempt runs without tenacity (a ``Retrying`` and its state cost ~14 us of CPU a call); after
    a transient failure tenacity decides from the same state as if it had made that attempt: the waits follow
    attempts 1 and 2, the time counts from before the first, and the attempts stop at the policy's number."""
    url = sandbox_server.url + PATH
    policy = _Counted(max_attempts=3)
    assert send(session, "demo", "POST", url, policy=policy, json={}).status_code == 200
    assert policy.built == [] and policy.waits == []

    sandbox.add_faults(PATH, [{"status": 500}, {"status": 503}])
    assert send(session, "demo", "POST", url, policy=policy, json={}).json()["code"] == "608"
    assert policy.built == [1] and [attempt for attempt, _ in policy.waits] == [1, 2]
    assert 0 < policy.waits[0][1] <= policy.waits[1][1]  # since before the first attempt

    sandbox.add_faults(PATH, [{"status": 500}, {"status": 502}, {"status": 504}, {"status": 500}])
    with pytest.raises(ProviderTransientError, match="HTTP 504"):  # the third attempt's failure, reraised
        send(session, "demo", "POST", url, policy=policy, json={})
    assert sandbox.health()["faults"] == {PATH: [{"status": 500}]}  # no fourth attempt

    sandbox.reset()
    sandbox.add_faults(PATH, [{"status": 500}, {"status": 400}, {"status": 500}])
    with pytest.raises(ProviderBadRequest):  # not transient: no more attempts
        send(session, "demo", "POST", url, policy=policy, json={})
    assert sandbox.health()["faults"] == {PATH: [{"status": 500}]}

    sandbox.reset()
    sandbox.add_faults(PATH, [{"status": 500, "delay": 0.3}, {"status": 500}])
    slow = _Counted(max_attempts=3, deadline=0.2)
    with pytest.raises(ProviderTransientError):  # the deadline counts the first attempt's 0.3 s: none after it
        send(session, "demo", "POST", url, policy=slow, json={})
    assert sandbox.health()["faults"] == {PATH: [{"status": 500}]}
    assert slow.waits[0][1] >= 0.3


def test_retry_after_is_honoured_and_capped(
    sandbox_server: SandboxServer, sandbox: SandboxClient, session: requests.Session
) -> None:
    slept: list[float] = []
    policy = RetryPolicy(max_attempts=3, wait=wait_none(), retry_after_cap=2.0, sleep=slept.append)
    sandbox.add_faults(PATH, [{"status": 429, "retry_after": 1}, {"status": 429, "retry_after": 30}])
    send(session, "demo", "POST", sandbox_server.url + PATH, policy=policy, json={})
    assert slept == [1.0, 2.0]


def test_connection_refused_is_transient(session: requests.Session) -> None:
    with pytest.raises(ProviderTransientError, match="connection failed") as info:
        send(session, "demo", "GET", "http://127.0.0.1:9/", policy=no_wait(2), timeout=(0.5, 0.5))
    assert isinstance(info.value.__cause__, requests.ConnectionError)


def test_invalid_url_is_not_retried(session: requests.Session) -> None:
    with pytest.raises(ProviderBadRequest, match="MissingSchema"):
        send(session, "demo", "GET", "no-scheme.example", policy=no_wait())


def test_error_messages_redact_secrets(
    sandbox_server: SandboxServer, sandbox: SandboxClient, session: requests.Session
) -> None:
    sandbox.add_faults(PATH, [{"status": 400, "body": "bad request from apikey=SECRET-123"}])
    with pytest.raises(ProviderBadRequest) as info:
        send(session, "demo", "POST", sandbox_server.url + PATH, policy=no_wait(), redact=("SECRET-123",), json={})
    assert "SECRET-123" not in str(info.value) and "apikey=***" in str(info.value)


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 01 Jan 2025 00:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Tue, 31 Dec 2024 00:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_body_excerpt() -> None:
    assert body_excerpt("a\n  b\tc") == "a b c"
    assert len(body_excerpt("y" * 1000)) == 200


# --------------------------------------------------------------------------- ProviderSession


def _strip(received: Received) -> tuple[str, str, str, dict[str, str]]:
    return received.method, received.path, received.body, received.headers


def test_a_provider_call_sends_what_requests_would(session: requests.Session) -> None:
    """ProviderSession's own path sends the same request as requests' Session.request: session headers
    with the call's (None removes one), params, JSON or form body."""
    assert isinstance(session, ProviderSession)
    plain = requests.Session()
    plain.headers.update(session.headers)
    calls: list[dict[str, Any]] = [
        {"params": {"q": "a b", "n": "1"}, "json": {"amount": 5000, "ref": "é"}, "headers": {"X-Extra": "yes"}},
        {"data": {"grant_type": "client_credentials"}, "headers": {"Accept": None, "Authorization": "Basic eA=="}},
        {"json": None, "data": "raw=1&b=é"},
    ]
    with receiving("/v2/payment/check", ("POST",)) as receiver:
        for kwargs in calls:
            for client in (session, plain):
                response = client.request("POST", receiver.url, timeout=(3, 3), allow_redirects=False, **kwargs)
                assert response.status_code == 200 and response.content == b""
    sent = [_strip(r) for r in receiver.received]
    assert len(sent) == 6
    assert sent[0::2] == sent[1::2]
    assert sent[0][1] == "/v2/payment/check?q=a+b&n=1" and sent[2][3].get("Accept") is None


def test_a_session_s_cookies_are_sent_and_an_empty_jar_takes_the_own_path(
    session: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cookie in the session's jar sends the call down requests' own path, which sends it; a jar that never held
    one, or that was cleared whole, is seen as empty without walking it, and the call takes payrecon's path."""
    import providers.http as http_module

    own: list[str] = []
    walked: list[str] = []  # walks of the session's jar
    direct = http_module.ProviderSession._send_direct
    walk = requests.cookies.RequestsCookieJar.__iter__

    def send_direct(self: Any, prepared: Any, *args: Any) -> Any:
        own.append(prepared.url)
        return direct(self, prepared, *args)

    def iterate(jar: Any) -> Any:
        if jar is session.cookies:  # (each requests.Response makes and walks a jar of its own)
            walked.append("session")
        return walk(jar)

    monkeypatch.setattr(http_module.ProviderSession, "_send_direct", send_direct)
    monkeypatch.setattr(requests.cookies.RequestsCookieJar, "__iter__", iterate)
    with receiving("/v2/payment/check", ("POST",)) as receiver:
        for jar in ("empty", "cookie", "cleared"):
            if jar == "cookie":
                session.cookies.set("sid", "abc", domain="127.0.0.1", path="/")
            elif jar == "cleared":
                session.cookies.clear()
            calls_walked = len(walked)
            response = session.request("POST", receiver.url, timeout=(3, 3), allow_redirects=False, json={})
            assert response.status_code == 200
            if jar != "cookie":
                assert len(walked) == calls_walked, jar  # an empty jar is not walked
    cookies = [r.headers.get("Cookie") for r in receiver.received]
    assert cookies == [None, "sid=abc", None]
    assert len(own) == 2  # the empty and the cleared jar


def test_the_proxy_in_the_environment_is_used_and_read_once_per_host(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with receiving("/", ("POST",)) as proxy, receiving("/direct", ("POST",)) as direct:
        monkeypatch.setenv("http_proxy", proxy.base)
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        http = build_session()
        counted: list[str] = []
        original = http.merge_environment_settings

        def counting(url: Any, *args: Any) -> Any:
            counted.append(url)
            return original(url, *args)

        monkeypatch.setattr(http, "merge_environment_settings", counting)
        try:
            for _ in range(3):
                send(http, "cinetpay", "POST", "http://provider.invalid/v2/payment/check", json={}, policy=no_wait(),
                     allow_redirects=False)  # fmt: skip
            # no_proxy names the receiver's host: straight there.
            send(http, "cinetpay", "POST", direct.url, json={}, policy=no_wait(), allow_redirects=False)
        finally:
            http.close()
    assert [r.path for r in proxy.received] == ["http://provider.invalid/v2/payment/check"] * 3
    assert [r.path for r in direct.received] == ["/direct"]
    assert counted == ["http://provider.invalid/v2/payment/check", direct.url]  # once per host


class _Answering(BaseHTTPRequestHandler):
    """Answers every POST with a gzip-encoded JSON body on a keep-alive connection; with the path
    ``/close``, closes the connection after answering without saying so (a server's idle timeout)."""

    protocol_version = "HTTP/1.1"
    connections: ClassVar[list[int]] = []

    def setup(self) -> None:
        super().setup()
        self.connections.append(id(self.connection))

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = gzip.compress(b'{"code": "00", "path": "' + self.path.encode() + b'"}')
        if self.path == "/corrupt":  # cut short: not a gzip stream one can read
            body = body[: len(body) // 2]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Twice", "a")
        self.send_header("X-Twice", "b")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        if self.path == "/close":
            self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def answering() -> Iterator[str]:
    _Answering.connections = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answering)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_body_that_cannot_be_decoded_is_a_passing_fault_and_its_connection_is_not_kept(
    session: requests.Session, answering: str
) -> None:
    """A gzip body cut short is the wire's fault, asked again later (as a connection failure), not a request
    of ours to give up on; the connection it came on is closed, not handed to the next call."""
    with pytest.raises(ProviderTransientError, match="ContentDecodingError"):
        send(session, "p", "POST", answering + "/corrupt", json={}, policy=no_wait(), allow_redirects=False)
    assert isinstance(session, ProviderSession)
    assert sum(len(idle) for idle in session._idle.values()) == 0
    answer = send(session, "p", "POST", answering + "/check", json={}, policy=no_wait(), allow_redirects=False)
    assert answer.json() == {"code": "00", "path": "/check"}


def test_calls_share_a_keep_alive_connection_and_read_the_body_as_requests_does(
    session: requests.Session, answering: str
) -> None:
    """The session's own path: one connection for calls one after the other, the body decoded from
    gzip, a header given twice joined, the encoding JSON's."""
    answers = [
        send(session, "p", "POST", answering + "/check", json={}, policy=no_wait(), allow_redirects=False)
        for _ in range(3)
    ]
    assert [a.json() for a in answers] == [{"code": "00", "path": "/check"}] * 3
    assert answers[0].headers["x-twice"] == "a, b" and answers[0].encoding == "utf-8"
    assert len(_Answering.connections) == 1
    plain = requests.post(answering + "/check", json={}, timeout=3)
    assert (plain.content, plain.headers["X-Twice"], plain.status_code) == (
        answers[0].content,
        answers[0].headers["X-Twice"],
        answers[0].status_code,
    )


def test_a_connection_the_server_closed_is_not_used_again(session: requests.Session, answering: str) -> None:
    """A pooled connection the server has closed meanwhile is left, not sent on (which would fail the call):
    with no retries allowed, every call still succeeds, on a new connection."""
    for _ in range(3):
        answer = send(session, "p", "POST", answering + "/close", json={}, policy=no_wait(1), allow_redirects=False)
        assert answer.json() == {"code": "00", "path": "/close"}
        time.sleep(0.05)  # the server's close reaches the client's socket
    assert len(_Answering.connections) == 3


@contextmanager
def _silent() -> Iterator[str]:
    """The URL of a server that accepts connections (its backlog) and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        yield f"http://127.0.0.1:{silent.getsockname()[1]}/check"


def test_a_provider_that_does_not_answer_in_time_is_a_timeout(session: requests.Session) -> None:
    """The read timeout on the session's own path is requests' ReadTimeout, hence a transient 'timeout'."""
    with _silent() as url:
        with pytest.raises(ProviderTransientError, match="timeout after") as info:
            send(session, "p", "POST", url, json={}, timeout=(3, 0.2), policy=no_wait(1), allow_redirects=False)
        assert isinstance(info.value.__cause__, requests.exceptions.ReadTimeout)


@pytest.mark.parametrize("in_hub", [False, True], ids=["thread", "hub"])
def test_an_answer_that_trickles_in_is_a_timeout_once_the_read_timeout_has_passed(
    session: requests.Session, in_hub: bool
) -> None:
    """The read timeout bounds the whole answer on the session's own path, not each read: a provider sending its
    answer a byte every 0.1 s (each read well within 0.5 s) would otherwise hold the call, and a batch's
    settlement with it, for as long as it likes (here about 9 s until its body is whole). In a hub too."""
    answer = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{"code":"00"}'
    answer += b" " * (120 - len(answer))
    stop = threading.Event()

    def trickle(server: socket.socket) -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            for byte in answer:
                if stop.wait(0.1):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:  # the client gave up and closed
                    return

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        thread = threading.Thread(target=trickle, args=(server,), daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/check"
        started = time.monotonic()
        try:
            with pytest.raises(ProviderTransientError, match="timeout after") as info:
                call = partial(send, session, "p", "POST", url, json={}, timeout=(3, 0.5), policy=no_wait(1),
                               allow_redirects=False)  # fmt: skip
                _hub().run([call]) if in_hub else call()
        finally:
            stop.set()
            thread.join(5)
        assert isinstance(info.value.__cause__, requests.exceptions.ReadTimeout)
        assert time.monotonic() - started < 3  # the 0.5 s, not the 9 s the answer would take


def test_a_pooled_connection_is_checked_whatever_its_descriptor_number(
    session: requests.Session, answering: str
) -> None:
    """A busy worker's sockets may have descriptors past select()'s 1024: the check that a pooled connection is
    still open must work there too (it is reused, not failed)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        pytest.skip("the descriptor limit is too low to pass 1024")
    padding = [socket.socket() for _ in range(1100)]  # the next descriptors are past 1024
    try:
        answers = [
            send(session, "p", "POST", answering + "/check", json={}, policy=no_wait(1), allow_redirects=False)
            for _ in range(2)
        ]
    finally:
        for sock in padding:
            sock.close()
    assert [a.json()["code"] for a in answers] == ["00", "00"]
    assert len(_Answering.connections) == 1


# --------------------------------------------------------------------------- TLS on ProviderSession's own path


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """An HTTPS server on 127.0.0.1 whose certificate, for the name ``localhost`` only, is signed by a CA of its
    own (both made by the openssl command, as a provider's is by its CA): its port and the CA's certificate."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is missing")
    folder = tmp_path_factory.mktemp("tls")
    ca, ca_key, cert, key, request = (str(folder / n) for n in ("ca.pem", "ca.key", "cert.pem", "key.pem", "req.pem"))
    (folder / "leaf.cnf").write_text(
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
    )
    for command in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=payrecon test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request, "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", str(folder / "leaf.cnf")],
    ):  # fmt: skip
        subprocess.run([openssl, *command], check=True, capture_output=True)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def do_GET(self) -> None:
            body = b'{"status": "ACCEPTED"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], ca
    finally:
        server.shutdown()
        server.server_close()


def test_https_on_its_own_path_verifies_the_certificate_and_keeps_the_connection(
    tls_server: tuple[int, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, ca = tls_server

    def not_this_way(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("requests' adapter was used")

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", not_this_way)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca)  # the provider's CA is trusted (as requests reads it)
    session = ProviderSession()
    url = f"https://localhost:{port}/v2/payment/check"
    try:
        first = session.request("GET", url, timeout=(3, 3), allow_redirects=False)
        second = session.request("GET", url, timeout=(3, 3), allow_redirects=False)
        assert (first.status_code, first.json(), second.json()) == (200, {"status": "ACCEPTED"}, {"status": "ACCEPTED"})
        assert sum(len(idle) for idle in session._idle.values()) == 1  # one connection, used twice
    finally:
        session.close()


@pytest.mark.parametrize(
    ("host", "trusted", "why"),
    [
        ("localhost", False, "certificate verify failed"),  # not signed by a CA of requests' own bundle
        ("127.0.0.1", True, "certificate verify failed"),  # signed by a trusted CA, for another name
    ],
)
def test_https_on_its_own_path_refuses_a_certificate_it_cannot_verify(
    tls_server: tuple[int, str], host: str, trusted: bool, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, ca = tls_server
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    if trusted:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca)
    else:
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    with ProviderSession() as session, pytest.raises(requests.exceptions.SSLError, match=why):
        session.request("GET", f"https://{host}:{port}/v2/payment/check", timeout=(3, 3), allow_redirects=False)


def test_its_own_path_asks_only_for_the_encodings_it_decodes(session: requests.Session) -> None:
    """requests asks for br and zstd where their libraries are installed (urllib3 decodes them); this path
    reads gzip and deflate only, so it asks for no other."""
    assert isinstance(session, ProviderSession)
    session.headers["Accept-Encoding"] = "gzip, deflate, br, zstd"
    with receiving("/v2/payment/check", ("POST",)) as receiver:
        session.request("POST", receiver.url, timeout=(3, 3), allow_redirects=False, json={})
        session.request("POST", receiver.url, timeout=(3, 3), allow_redirects=False, json={},
                        headers={"Accept-Encoding": "br;q=1.0"})  # fmt: skip
    assert [r.headers.get("Accept-Encoding") for r in receiver.received] == ["gzip, deflate", "identity"]


def test_a_request_made_again_is_not_prepared_again(session: requests.Session, monkeypatch: pytest.MonkeyPatch) -> None:
    """Method, URL and headers of a call are prepared once and kept for the next call with the same ones (only
    the body changes from one status check to the next); a change to the session's headers or the call's
    is prepared anew, and sent."""
    prepared: list[str] = []
    original = requests.PreparedRequest.prepare_url

    def counting(self: requests.PreparedRequest, url: Any, params: Any) -> None:
        prepared.append(url)
        original(self, url, params)

    monkeypatch.setattr(requests.PreparedRequest, "prepare_url", counting)
    with receiving("/v2/payment/check", ("POST",)) as receiver:
        for n in range(3):
            session.request("POST", receiver.url, timeout=(3, 3), allow_redirects=False, json={"n": n})
        session.headers["X-Session"] = "1"
        session.request("POST", receiver.url, timeout=(3, 3), allow_redirects=False, json={"n": 3})
        session.request("POST", receiver.url, timeout=(3, 3), allow_redirects=False, json={"n": 4},
                        headers={"Authorization": "Bearer t"})  # fmt: skip
    assert len(prepared) == 3  # the first call, the session's new header, the call's own header
    assert [r.body for r in receiver.received] == [f'{{"n": {n}}}' for n in range(5)]
    assert [r.headers.get("X-Session") for r in receiver.received] == [None] * 3 + ["1"] * 2
    assert [r.headers.get("Authorization") for r in receiver.received] == [None] * 4 + ["Bearer t"]


class _KeepAlive:
    """One kept-alive connection; for each request received, ``script[i](conn)`` answers it."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                buffered = b""
                for step in self.script:
                    while b"\r\n\r\n" not in buffered:
                        data = conn.recv(65536)
                        if not data:
                            break
                        buffered += data
                    else:
                        _, _, buffered = buffered.partition(b"\r\n\r\n")
                        step(conn)
                        continue
                    break

    def close(self) -> None:
        self.server.close()


def _exchange_fails(answer: bytes, error: type[Exception] = requests.exceptions.ConnectionError) -> None:
    """A call of the session's own exchange to a server that answers ``answer`` raises ``error``."""
    server = _KeepAlive([lambda conn: conn.sendall(answer)])
    session = build_session()
    try:
        with pytest.raises(error):
            session.request("GET", f"http://127.0.0.1:{server.port}/check", timeout=(2, 2), allow_redirects=False)
    finally:
        session.close()
        server.close()


def test_an_early_hints_answer_is_a_failed_exchange_not_the_next_calls_answer() -> None:
    """http.client takes a 103 for the answer: kept, the connection would go back to the pool with the real
    answer still on it, and the next call would read this call's answer (another payment's). The session drops
    the connection and reports a connection error (retried); the next call gets its own answer."""
    from providers.http import build_session

    def first(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n")
        time.sleep(0.3)
        conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{"ref": "AAAA"}')

    def second(conn: socket.socket) -> None:
        conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{"ref":"BBBB"}')

    server = _KeepAlive([first, second])
    session = build_session()
    try:
        url = f"http://127.0.0.1:{server.port}/check"
        with pytest.raises(requests.exceptions.ConnectionError, match="informational"):
            session.request("GET", url + "/AAAA", timeout=(2, 2), allow_redirects=False)
        server.script = [second]
        answer = session.request("GET", url + "/BBBB", timeout=(2, 2), allow_redirects=False)
        assert (answer.status_code, answer.content) == (200, b'{"ref":"BBBB"}')
    finally:
        session.close()
        server.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000000\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffff\r\nok",
    ],
    ids=["length", "chunk"],
)
def test_an_answer_claiming_a_huge_body_is_a_failed_exchange_not_an_allocation(answer: bytes) -> None:
    """http.client would allocate what the other end claims (MemoryError, which no caller expects: a batch job
    would fail and come back again and again); the session reports a connection error, retried."""

    _exchange_fails(answer)


def test_a_request_with_a_body_is_written_in_one_send(
    session: requests.Session, answering: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Head and body of a call go out in one write on the session's own path (http.client makes two: the
    server then wakes up twice for one request), the same bytes as http.client's two writes."""
    sent: list[bytes] = []
    original = socket.socket.sendall
    caller = threading.get_ident()

    def recording(sock: socket.socket, data: Any, *args: Any) -> None:
        if threading.get_ident() == caller:  # the client's writes, not the server's
            sent.append(bytes(data))
        original(sock, data, *args)

    monkeypatch.setattr(socket.socket, "sendall", recording)
    answer = send(session, "p", "POST", answering + "/check", json={"a": 1}, policy=no_wait(), allow_redirects=False)
    assert answer.json() == {"code": "00", "path": "/check"}
    ours, sent[:] = list(sent), []
    plain = http.client.HTTPConnection(answering.removeprefix("http://"), timeout=3)
    plain.request("POST", "/check", answer.request.body, dict(answer.request.headers))
    assert plain.getresponse().read()
    plain.close()
    assert len(ours) == 1 and len(sent) == 2
    assert ours[0] == b"".join(sent) and ours[0].endswith(b'\r\n\r\n{"a": 1}')


def test_the_sandbox_writes_an_answer_in_one_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox writes an answer's head and body in one send (``BaseHTTPRequestHandler`` makes two: the
    client then reads the answer in two wakeups), and a HEAD answer (here a 405) as before: its head alone."""
    sent: list[bytes] = []
    original = socket.socket.sendall
    caller = threading.get_ident()

    def recording(sock: socket.socket, data: Any, *args: Any) -> None:
        if threading.get_ident() != caller:  # the sandbox's writes
            sent.append(bytes(data))
        original(sock, data, *args)

    monkeypatch.setattr(socket.socket, "sendall", recording)
    with SandboxServer() as server:
        for method in ("GET", "HEAD"):
            host, port = server.url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(f"{method} /_sandbox/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                received = b""
                while chunk := sock.recv(65536):
                    received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 ") and b"Content-Length: " in head
            if method == "GET":
                assert sent == [received] and b'"status": "ok"' in body
            else:
                assert sent == [received] and body == b""
            sent.clear()


def test_the_sandbox_takes_a_batchs_connections_at_once() -> None:
    """The sandbox's listening socket holds a worker's burst of new keep-alive connections (a batch's hundred
    calls) until it accepts them: with socketserver's backlog of 5 the kernel dropped the rest, and each
    such connection waited a second or more for its SYN to be sent again."""
    from providers.sandbox.server import _Handler, _HTTPServer

    server = _HTTPServer(("127.0.0.1", 0), _Handler)  # listening, not accepting yet
    clients: list[socket.socket] = []
    port = server.server_address[1]
    try:
        for _ in range(100):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=0.5))
    finally:
        for client in clients:
            client.close()
        server.server_close()
    assert len(clients) == 100


# --------------------------------------------------------------------------- the exchange, against http.client's


class _Canned:
    """A server that records each request's raw bytes and answers each connection's first request with the
    next canned answer, then closes the connection."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for answer in self.answers:
            conn, _ = self.server.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                lengths = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
                length = int(lengths[0].split(b":")[1]) if lengths else 0
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(data[: len(head) + 4] + body)
                conn.sendall(answer)

    def close(self) -> None:
        self.server.close()


def _both(answer: bytes, method: str = "POST", **request: Any) -> tuple[Any, Any, list[bytes]]:
    """What http.client reads of ``answer`` and what the session's own exchange reads of it, each outcome a
    tuple or the exception raised; and the request bytes each sent."""
    from providers.http import _exchange

    canned = _Canned([answer, answer, answer])
    headers = request.get("headers", {"User-Agent": "payrecon/0.1", "Content-Type": "application/json",
                                      "Content-Length": "2"})  # fmt: skip
    body = request.get("body", b"{}")
    outcomes: list[Any] = []
    try:
        for way in ("http.client", "own", "own in a hub"):
            conn = http.client.HTTPConnection("127.0.0.1", canned.port, timeout=3)
            conn.connect()
            try:
                if way == "own":  # with a read timeout, as every call has: through the deadline's reader
                    got: Any = _exchange(conn, method, "/v2/payment/check", headers, body, within=3)
                    content = got.content
                elif way == "own in a hub":  # non-blocking, each wait a switch to the hub
                    assert conn.sock is not None
                    conn.sock.setblocking(False)
                    exchange = partial(_exchange, conn, method, "/v2/payment/check", headers, body, within=3)
                    got = _hub().run([partial(exchange, together=True)])[0]
                    content = got.content
                else:
                    conn.request(method, "/v2/payment/check", body, dict(headers))
                    got = conn.getresponse()
                    content = got.read()
                outcomes.append((got.status, got.reason, got.getheaders(), content, got.will_close))
            except (OSError, http.client.HTTPException) as exc:
                outcomes.append((type(exc), str(exc)))
            finally:
                conn.close()
    finally:
        canned.close()
    assert outcomes[2] == outcomes[1]  # in a hub as outside one: the same answer, or the same exception
    assert canned.requests[2] == canned.requests[1]
    return outcomes[0], outcomes[1], canned.requests


@pytest.mark.parametrize(
    "answer",
    [
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{"code":"00"}',
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;ext=1\r\n{"a":\r\n3\r\n 1}\r\n0\r\nX-Trailer: t\r\n\r\n',
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nup to the close",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nup to the close",
        b"HTTP/1.1 100 Continue\r\nX-Early: 1\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 204 No Content\r\nX-Twice: a\r\nX-Folded: one\r\n two\r\nx-twice: b\r\n\r\n",
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3\r\nContent-Length: 4\r\n\r\nbusy",
        b"HTTP/1.1 200\r\nContent-Length: 0\r\nBad Header Line\r\nX-After: lost\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\ncut",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"HTTP/0.9 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"SMTP ready\r\n\r\n",
        b"",
        b"HTTP/1.1 99 Low\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: 1\rContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nX-A: 1 \ra",
    ],
    ids=[
        "length",
        "chunked",
        "http10",
        "close",
        "continue",
        "204-folded-twice",
        "503",
        "bad-header",
        "cut",
        "bad-chunk",
        "short-chunk",
        "no-crlf",
        "http2",
        "http09",
        "not-http",
        "nothing",
        "bad-status",
        "bare-cr",  # a CR alone ends a header line: Content-Length is a header of its own
        "bare-cr-at-the-close",  # the same in the last line, cut by the close: "a" is not X-A's
    ],
)
def test_the_own_exchange_reads_an_answer_as_http_client_does(answer: bytes) -> None:
    """ProviderSession's exchange on a pooled connection (``providers.http._exchange``, which replaces
    ``conn.request`` + ``getresponse().read()``) sends the bytes http.client sends and reads every kind of
    answer as http.client does: status, reason, headers, body, whether the connection closes, or the
    exception."""
    theirs, ours, sent = _both(answer)
    assert ours == theirs
    assert sent[0] == sent[1]


def test_the_own_exchange_sends_host_and_encoding_as_http_client_does() -> None:
    """The Host and Accept-Encoding http.client adds when the headers have none, and a header it was given
    instead, in the headers' order; a GET without a body."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    for headers in ({"Accept": "application/json"}, {"Host": "provider.example", "Accept-Encoding": "gzip"}):
        theirs, ours, sent = _both(answer, "GET", headers=headers, body=None)
        assert ours == theirs
        assert sent[0] == sent[1]
    assert sent[1].startswith(b"GET /v2/payment/check HTTP/1.1\r\nHost: provider.example\r\nAccept-Encoding: gzip\r\n")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 40,  # up to the close
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n14\r\n"
        + b"x" * 20
        + b"\r\n14\r\n"
        + b"x" * 20
        + b"\r\n0\r\n\r\n",  # whole: only the sum of the chunks is over
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n" + b"x" * 40,  # a negative chunk size
    ],
    ids=["close-delimited", "chunks", "negative-chunk"],
)
def test_the_own_exchange_reads_no_more_than_the_largest_body(answer: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body read up to the close, or chunk after chunk, stops at ``MAX_BODY`` (a connection error, retried)
    instead of reading whatever the other end sends; a negative chunk size is a cut body, not "read it all"."""
    import providers.http

    monkeypatch.setattr(providers.http, "MAX_BODY", 30)
    _exchange_fails(answer)


def _answer(body: bytes, *head: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\n" + b"".join(h + b"\r\n" for h in head) + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


def test_max_body_applies_to_the_decoded_body(monkeypatch: pytest.MonkeyPatch) -> None:
    """MAX_BODY bounds the decoded body too: 1 MB of zeros is ~1 kB gzipped (about 1000:1), so a 64 MiB answer
    could inflate to ~64 GiB (the worker killed for its memory, again at each redelivery)."""
    import providers.http

    monkeypatch.setattr(providers.http, "MAX_BODY", 100_000)
    bomb = gzip.compress(b"\0" * 1_000_000)
    assert len(bomb) < 2_000
    _exchange_fails(_answer(bomb, b"Content-Encoding: gzip"), requests.exceptions.RequestException)


def test_a_multi_member_gzip_body_is_decoded_whole_as_urllib3_does() -> None:
    body = gzip.compress(b'{"status": ') + gzip.compress(b'"ACCEPTED"}')
    server = _KeepAlive([lambda conn: conn.sendall(_answer(body, b"Content-Encoding: gzip"))])
    session = build_session()
    try:
        url = f"http://127.0.0.1:{server.port}/check"
        theirs = requests.get(url, timeout=(2, 2)).content  # requests' adapter (urllib3), first connection
        ours = session.request("GET", url, timeout=(2, 2), allow_redirects=False).content  # the second
    finally:
        session.close()
        server.close()
    assert ours == theirs == b'{"status": "ACCEPTED"}'


def test_a_streamed_body_is_sent_chunk_encoded() -> None:
    """A body to stream (an iterator) takes requests' own path, which frames it in chunks as its header says
    (http.client, given requests' Transfer-Encoding header, sent it raw)."""
    received: list[bytes] = []

    def serve(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(1)
            data = b""
            try:
                while chunk := conn.recv(65536):
                    data += chunk
                    if data.endswith(b"0\r\n\r\n") or data.endswith(b"abcd"):
                        break
            except TimeoutError:
                pass
            received.append(data)
            conn.sendall(_answer(b"{}"))

    listener = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=serve, args=(listener,), daemon=True)
    thread.start()
    session = build_session()
    try:
        session.request(
            "POST",
            f"http://127.0.0.1:{listener.getsockname()[1]}/check",
            data=iter([b"ab", b"cd"]),
            timeout=(2, 2),
            allow_redirects=False,
        )
    finally:
        session.close()
        thread.join(3)
        listener.close()
    head, _, body = received[0].partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n", body


def test_conflicting_content_lengths_fail_the_exchange() -> None:
    """Two Content-Length headers that differ: which frames the body? The exchange fails (urllib3 refuses them
    too) instead of keeping a connection whose next answer may start inside this one."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\n{}xyz"
    _exchange_fails(answer)


# --------------------------------------------------------------------------- a batch's calls in one thread (hub)


def _ok(body: bytes = b'{"code":"00"}') -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class _Barrier:
    """A server that answers no request before ``n`` connections have each sent one: calls made one after the
    other would wait for their answer forever (until their read timeout); calls side by side all get theirs."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.server = socket.create_server(("127.0.0.1", 0), backlog=n)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conns = []
        try:
            for _ in range(self.n):
                conn, _ = self.server.accept()
                data = b""
                while not data.endswith(b"{}"):  # the head and the two-byte body of each call below
                    data += conn.recv(65536)
                conns.append(conn)
            for i, conn in enumerate(conns):
                conn.sendall(_ok(b'{"n": %d}' % i))
        except OSError:
            pass
        finally:
            time.sleep(0.2)
            for conn in conns:
                conn.close()

    def close(self) -> None:
        self.server.close()
        self.thread.join(5)


def _hub() -> Any:
    from concurrent.futures import ThreadPoolExecutor

    from providers.hub import Hub

    return Hub(ThreadPoolExecutor(4, thread_name_prefix="test-offload"))


def test_a_hub_runs_its_calls_side_by_side_in_one_thread(session: requests.Session) -> None:
    """Each call of a hub runs while the others wait for their answers, all in the calling thread: the barrier
    server answers only once all five have asked, so calls made one after the other would time out. Results
    come back in the calls' order; each call had its own connection (opened off the thread), and all five are
    kept for the next calls."""
    barrier = _Barrier(5)
    threads: list[int] = []

    def call() -> Any:
        threads.append(threading.get_ident())
        answer = send(session, "p", "POST", barrier.url + "/check", json={}, timeout=(3, 3), policy=no_wait(1),
                      allow_redirects=False)  # fmt: skip
        return answer.json()

    try:
        answers = _hub().run([call] * 5)
    finally:
        barrier.close()
    assert sorted(a["n"] for a in answers) == [0, 1, 2, 3, 4]
    assert set(threads) == {threading.get_ident()}
    assert isinstance(session, ProviderSession)
    assert sum(len(idle) for idle in session._idle.values()) == 5


def test_a_hub_opens_connections_off_its_thread(session: requests.Session, answering: str, monkeypatch: Any) -> None:
    """A new connection (name lookup, TCP and TLS handshakes: as long as the connect timeout) is opened on an
    offload thread while the hub goes on; the call then runs in the hub's thread again."""
    opened: list[int] = []
    connect = ProviderSession._connect

    def spy(self: ProviderSession, *args: Any) -> Any:
        opened.append(threading.get_ident())
        return connect(self, *args)

    monkeypatch.setattr(ProviderSession, "_connect", spy)
    answer = _hub().run([lambda: send(session, "p", "POST", answering + "/check", json={}, policy=no_wait(),
                                      allow_redirects=False)])  # fmt: skip
    assert answer[0].json() == {"code": "00", "path": "/check"}
    assert len(opened) == 1 and opened[0] != threading.get_ident()


def test_a_connection_kept_in_a_hub_serves_calls_outside_it_and_back(session: requests.Session, answering: str) -> None:
    """The pooled connection is non-blocking while a hub uses it and blocking with its timeouts outside one: the
    same connection serves calls in both, one after the other."""

    def call() -> Any:
        return send(session, "p", "POST", answering + "/check", json={}, policy=no_wait(1), allow_redirects=False)

    hub = _hub()
    answers = [*hub.run([call]), call(), *hub.run([call]), call()]
    assert [a.json()["code"] for a in answers] == ["00"] * 4
    assert len(_Answering.connections) == 1


def test_a_call_that_fails_in_a_hub_fails_alone(session: requests.Session, answering: str) -> None:
    """A provider that does not answer in time is a read timeout for its call only, in a hub as outside one (the
    deadline bounds the wait); the other calls get their answers, and the first exception is raised once every
    call is done."""
    done: list[str] = []
    with _silent() as url:

        def hangs() -> None:
            try:
                send(session, "p", "POST", url, json={}, timeout=(3, 0.3), policy=no_wait(1), allow_redirects=False)
            finally:
                done.append("silent")

        def answers() -> None:
            send(session, "p", "POST", answering + "/check", json={}, policy=no_wait(1), allow_redirects=False)
            done.append("answered")

        with pytest.raises(ProviderTransientError, match="timeout after") as info:
            _hub().run([hangs, answers, answers])
    assert isinstance(info.value.__cause__, requests.exceptions.ReadTimeout)
    assert sorted(done) == ["answered", "answered", "silent"]


def test_a_pause_in_a_hub_lets_the_other_calls_run() -> None:
    """``providers.hub.sleep`` (the retry loop's pause between attempts) pauses its call, not the thread: the
    second call starts while the first sleeps. Outside a hub it is ``time.sleep``."""
    from providers import hub

    order: list[str] = []

    def first() -> None:
        order.append("first asks")
        hub.sleep(0.05)
        order.append("first again")

    def second() -> None:
        order.append("second asks")

    _hub().run([first, second])
    assert order == ["first asks", "second asks", "first again"]
    assert RetryPolicy().sleep is hub.sleep
    started = time.monotonic()
    hub.sleep(0.05)
    assert time.monotonic() - started >= 0.05


def test_calls_that_share_a_token_do_not_lock_each_other_out_in_a_hub(
    sandbox_server: SandboxServer, sandbox: SandboxClient
) -> None:
    """MTN MoMo's calls take a token from a cache whose lock is held while the token is fetched. In a hub the
    lock is taken and the token fetched on an offload thread, so a second call of the same hub never waits for a
    lock its own thread holds (which would block the thread, and the batch, for good): both checks are answered,
    with one token between them."""
    from tests.providers import kit_mtn_momo as momo

    views = [momo.create(sandbox, momo.new_reference(), 1000, "EUR", "accepted") for _ in range(2)]
    client = momo.make_client(sandbox_server.url)
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(_hub().run([lambda v=v: client.check(v) for v in views])),
                              daemon=True)  # fmt: skip
    try:
        worker.start()
        worker.join(20)
        assert not worker.is_alive(), "the hub's thread is blocked"
        assert [answer.reference for answer in outcome[0]] == [view.reference for view in views]
        assert client.tokens_fetched == 1
    finally:
        client.close()


def test_https_in_a_hub(tls_server: tuple[int, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS on a non-blocking socket: its reads and writes wait through the hub (``SSLWantReadError``) as a plain
    socket's do; the connection is kept and serves the second call."""
    port, ca = tls_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca)
    session = ProviderSession()
    url = f"https://localhost:{port}/v2/payment/check"
    try:
        answers = _hub().run([lambda: session.request("GET", url, timeout=(3, 3), allow_redirects=False)] * 2)
        again = _hub().run([lambda: session.request("GET", url, timeout=(3, 3), allow_redirects=False)])
        assert [a.json() for a in [*answers, *again]] == [{"status": "ACCEPTED"}] * 3
        assert sum(len(idle) for idle in session._idle.values()) == 2
    finally:
        session.close()


# --------------------------------------------------------------------------- review of the hub (c2a7afe)


def _finishing(finished: dict[str, float], name: str, started: float, call: Any) -> Any:
    def run() -> None:
        try:
            call()
        finally:
            finished[name] = time.monotonic() - started

    return run


def test_a_token_refresh_in_a_hub_holds_up_only_the_calls_that_need_its_token(
    sandbox_server: SandboxServer, sandbox: SandboxClient, session: requests.Session, answering: str
) -> None:
    """A MoMo check whose token must be fetched waits for the token endpoint (here a second; a slow or failing one
    takes the token call's whole retry budget, about 30 s); the batch's other calls do not: a call to another
    provider in the same hub has its answer at once, as it had on a thread of its own."""
    from tests.providers import kit_mtn_momo as momo

    view = momo.create(sandbox, momo.new_reference(), 1000, "EUR", "accepted")
    client = momo.make_client(sandbox_server.url)
    sandbox.add_faults("/collection/token/", [{"delay": 1.0}])
    finished: dict[str, float] = {}
    started = time.monotonic()
    other = partial(send, session, "p", "POST", answering + "/check", json={}, policy=no_wait(1), allow_redirects=False)
    try:
        _hub().run([_finishing(finished, "momo", started, lambda: client.check(view)),
                    _finishing(finished, "other", started, other)])  # fmt: skip
    finally:
        client.close()
    assert finished["momo"] >= 1.0
    assert finished["other"] < 0.5, f"the other provider's call waited {finished['other']:.2f} s for MoMo's token"
    assert client.tokens_fetched == 1


def test_a_token_another_thread_is_fetching_does_not_block_a_hubs_thread(
    sandbox_server: SandboxServer, sandbox: SandboxClient, session: requests.Session, answering: str
) -> None:
    """While another thread (another batch, a single delivery) holds the token cache's lock to fetch a token, a
    check of a hub that needs the token waits for it without blocking the hub's thread: the hub's other calls go
    on; the check then uses the token the other thread fetched."""
    from tests.providers import kit_mtn_momo as momo

    views = [momo.create(sandbox, momo.new_reference(), 1000, "EUR", "accepted") for _ in range(2)]
    client = momo.make_client(sandbox_server.url)
    sandbox.add_faults("/collection/token/", [{"delay": 1.0}])
    elsewhere = threading.Thread(target=lambda: client.check(views[0]), daemon=True)
    finished: dict[str, float] = {}
    other = partial(send, session, "p", "POST", answering + "/check", json={}, policy=no_wait(1), allow_redirects=False)
    try:
        elsewhere.start()
        time.sleep(0.2)  # the other thread holds the lock, fetching
        started = time.monotonic()
        _hub().run([_finishing(finished, "momo", started, lambda: client.check(views[1])),
                    _finishing(finished, "other", started, other)])  # fmt: skip
        elsewhere.join(5)
    finally:
        client.close()
    assert finished["other"] < 0.5, f"the hub's thread was blocked {finished['other']:.2f} s on the token lock"
    assert finished["momo"] >= 0.5
    assert client.tokens_fetched == 1


class _SlowReader:
    """A server that reads what it is sent slowly (8 KB every 0.05 s, through a small receive buffer) and never
    answers: a request body of some size takes seconds to send."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by accepted connections
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(4)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/check"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            try:
                while not self.stop.is_set() and conn.recv(8192):
                    time.sleep(0.05)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.server.close()
        self.thread.join(5)


@pytest.mark.parametrize("in_hub", [False, True], ids=["thread", "hub"])
def test_a_request_sent_slower_than_the_read_timeout_is_a_timeout(
    session: requests.Session, monkeypatch: pytest.MonkeyPatch, in_hub: bool
) -> None:
    """Outside a hub the socket's timeout bounds the whole ``sendall`` (Python 3.5+; one ``SSL_write`` for TLS):
    a provider that takes the request in slowly is a timeout once the read timeout has passed. In a hub too (each
    wait to write bounded alone, it would take as long as the provider likes: here about 2 s for 256 KB)."""
    connect = ProviderSession._connect

    def small_buffer(self: ProviderSession, *args: Any) -> Any:  # so that the body does not fit in the kernel's
        conn = connect(self, *args)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        return conn

    monkeypatch.setattr(ProviderSession, "_connect", small_buffer)
    slow = _SlowReader()
    call = partial(send, session, "p", "POST", slow.url, data=b"x" * (256 << 10), timeout=(3, 0.5), policy=no_wait(1),
                   allow_redirects=False)  # fmt: skip
    started = time.monotonic()
    try:
        with pytest.raises(ProviderTransientError, match="timeout after"):
            _hub().run([call]) if in_hub else call()
    finally:
        slow.close()
    assert time.monotonic() - started < 1.2


class _HubFails(Exception):
    pass


def test_a_connection_opened_for_a_call_the_hub_ended_is_closed(
    session: requests.Session, answering: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the hub itself fails (a signal's exception in its thread) while a call waits for its new connection
    on an offload thread, the hub ends the call (GreenletExit); the connection, opened after that, is closed, not
    left open for the garbage collector (and the provider's idle timeout)."""
    import signal

    opened: list[Any] = []
    connect = ProviderSession._connect

    def slow(self: ProviderSession, *args: Any) -> Any:
        time.sleep(0.3)
        conn = connect(self, *args)
        opened.append(conn)
        return conn

    def fail(*_: Any) -> None:
        raise _HubFails

    monkeypatch.setattr(ProviderSession, "_connect", slow)
    previous = signal.signal(signal.SIGALRM, fail)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(_HubFails):
            _hub().run([partial(send, session, "p", "POST", answering + "/check", json={}, policy=no_wait(1),
                                allow_redirects=False)])  # fmt: skip
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    time.sleep(0.5)  # the connect finishes on its thread
    assert len(opened) == 1
    assert opened[0].sock is None, "the connection is left open"


def test_a_call_that_timed_out_leaves_nothing_registered_in_its_hub(session: requests.Session, answering: str) -> None:
    """A call whose read timed out closes its connection, and its socket is taken off the hub's selector first: a
    later call of the same hub whose new connection gets the same descriptor number (the lowest free one) waits
    on it as on any other (a descriptor left registered would fail that call: "already registered")."""
    from providers import hub

    outcomes: dict[str, Any] = {}
    with _silent() as url:

        def hangs() -> None:
            try:
                send(session, "p", "POST", url, json={}, timeout=(3, 0.2), policy=no_wait(1), allow_redirects=False)
            except Exception as exc:
                outcomes["hangs"] = exc

        def later() -> None:
            hub.sleep(0.5)  # after the first call has timed out and closed its connection
            try:
                answer = send(session, "p", "POST", answering + "/check", json={}, policy=no_wait(1),
                              allow_redirects=False)  # fmt: skip
                outcomes["later"] = answer.json()
            except Exception as exc:
                outcomes["later"] = exc

        _hub().run([hangs, later])
    assert isinstance(outcomes["hangs"], ProviderTransientError) and "timeout after" in str(outcomes["hangs"])
    assert outcomes["later"] == {"code": "00", "path": "/check"}
