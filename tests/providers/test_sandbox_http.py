"""The sandbox's HTTP layer over a real socket: it reads a request's headers and writes its answers
itself (``providers.sandbox.server``: email's parser and ``send_header`` were a quarter of its CPU under load),
by the rules of ``http.server`` it replaced."""

from __future__ import annotations

import email.utils
import json
import platform
import socket
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest

from providers.sandbox import SandboxServer


def _connect(server: SandboxServer) -> socket.socket:
    parts = urlsplit(server.url)
    return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=5)


def _answer(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """(status line, headers by lower-case name, body) of one answer, read by its Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return status, headers, rest[:length]


def _until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False


HEALTH = b"GET /_sandbox/health HTTP/1.1\r\nHost: sandbox\r\n"


def test_an_answer_s_head_is_the_one_http_server_wrote(sandbox_server: SandboxServer) -> None:
    """Status line, Server, Date (now, RFC 1123 in GMT), Content-Type, Content-Length: in that order, nothing else."""
    with _connect(sandbox_server) as sock:
        for _ in range(2):  # the Date of the second answer too (it is kept for a second)
            sock.sendall(HEALTH + b"\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            date = lines[2].removeprefix("Date: ")
            assert lines == [
                "HTTP/1.1 200 OK",
                f"Server: payrecon-sandbox/0.1 Python/{platform.python_version()}",
                f"Date: {date}",
                "Content-Type: application/json",
                f"Content-Length: {len(body)}",
            ]
            assert date.endswith(" GMT")
            assert abs((email.utils.parsedate_to_datetime(date) - datetime.now(UTC)).total_seconds()) < 5
            assert json.loads(body)["status"] == "ok"


def test_a_head_request_gets_a_head_and_http_0_9_a_body(sandbox_server: SandboxServer) -> None:
    """HEAD: the head of the answer, no body, the connection kept for the next request; a request line without a
    version (HTTP/0.9): the body alone, then the connection closes."""
    with _connect(sandbox_server) as sock:
        sock.sendall(b"HEAD /_sandbox/health HTTP/1.1\r\nHost: sandbox\r\n\r\n")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
        assert b"\r\nContent-Length: 0\r\n" not in head
        sock.sendall(HEALTH + b"\r\n")  # had a body followed the head, it would be read as this answer
        status, _, body = _answer(sock)
        assert (status, json.loads(body)["status"]) == ("HTTP/1.1 200 OK", "ok")
    with _connect(sandbox_server) as sock:
        sock.sendall(b"GET /_sandbox/health\r\n\r\n")  # (http.server reads headers after it all the same)
        assert json.loads(_until_closed(sock))["status"] == "ok"


@pytest.mark.parametrize(
    "extra",
    [
        b"X-Note: a\r\n b\r\n",  # a continuation line: part of X-Note's value
        b"X-Note: a\r",  # a CR alone ends a header line, as for email's parser
        b"x-note: a\r\nX-NOTE: b\r\n",  # the same name twice
    ],
)
def test_header_lines_are_split_and_continued_as_email_s_parser_did(
    sandbox_server: SandboxServer, extra: bytes
) -> None:
    """Whatever precedes it, Content-Length frames the body, and the next request on the connection is read whole."""
    body = json.dumps({"apikey": "wrong", "site_id": "1", "transaction_id": "T1"}).encode()
    with _connect(sandbox_server) as sock:
        sock.sendall(
            b"POST /v2/payment/check HTTP/1.1\r\nHost: sandbox\r\nContent-Type: application/json\r\n" + extra
            + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )  # fmt: skip
        status, _, answer = _answer(sock)
        assert (status, json.loads(answer)["code"]) == ("HTTP/1.1 200 OK", "609")
        sock.sendall(HEALTH + b"\r\n")
        assert _answer(sock)[0] == "HTTP/1.1 200 OK"


def test_header_names_in_any_case_and_keep_alive_by_default(sandbox_server: SandboxServer) -> None:
    """``content-length`` in lower case frames the body; HTTP/1.1 keeps the connection for the next request."""
    body = json.dumps({"apikey": "wrong", "site_id": "1", "transaction_id": "T1"}).encode()
    request = (
        b"POST /v2/payment/check HTTP/1.1\r\nHost: sandbox\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    with _connect(sandbox_server) as sock:
        for _ in range(2):
            sock.sendall(request)
            status, _, answer = _answer(sock)
            assert status == "HTTP/1.1 200 OK"
            assert json.loads(answer)["code"] == "609"  # the body was read: the apikey was checked


@pytest.mark.parametrize(
    ("request_", "closes"),
    [
        (HEALTH + b"Connection: close\r\n\r\n", True),
        (b"GET /_sandbox/health HTTP/1.0\r\n\r\n", True),
        (b"GET /_sandbox/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", False),
        (HEALTH + b"Connection: Keep-Alive\r\n\r\n", False),
    ],
)
def test_the_connection_header_and_the_version_decide_the_close(
    sandbox_server: SandboxServer, request_: bytes, closes: bool
) -> None:
    with _connect(sandbox_server) as sock:
        sock.sendall(request_)
        status, _, _ = _answer(sock)
        assert status.endswith("200 OK")
        sock.settimeout(0.3)
        assert _closed(sock) is closes


def test_expect_100_continue_is_answered_before_the_body(sandbox_server: SandboxServer) -> None:
    body = b'{"apikey": "x"}'
    with _connect(sandbox_server) as sock:
        sock.sendall(
            b"POST /v2/payment/check HTTP/1.1\r\nHost: sandbox\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        interim = b"HTTP/1.1 100 Continue\r\n\r\n"
        got = b""
        while len(got) < len(interim):
            got += sock.recv(len(interim) - len(got))
        assert got == interim
        sock.sendall(body)
        status, _, _ = _answer(sock)
    assert status == "HTTP/1.1 200 OK"


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (HEALTH + b"X-Long: " + b"a" * 70_000 + b"\r\n\r\n", b"HTTP/1.1 431 Line too long"),
        (HEALTH + b"".join(b"X-H%d: v\r\n" % n for n in range(101)) + b"\r\n", b"HTTP/1.1 431 Too many headers"),
        (HEALTH + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"HTTP/1.1 411 Length Required"),
        # A version it cannot read: the request is taken for HTTP/0.9, whose answers have no head.
        (b"GET /_sandbox/health HTTP/x.y\r\n\r\n", b"<!DOCTYPE HTML>"),
        (b"GET /_sandbox/health HTTP/1.1 extra\r\n\r\n", b"<!DOCTYPE HTML>"),
        (b"GET /_sandbox/health HTTP/2.0\r\n\r\n", b"<!DOCTYPE HTML>"),
        (b"GET /_sandbox/health HTTP/02.0\r\n\r\n", b"<!DOCTYPE HTML>"),
    ],
)
def test_bad_requests_get_the_answers_http_server_gave(
    sandbox_server: SandboxServer, request_: bytes, status: bytes
) -> None:
    """Each answered and the connection closed: header lines too long or too many (431), a chunked body (411),
    a request line whose version cannot be read (400, or 505 for HTTP/2)."""
    with _connect(sandbox_server) as sock:
        sock.sendall(request_)
        answer = _until_closed(sock)
    assert answer.startswith(status), answer[:200]
    if b"2.0" in request_:  # the version as the request wrote it
        assert b"Invalid HTTP version (" + request_.split(b"/")[-1].split(b"\r")[0] + b")" in answer
    elif status.startswith(b"<"):
        assert b"Error code: 400" in answer
