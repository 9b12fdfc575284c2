"""HTTP plumbing shared by every provider client: session, status mapping, retries, JSON bodies.

Three rules live here and nowhere else:

* every request has an explicit ``(connect, read)`` timeout;
* an HTTP status becomes a ``ProviderError`` subclass in :func:`raise_for_status` only;
* retries are ours (tenacity), never urllib3's, and only for failures that may heal by
  themselves: timeouts, connection errors, 5xx and 429.
"""

from __future__ import annotations

import http.client
import io
import os
import re
import select
import socket
import ssl
import sys
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, cast
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import DEFAULT_CA_BUNDLE_PATH, get_encoding_from_headers, guess_json_utf, select_proxy
from tenacity import (
    DoAttempt,
    DoSleep,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from providers import hub as call_hub
from providers.base import (
    JsonTooDeep,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderNotFound,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderTransientError,
    ProviderUnreadableAnswer,
    load_json,
)

#: Headers providers (or their CDN) use to identify one request in their logs.
REQUEST_ID_HEADERS = (
    "X-Request-Id",
    "X-Correlation-Id",
    "Request-Id",
    "X-Amzn-RequestId",
    "X-Amz-Cf-Id",
    "CF-Ray",
)

BODY_EXCERPT_CHARS = 200
DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 10.0)

#: Signature of the hook that pulls a provider code out of an error body.
CodeExtractor = Callable[[requests.Response], str | None]


class RateLimited(ProviderRateLimited):
    """A ``ProviderRateLimited`` that also carries the server's ``Retry-After``, in seconds.

    Lives here rather than in ``providers.base`` because only the retry loop needs it;
    callers may keep catching ``ProviderRateLimited``.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ProviderSession(requests.Session):
    """A ``requests.Session`` whose provider calls skip what they never use, at under half the CPU.

    ``Session.request`` reads the environment (proxy variables, ``~/.netrc``, CA bundle variables) on
    every request and runs the cookie jar, the hooks and the redirect machinery, and its adapter goes
    through urllib3's pool manager, connection pool and response objects; a worker settling a batch
    makes hundreds of calls a second, and that was most of a call's CPU. Here the environment is read
    once per scheme and host, as requests would read it (proxies and CA bundle; not ``~/.netrc``, whose
    credentials would replace a provider's own ``Authorization``), the request is prepared as requests
    prepares it (method, URL and params, the session's headers with the call's own, body: the same
    bytes), and sent on a keep-alive ``http.client`` connection of the session's own pool (TLS verified
    with requests' CA bundle or the one configured; the connect and read timeouts; a pooled connection
    the server closed meanwhile is not used), written and read by :func:`_exchange` (http.client's bytes
    and rules at a third of its CPU, head and body in one write). The answer is a ``requests.Response``
    (status, reason, headers, body decoded from gzip/deflate as urllib3 does, never more than ``MAX_BODY``
    either way); a failure is the exception requests would raise (``ConnectTimeout``, ``ReadTimeout``,
    ``ConnectionError``, ``SSLError``, ``ContentDecodingError``). A call through a proxy or with a client
    certificate, through an adapter mounted by the caller, or asking for anything
    else (cookies, auth, files, a body to stream, redirects...) takes requests' own path.
    """

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple[str, str], dict[str, Any]] = {}
        self._idle: dict[tuple[str, str, int, Any], list[http.client.HTTPConnection]] = {}
        self._idle_lock = threading.Lock()
        self._tls: dict[Any, ssl.SSLContext] = {}
        self._heads: dict[Any, tuple[str | None, str | None, CaseInsensitiveDict[Any]]] = {}

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        if (
            args
            or kwargs.get("allow_redirects", True)
            or not _LEAN.issuperset(kwargs)
            or not isinstance(method, str)
            or not isinstance(url, str)
            or _has_cookies(self.cookies)
            or self.auth is not None
            or any(self.hooks.values())
        ):  # in a hub (``providers.hub``), on one of its threads: requests' path blocks
            return call_hub.offload(lambda: requests.Session.request(self, method, url, *args, **kwargs))
        prepared = requests.PreparedRequest()
        prepared.method, prepared.url, headers = self._head(method, url, kwargs.get("params"), kwargs.get("headers"))
        prepared.headers = headers.copy()
        prepared.prepare_body(kwargs.get("data"), None, kwargs.get("json"))
        prepared.prepare_hooks({})
        assert prepared.url is not None  # noqa: S101 - prepare_url set it
        adapter = self.get_adapter(prepared.url)
        settings = self._settings(prepared.url)
        timeout = kwargs.get("timeout")
        proxy = select_proxy(prepared.url, settings["proxies"])
        streamed = not (prepared.body is None or isinstance(prepared.body, bytes | str))  # an iterator, a file
        if type(adapter) is HTTPAdapter and settings["cert"] is None and not proxy and not streamed:
            return self._send_direct(prepared, adapter, timeout, settings["verify"])
        return call_hub.offload(lambda: _adapter_send(adapter, prepared, timeout, settings))

    def _head(
        self, method: str, url: str, params: Any, call_headers: Mapping[str, Any] | None
    ) -> tuple[str | None, str | None, CaseInsensitiveDict[Any]]:
        """Method, URL and headers as requests prepares them (the session's headers with the call's own; None
        removes one), kept for the next call with the same method, URL, session headers and call headers (a
        provider's status check: only its body changes) instead of prepared again (about 0.04 ms a call)."""
        key: Any = None
        if params is None:  # a call with parameters: prepared each time
            try:
                key = (method, url, tuple(self.headers.items()), tuple((call_headers or {}).items()))
                hash(key)
            except TypeError:  # a header value that cannot be a key: prepared each time
                key = None
        head = self._heads.get(key) if key is not None else None
        if head is None:
            prepared = requests.PreparedRequest()
            prepared.prepare_method(method)
            prepared.prepare_url(url, params)
            headers = CaseInsensitiveDict(self.headers)
            for name, value in (call_headers or {}).items():
                if value is None:  # as requests: None removes a session header
                    headers.pop(name, None)
                else:
                    headers[name] = value
            prepared.prepare_headers(headers)
            head = (prepared.method, prepared.url, prepared.headers)
            if key is not None:
                if len(self._heads) >= HEADS_KEPT:  # a caller's headers change (a token): start afresh
                    self._heads = {}
                self._heads[key] = head
        return head

    def _settings(self, url: str) -> dict[str, Any]:
        """Proxies, TLS verification and client certificate for ``url``'s scheme and host, read from
        the environment and the session once (``Session.merge_environment_settings``)."""
        scheme, _, rest = url.partition("://")
        key = (scheme.lower(), rest.split("/", 1)[0].split("?", 1)[0].lower())
        settings = self._environment.get(key)
        if settings is None:
            merged = self.merge_environment_settings(url, {}, None, None, None)
            settings = {name: merged[name] for name in ("proxies", "verify", "cert")}
            self._environment[key] = settings
        return settings

    def _send_direct(
        self, prepared: requests.PreparedRequest, adapter: HTTPAdapter, timeout: Any, verify: Any
    ) -> requests.Response:
        """``prepared`` on a pooled keep-alive connection; the answer read whole. In a hub (``providers.hub``) the
        exchange waits by switching to the hub, and a new connection is opened on one of its threads."""
        assert prepared.url is not None and prepared.method is not None  # noqa: S101 - prepared above
        parts = urlsplit(prepared.url)
        scheme, host = parts.scheme.lower(), parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        key = (scheme, host, port, verify if scheme == "https" else None)
        together = call_hub.current() is not None
        conn = self._take(key) or call_hub.offload(
            lambda: self._connect(key, connect, prepared), http.client.HTTPConnection.close
        )
        try:
            assert conn.sock is not None  # noqa: S101 - connected
            conn.sock.settimeout(0.0 if together else read)
            body = prepared.body.encode("utf-8") if isinstance(prepared.body, str) else prepared.body  # as urllib3
            if "Accept-Encoding" in prepared.headers:  # the request as sent, in response.request too
                prepared.headers["Accept-Encoding"] = _decodable(prepared.headers["Accept-Encoding"])
            answer = _exchange(
                conn, prepared.method, prepared.path_url, prepared.headers, body, within=read, together=together
            )
            content = answer.content
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _as_requests_error(exc, prepared, requests.exceptions.ReadTimeout) from exc
        except BaseException:  # anything else mid-exchange (a header requests lets through, a time limit): never pooled
            conn.close()
            raise
        merged: dict[str, tuple[str, str]] = {}  # a header given twice is one, joined (as urllib3 does)
        for name, value in answer.getheaders():
            first = merged.get(name.lower())
            merged[name.lower()] = (first[0], f"{first[1]}, {value}") if first else (name, value)
        response = requests.Response()
        response.status_code = answer.status
        response.reason = answer.reason
        response.headers = CaseInsensitiveDict(dict(merged.values()))
        response.encoding = get_encoding_from_headers(response.headers)
        try:
            response._content = _decoded(content, response.headers.get("Content-Encoding"))
        except requests.exceptions.ContentDecodingError:
            conn.close()
            raise
        response.url = prepared.url
        response.request = prepared
        response.connection = adapter
        if answer.will_close:
            conn.close()
        else:
            self._give_back(key, conn)
        return response

    def _connect(
        self, key: tuple[str, str, int, Any], timeout: Any, prepared: requests.PreparedRequest
    ) -> http.client.HTTPConnection:
        scheme, host, port, verify = key
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._tls_context(verify))
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise _as_requests_error(exc, prepared, requests.exceptions.ConnectTimeout) from exc
        return conn

    def _tls_context(self, verify: Any) -> ssl.SSLContext:
        """TLS as requests configures urllib3: its CA bundle (``verify=True``), the bundle or directory
        ``verify`` names, or no verification (``verify=False``)."""
        context = self._tls.get(verify)
        if context is None:
            if verify is False:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            elif verify is True:
                context = ssl.create_default_context(cafile=DEFAULT_CA_BUNDLE_PATH)
            elif os.path.isdir(verify):
                context = ssl.create_default_context(capath=verify)
            else:
                context = ssl.create_default_context(cafile=verify)
            self._tls[verify] = context
        return context

    def _take(self, key: tuple[str, str, int, Any]) -> http.client.HTTPConnection | None:
        """An idle connection to ``key``'s host the server has not closed meanwhile, or None."""
        while True:
            with self._idle_lock:
                idle = self._idle.get(key)
                conn = idle.pop() if idle else None
            if conn is None:
                return None
            sock = conn.sock
            # Readable while idle: the server closed it (or sent something unasked): not reusable. (poll,
            # as urllib3 does, not select: a busy worker's descriptors may pass select's 1024.)
            if sock is not None and not _readable(sock):
                return conn
            conn.close()

    def _give_back(self, key: tuple[str, str, int, Any], conn: http.client.HTTPConnection) -> None:
        with self._idle_lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < POOL_MAXSIZE:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        super().close()
        with self._idle_lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()


# --------------------------------------------------------------------------- one exchange on a connection

#: As http.client: the longest status, header or chunk-size line, and the most header lines, of an answer.
_MAXLINE = 65536
_MAXHEADERS = 100
#: A character no request line may hold (http.client's own check: no request smuggling through the path).
_BAD_REQUEST_CHARS = re.compile("[\x00-\x20\x7f]")
#: A line email's parser (behind http.client's headers) takes as a header line; the first other line ends them.
_HEADER_LINE = re.compile(r"^(From |[\041-\071\073-\176]*:|[\t ])")


@dataclass(slots=True)
class _Answer:
    """An answer read by :func:`_exchange`: what ``_send_direct`` uses of an ``http.client.HTTPResponse``."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    content: bytes
    will_close: bool

    def getheaders(self) -> list[tuple[str, str]]:
        return self.headers


def _exchange(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    headers: Mapping[str, Any],
    body: bytes | None,
    *,
    within: float | None = None,
    together: bool = False,
) -> _Answer:
    """Send a request on ``conn``'s socket and read its answer whole, as ``conn.request`` and
    ``conn.getresponse().read()`` would, at a third of their CPU (measured: 0.04 against 0.13 ms an
    exchange on a keep-alive connection): the same bytes on the wire (request line, ``Host`` and
    ``Accept-Encoding: identity`` where the headers have none, the headers in their order, the body; in one
    write where http.client makes two), and the answer read by the same rules (a ``100 Continue`` skipped;
    the body by ``Content-Length``, chunked, or up to the close; no body for 1xx, 204 and 304 or a HEAD;
    headers as email's parser gives them to http.client) with the same exceptions (``BadStatusLine``,
    ``RemoteDisconnected``, ``LineTooLong``, ``IncompleteRead``...). ``within`` (seconds): the answer must be
    read whole within that time of the request's sending, else ``TimeoutError``, however steadily it trickles
    in (the socket's own timeout bounds each read only, as http.client's and requests' do). ``together``: in a
    hub (``providers.hub``), on a non-blocking socket, each wait a switch to the hub, ``within`` bounding the
    whole write as the socket's timeout bounds ``sendall``."""
    sock = conn.sock
    assert sock is not None  # noqa: S101 - connected
    data = _request_head(conn, method, path, headers) + (body or b"")
    if together:
        _send_together(sock, data, within)
    else:
        sock.sendall(data)
    deadline = None if within is None else time.monotonic() + within
    return _read_answer(sock, method, deadline, together=together)


def _send_together(sock: Any, data: bytes, timeout: float | None) -> None:
    """``sock.sendall(data)`` on a non-blocking socket in a hub: all of it within ``timeout``, as the socket's
    timeout bounds the whole of ``sendall`` (Python 3.5+; for TLS, the one ``SSL_write`` of ``SSLSocket.sendall``)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
            continue
        except (BlockingIOError, ssl.SSLWantWriteError):
            events = call_hub.WRITE
        except ssl.SSLWantReadError:  # TLS may need to read before it writes
            events = call_hub.READ
        _wait_until(sock, events, deadline, "timed out")


def _wait_until(sock: Any, events: int, deadline: float | None, message: str) -> None:
    """In a hub: wait until ``sock`` is ready for ``events`` by ``deadline`` (None: no limit), else TimeoutError."""
    left = None if deadline is None else deadline - time.monotonic()
    if (left is not None and left <= 0) or not call_hub.wait(sock, events, left):
        raise TimeoutError(message)


def _request_head(conn: http.client.HTTPConnection, method: str, path: str, headers: Mapping[str, Any]) -> bytes:
    """The request line and headers as ``conn.request`` writes them, up to the blank line."""
    if _BAD_REQUEST_CHARS.search(method) or _BAD_REQUEST_CHARS.search(path):
        raise http.client.InvalidURL(f"URL can't contain control characters. {path!r}")
    names = {name.lower() for name in headers}
    lines = [f"{method} {path or '/'} HTTP/1.1".encode("ascii")]
    if "host" not in names:
        host = conn.host.encode("ascii") if conn.host.isascii() else conn.host.encode("idna")
        if b":" in host:
            host = b"[" + host.split(b"%", 1)[0] + b"]"
        lines.append(b"Host: " + (host if conn.port == conn.default_port else b"%s:%d" % (host, conn.port)))
    if "accept-encoding" not in names:
        lines.append(b"Accept-Encoding: identity")
    for name, value in headers.items():
        raw = value if isinstance(value, bytes) else str(value).encode("latin-1")
        lines.append(name.encode("ascii") + b": " + raw)
    lines += (b"", b"")
    return b"\r\n".join(lines)


class _Together(io.RawIOBase):
    """A non-blocking socket's reads in a hub (``providers.hub``): each wait a switch to the hub, until ``deadline``."""

    def __init__(self, sock: Any, deadline: float | None) -> None:
        self.sock, self.deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            try:
                return int(self.sock.recv_into(buffer))
            except (BlockingIOError, ssl.SSLWantReadError):
                events = call_hub.READ
            except ssl.SSLWantWriteError:  # TLS may need to write before it reads
                events = call_hub.WRITE
            _wait_until(self.sock, events, self.deadline, "the answer was not read whole within the read timeout")


class _UntilDeadline(io.RawIOBase):
    """A socket read with what is left of a deadline as each read's timeout."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline, self.timeout = sock, deadline, sock.gettimeout()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left > 0:
            self.sock.settimeout(left if self.timeout is None else min(left, self.timeout))
            return self.sock.recv_into(buffer)
        self.sock.settimeout(0.0)  # past the deadline: what has already arrived, but no more waiting
        try:
            return self.sock.recv_into(buffer)
        except (BlockingIOError, ssl.SSLWantReadError):
            raise TimeoutError("the answer was not read whole within the read timeout") from None


def _read_answer(sock: Any, method: str, deadline: float | None = None, *, together: bool = False) -> _Answer:
    """An answer read whole from ``sock`` (``HTTPResponse.begin`` and ``read``), by ``deadline`` if one is given;
    ``together``: in a hub (``_Together``)."""
    fp: Any
    if together:
        fp = io.BufferedReader(_Together(sock, deadline))
    elif deadline is None:
        fp = sock.makefile("rb")
    else:
        fp = io.BufferedReader(_UntilDeadline(sock, deadline))
    try:
        while True:
            version, status, reason = _status_line(fp)
            if status != 100:
                break
            header_lines(fp)  # 100 Continue: its headers are dropped, the answer follows
        if 100 <= status < 200:  # a 103 Early Hints taken for the answer would leave the real one on the connection
            raise http.client.HTTPException(f"an informational answer ({status}) where the answer was due")
        if version in ("HTTP/1.0", "HTTP/0.9"):
            number = 10
        elif version.startswith("HTTP/1."):
            number = 11
        else:
            raise http.client.UnknownProtocol(version)
        fields = header_fields(header_lines(fp))
        first: dict[str, str] = {}
        for name, value in fields:
            first.setdefault(name.lower(), value)
        connection = first.get("connection", "").lower()
        if number == 11:
            will_close = "close" in connection
        else:
            will_close = not (
                first.get("keep-alive")
                or "keep-alive" in connection
                or "keep-alive" in first.get("proxy-connection", "").lower()
            )
        chunked = first.get("transfer-encoding", "").lower() == "chunked"
        lengths = {value.strip() for name, value in fields if name.lower() == "content-length"}
        if len(lengths) > 1 and not chunked:  # which one frames the body? (urllib3 refuses them too)
            raise http.client.HTTPException(f"conflicting Content-Length headers: {', '.join(sorted(lengths))}")
        length: int | None = None
        if not chunked and first.get("content-length"):
            try:
                length = int(first["content-length"])
            except ValueError:
                length = None
            else:
                length = length if length >= 0 else None
        if status in (204, 304) or 100 <= status < 200 or method == "HEAD":
            length = 0
        if not will_close and not chunked and length is None:
            will_close = True
        content = b"" if method == "HEAD" or (length == 0 and not chunked) else _read_body(fp, chunked, length)
        return _Answer(status, reason, fields, content, will_close)
    finally:
        fp.close()


def _read_body(fp: Any, chunked: bool, length: int | None) -> bytes:
    """A body: chunked, of ``length`` bytes, or up to the close (``None``); never more than ``MAX_BODY``."""
    if chunked:
        return _read_chunked(fp)
    if length is None:
        content: bytes = fp.read(MAX_BODY + 1)
        if len(content) > MAX_BODY:
            raise http.client.HTTPException(f"an answer body of more than {MAX_BODY} bytes")
        return content
    if length > MAX_BODY:
        raise http.client.HTTPException(f"an answer body of {length} bytes: more than {MAX_BODY}")
    content = fp.read(length)
    if len(content) < length:
        raise http.client.IncompleteRead(content, length - len(content))
    return content


def _status_line(fp: Any) -> tuple[str, int, str]:
    line = str(fp.readline(_MAXLINE + 1), "iso-8859-1")
    if len(line) > _MAXLINE:
        raise http.client.LineTooLong("status line")
    if not line:
        raise http.client.RemoteDisconnected("Remote end closed connection without response")
    parts = line.split(None, 2)
    version = parts[0] if parts else ""
    if len(parts) < 2 or not version.startswith("HTTP/"):
        raise http.client.BadStatusLine(line)
    try:
        status = int(parts[1])
    except ValueError:
        raise http.client.BadStatusLine(line) from None
    if not 100 <= status <= 999:
        raise http.client.BadStatusLine(line)
    return version, status, (parts[2] if len(parts) > 2 else "").strip()


def header_lines(fp: Any) -> list[str]:
    """The header lines up to the blank line (http.client's ``_read_headers``), decoded as it does: an answer's
    here, a request's in the sandbox (``providers.sandbox.server``)."""
    lines: list[str] = []
    while True:
        line = fp.readline(_MAXLINE + 1)
        if len(line) > _MAXLINE:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n", b""):
            return lines
        lines.append(line.decode("iso-8859-1"))
        if len(lines) >= _MAXHEADERS:
            raise http.client.HTTPException(f"got more than {_MAXHEADERS} headers")


def header_fields(lines: list[str]) -> list[tuple[str, str]]:
    """``(name, value)`` of each header, as ``HTTPResponse.getheaders()`` gives them (email's compat32
    parsing: a continuation line kept in the value, the first line that is not a header ends them)."""
    joined = "".join(lines)
    if joined.count("\r") != joined.count("\r\n"):  # a CR alone ends a line too, for email's parser
        lines = io.StringIO(joined, newline="").readlines()
    fields: list[tuple[str, str]] = []
    current: list[str] = []

    def close() -> None:
        if current:
            name, value = current[0].split(":", 1)
            fields.append((name, (value.lstrip(" \t") + "".join(current[1:])).rstrip("\r\n")))

    for line in lines:
        if not _HEADER_LINE.match(line):
            break
        if line[0] in " \t":
            if current:
                current.append(line)
            continue
        close()
        current = []
        if line.startswith("From ") or line.find(":") <= 0:
            continue
        current = [line]
    close()
    return fields


def _read_chunked(fp: Any) -> bytes:
    """A chunked body (http.client's ``_read_chunked``): the chunks joined, the trailer read and dropped; cut
    short or unreadable, ``IncompleteRead`` with the chunks read whole."""
    chunks = bytearray()  # not a list of them: a million one-byte chunks would cost 40 times their size
    while True:
        line = fp.readline(_MAXLINE + 1)
        if len(line) > _MAXLINE:
            raise http.client.LineTooLong("chunk size")
        try:
            size = int(line.split(b";", 1)[0], 16)
        except ValueError:
            raise http.client.IncompleteRead(bytes(chunks)) from None
        if size == 0:
            break
        if size < 0:  # read(-n) would read to the end
            raise http.client.IncompleteRead(bytes(chunks))
        if len(chunks) + size > MAX_BODY:
            raise http.client.HTTPException(f"a chunked answer body of more than {MAX_BODY} bytes")
        chunk = fp.read(size)
        if len(chunk) < size:
            raise http.client.IncompleteRead(bytes(chunks))
        chunks += chunk
        if len(fp.read(2)) < 2:  # the chunk's CRLF
            raise http.client.IncompleteRead(bytes(chunks))
    while True:  # the trailer
        line = fp.readline(_MAXLINE + 1)
        if len(line) > _MAXLINE:
            raise http.client.LineTooLong("trailer line")
        if line in (b"\r\n", b"\n", b""):
            return bytes(chunks)


def _has_cookies(jar: Any) -> bool:
    """``bool(jar)``, without walking a ``CookieJar`` that holds nothing at all (never a cookie, or cleared whole:
    its ``len`` iterates every cookie under a lock, a twentieth of a status check's CPU for an empty jar). A jar
    emptied otherwise (a domain cleared, a cookie deleted or expired) keeps its empty dicts and is walked."""
    held = getattr(jar, "_cookies", None)
    if isinstance(held, dict) and not held:
        return False
    return bool(jar)


def _adapter_send(
    adapter: requests.adapters.BaseAdapter, prepared: requests.PreparedRequest, timeout: Any, settings: dict[str, Any]
) -> requests.Response:
    response = adapter.send(prepared, timeout=timeout, **settings)
    response.content  # noqa: B018 - read the body: the connection goes back to the pool
    return response


def _readable(sock: Any) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _as_requests_error(
    exc: Exception, prepared: requests.PreparedRequest, timed_out: type[requests.exceptions.Timeout]
) -> requests.exceptions.RequestException:
    """The exception requests would raise for ``exc``: ``timed_out`` (connecting or reading), ``SSLError``, or
    ``ConnectionError`` for anything else on the wire."""
    if isinstance(exc, TimeoutError):
        return timed_out(exc, request=prepared)
    if isinstance(exc, ssl.SSLError):
        return requests.exceptions.SSLError(exc, request=prepared)
    return requests.exceptions.ConnectionError(exc, request=prepared)


#: The largest answer body read whole (a status check's is a few hundred bytes).
MAX_BODY = 64 << 20


def _decodable(accepted: str) -> str:
    """``Accept-Encoding`` without the codings ``_decoded`` cannot read (requests asks for br or zstd too
    where their libraries are installed, which urllib3 would decode and this path would not)."""
    kept = [
        part.strip()
        for part in accepted.split(",")
        if part.split(";")[0].strip().lower() in ("gzip", "x-gzip", "deflate", "identity")
    ]
    return ", ".join(kept) or "identity"


def _decoded(body: bytes, encoding: str | None) -> bytes:
    """The body without its ``Content-Encoding`` (gzip or deflate), never more than ``MAX_BODY`` decoded."""
    coding = (encoding or "").strip().lower()
    if not body or coding not in ("gzip", "x-gzip", "deflate"):
        return body
    try:
        if coding == "deflate":
            try:
                return _inflate(body, zlib.MAX_WBITS)
            except zlib.error:  # raw deflate, without the zlib header (as urllib3 accepts)
                return _inflate(body, -zlib.MAX_WBITS)
        return _inflate(body, 16 + zlib.MAX_WBITS)
    except zlib.error as exc:
        raise requests.exceptions.ContentDecodingError(exc) from exc


def _inflate(data: bytes, wbits: int) -> bytes:
    out = bytearray()
    while data:  # gzip: one member after another, as urllib3
        inflater = zlib.decompressobj(wbits)
        out += inflater.decompress(data, MAX_BODY + 1 - len(out))  # >= 1: never "unlimited"
        if len(out) > MAX_BODY or inflater.unconsumed_tail:
            raise requests.exceptions.ContentDecodingError(f"an answer body decoding to more than {MAX_BODY} bytes")
        if not inflater.eof:
            raise zlib.error("incomplete or truncated stream")
        data = inflater.unused_data if wbits == 16 + zlib.MAX_WBITS else b""
    return bytes(out)


#: Keep-alive connections a ``ProviderSession`` keeps per host: one for each call a worker process has
#: in flight (worker.runtime.CALLS_IN_FLIGHT: a batch's calls are made in parallel).
POOL_MAXSIZE = 512


#: Requests (method, URL, headers) a ``ProviderSession`` keeps prepared: a provider client makes a handful
#: (more when a call's headers carry a token that changes: then they are all dropped when this is reached).
HEADS_KEPT = 64

#: The arguments of a call ``ProviderSession`` sends itself.
_LEAN = frozenset({"params", "data", "headers", "json", "timeout", "allow_redirects"})


def build_session(user_agent: str = "payrecon/0.1") -> requests.Session:
    """Return a pooled ``ProviderSession`` with retries disabled and a User-Agent set.

    CinetPay sits behind a bot filter that refuses requests without a User-Agent
    (error 1010), so the header is always set.
    """
    session = ProviderSession()
    # max_retries=0: urllib3 must not retry behind our back; send() owns the policy.
    # pool_maxsize: a keep-alive connection for each call a worker process has in flight
    # (worker.runtime.CALLS_IN_FLIGHT: a batch's calls are made in parallel).
    adapter = HTTPAdapter(pool_connections=8, pool_maxsize=POOL_MAXSIZE, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = user_agent
    session.headers["Accept"] = "application/json"
    return session


def _request_id(response: requests.Response) -> str | None:
    for name in REQUEST_ID_HEADERS:
        value = response.headers.get(name)
        if value:
            return value[:100]
    return None


def body_excerpt(text: str, limit: int = BODY_EXCERPT_CHARS, *, redact: Sequence[str] = ()) -> str:
    """Collapse whitespace, mask ``redact`` strings and truncate ``text`` for an error message."""
    flat = " ".join(text.split())
    for secret in redact:
        # A provider may echo the request (apikey included) in its error body.
        if secret:
            flat = flat.replace(secret, "***")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Parse a ``Retry-After`` header (delta-seconds or HTTP-date) into seconds, or None."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = (when - (now or datetime.now(UTC))).total_seconds()
    return max(delta, 0.0)


def raise_for_status(
    provider: str,
    response: requests.Response,
    *,
    code: str | None = None,
    request_id: str | None = None,
    redact: Sequence[str] = (),
) -> None:
    """Raise the ``ProviderError`` matching ``response``'s HTTP status; return if 1xx-3xx.

    429 → ``RateLimited`` (a ``ProviderRateLimited``), 5xx → ``ProviderTransientError``,
    401/403 → ``ProviderAuthError``, 404 → ``ProviderNotFound``, other 4xx →
    ``ProviderBadRequest``. ``code`` is the provider's own error code when the caller
    could read one from the body; ``redact`` lists secrets to mask in the body excerpt.
    """
    status = response.status_code
    if status < 400:
        return
    rid = request_id or _request_id(response)
    reason = response.reason or "error"
    message = f"HTTP {status} {reason}"
    excerpt = body_excerpt(response.text or "", redact=redact)
    if excerpt:
        message = f"{message}: {excerpt}"
    common: dict[str, Any] = {"provider": provider, "http_status": status, "code": code, "request_id": rid}
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise RateLimited(message, retry_after=retry_after, **common)
    if status >= 500:
        raise ProviderTransientError(message, **common)
    if status in (401, 403):
        raise ProviderAuthError(message, **common)
    if status == 404:
        raise ProviderNotFound(message, **common)
    raise ProviderBadRequest(message, **common)


@dataclass(frozen=True)
class RetryPolicy:
    """How :func:`send` retries. Tests swap ``wait`` (and ``sleep``) so nothing sleeps."""

    max_attempts: int = 3
    #: Overall budget in seconds, across attempts and waits.
    deadline: float = 20.0
    wait: wait_base = field(default_factory=lambda: wait_random_exponential(multiplier=0.5, max=5))
    #: Upper bound for a server-sent Retry-After; a provider asking for an hour is
    #: better served by the pipeline's own, later retry.
    retry_after_cap: float = 10.0
    #: ``time.sleep`` outside a hub; in one, a pause of the call alone (``providers.hub.sleep``).
    sleep: Callable[[float], None] = call_hub.sleep

    def _wait(self, state: RetryCallState) -> float:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            # The server told us when to come back: that beats our own guess.
            return min(exc.retry_after, self.retry_after_cap)
        return float(self.wait(state))

    def retrying(self) -> Retrying:
        """A tenacity ``Retrying`` for this policy (reraises the last ``ProviderError``)."""
        return Retrying(
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.deadline),
            wait=self._wait,
            retry=retry_if_exception_type(ProviderTransientError),
            sleep=self.sleep,
            reraise=True,
        )


DEFAULT_POLICY = RetryPolicy()


def retry_policy(max_attempts: int, deadline: float, wait: wait_base | None = None) -> RetryPolicy:
    """A ``RetryPolicy`` from a client's constructor arguments; ``wait`` replaces the jittered backoff."""
    policy = RetryPolicy(max_attempts=max_attempts, deadline=deadline)
    return policy if wait is None else replace(policy, wait=wait)


def _attempt(
    session: requests.Session,
    provider: str,
    method: str,
    url: str,
    *,
    timeout: tuple[float, float],
    error_code: CodeExtractor | None,
    redact: Sequence[str],
    kwargs: Mapping[str, Any],
) -> requests.Response:
    try:
        response = session.request(method, url, timeout=timeout, **kwargs)
    except requests.Timeout as exc:
        raise ProviderTransientError(f"timeout after {timeout} s", provider=provider) from exc
    except (
        requests.ConnectionError,
        requests.exceptions.ChunkedEncodingError,
        requests.exceptions.ContentDecodingError,  # a body cut or garbled on the way: the wire's, not ours
    ) as exc:
        # Never echo the exception text blindly: it may contain the full URL; the type is enough.
        raise ProviderTransientError(f"connection failed ({type(exc).__name__})", provider=provider) from exc
    except requests.RequestException as exc:
        # Invalid URL, bad schema, too many redirects: our configuration, not a passing glitch.
        raise ProviderBadRequest(f"request failed ({type(exc).__name__})", provider=provider) from exc
    if response.status_code >= 400:
        code = error_code(response) if error_code is not None else None
        raise_for_status(provider, response, code=code, redact=redact)
    return response


def send(
    session: requests.Session,
    provider: str,
    method: str,
    url: str,
    *,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    policy: RetryPolicy = DEFAULT_POLICY,
    error_code: CodeExtractor | None = None,
    redact: Sequence[str] = (),
    **kwargs: Any,
) -> requests.Response:
    """Send one request with ``policy``'s retries; return a response with status < 400.

    Timeouts, connection errors, 5xx and 429 are retried (honouring ``Retry-After``),
    everything else raises at once. The caller sees the last ``ProviderError``, never
    a tenacity ``RetryError``. ``error_code`` reads the provider's code from an error
    body; ``redact`` masks secrets in error messages. ``kwargs`` go to
    ``Session.request`` (``json``, ``data``, ``headers``...).
    """

    def attempt() -> requests.Response:
        return _attempt(
            session, provider, method, url, timeout=timeout, error_code=error_code, redact=redact, kwargs=kwargs
        )

    # The first attempt outside tenacity: most calls end with it, and a ``Retrying`` with its state costs
    # ~14 us of CPU a call (more in a worker, where the code runs cold after each wait). Only a transient
    # failure goes on to tenacity, which decides from there exactly as if it had made that attempt itself
    # (the same state: attempt 1 failed, started before it).
    started = time.monotonic()
    try:
        return attempt()
    except ProviderTransientError:
        failed = sys.exc_info()
    retrying = policy.retrying()
    retrying.begin()
    state = RetryCallState(retrying, fn=None, args=(), kwargs={})
    state.start_time = started
    state.set_exception(failed)  # type: ignore[arg-type]
    del failed
    while True:  # tenacity's own loop (``BaseRetrying.__iter__`` with its ``AttemptManager``)
        do = retrying.iter(retry_state=state)
        if isinstance(do, DoAttempt):
            try:
                response = attempt()
            except BaseException:  # as AttemptManager: the outcome decides (reraise=True raises the last)
                state.set_exception(sys.exc_info())  # type: ignore[arg-type]
            else:
                state.set_result(response)
        elif isinstance(do, DoSleep):
            state.prepare_for_next_attempt()
            retrying.sleep(do)
        else:
            return cast(requests.Response, do)


# --------------------------------------------------------------------------- JSON bodies


def json_body(response: requests.Response) -> dict[str, Any] | None:
    """``response``'s body if it is a JSON object, else None (for reading codes out of error bodies)."""
    content = response.content or b""
    try:
        # As requests' Response.json(): bytes without a declared charset are read as JSON's UTF-8/16/32.
        encoding = None if response.encoding else guess_json_utf(content)  # type: ignore[no-untyped-call]
        body = load_json(content.decode(encoding) if encoding else response.text)
    except ValueError:  # not JSON, not decodable, or nested too deeply
        return None
    return body if isinstance(body, dict) else None


def json_object(text: str, what: str, *, provider: str, http_status: int) -> dict[str, Any]:
    """Parse an answer that must be a JSON object; ``ProviderProtocolError`` naming ``what`` otherwise.

    JSON numbers with a fraction become ``Decimal``: an amount must never pass through float.
    """
    try:
        body = load_json(text)
    except JsonTooDeep as exc:
        raise ProviderProtocolError(f"{what} is {exc}", provider=provider, http_status=http_status) from None
    except ValueError:
        raise ProviderUnreadableAnswer(
            f"{what} is not JSON: {text[:80]!r}", provider=provider, http_status=http_status
        ) from None
    if not isinstance(body, dict):
        raise ProviderProtocolError(f"{what} is not a JSON object", provider=provider, http_status=http_status)
    return body


# --------------------------------------------------------------------------- clients


class HttpClient:
    """What every provider client shares: a pooled session (closed by ``close`` if it created it),
    an explicit timeout, a retry policy, and one way of sending requests.

    Subclasses set ``name`` (the provider) and pass their error-code reader.
    """

    name: str

    def __init__(
        self,
        error_code: CodeExtractor,
        session: requests.Session | None,
        timeout: tuple[float, float],
        policy: RetryPolicy,
    ) -> None:
        """``error_code`` reads the provider's code from an error body; ``session=None``: a new one."""
        self._error_code = error_code
        self._owns_session = session is None
        self._session = session if session is not None else build_session()
        self.timeout = timeout
        self.policy = policy

    def _send(self, method: str, url: str, *, redact: Sequence[str], **kwargs: Any) -> requests.Response:
        """:func:`send` with this client's session, timeout, policy and error codes; redirects are not
        followed (a redirected POST would become a GET elsewhere, a redirect could carry a key away)."""
        return send(
            self._session,
            self.name,
            method,
            url,
            timeout=self.timeout,
            policy=self.policy,
            error_code=self._error_code,
            redact=redact,
            allow_redirects=False,
            **kwargs,
        )

    def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owns_session:
            self._session.close()
