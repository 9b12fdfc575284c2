"""``payrecon receive``: the webhook receiver, a small ASGI app (Starlette, served by uvicorn).

It takes each provider's callback on its own path, wraps it untouched in a ``payrecon.webhook/1``
envelope, enqueues it as ``payrecon.ingest_webhook`` (the one producer of ``schemas/producer.py``)
and answers the provider at once. It knows nothing of the providers beyond their paths and
methods: authentication, parsing and verification are the worker's.

* ``/webhooks/<provider>`` and anything under it (``/webhooks/orange_money/notify/ORD-1?x=y``,
  ``/webhooks/mtn_momo/<X-Reference-Id>``): the envelope keeps the request's whole path (as sent,
  percent-encoding included) and its query, so the order id or reference a merchant put in its
  callback URL reaches the worker. Methods: CinetPay GET (its ping) and POST, MTN MoMo PUT and
  POST, Orange Money and Wave POST; anything else is 405, an unknown path 404.
* The body is kept byte for byte: decoded as UTF-8, any byte that is not UTF-8 as a lone surrogate
  (``surrogateescape``), so ``body.encode("utf-8", "surrogateescape")`` is exactly what came.
  Headers are kept all (``Host`` included), names as the HTTP server hands them (lower case),
  repeated ones joined with ``", "``.
* 200 ``{"status": "received"}`` once the message is on the broker, never before: a broker that
  cannot take it is a 503 (with ``Retry-After``), so the provider sends it again. A body over the
  cap is a 413 (nothing read past the cap). Nothing else is checked: what the envelope's schema
  refuses (a body that is not UTF-8, a path over 2,048 characters) is enqueued all the same and
  dead-lettered by the worker with its raw input, so it is kept.
* ``GET /healthz``: 200 when the broker answers a new connection now, else 503.
* One JSON log line per request (``PAYRECON_LOG_FORMAT=text`` for plain lines): provider, method,
  path, size, status, the enqueued message's id, duration. Never the body, the query string or a
  header value; the broker's password is masked; phone numbers keep their last two digits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from schemas.messages import WEBHOOK_SCHEMA
from schemas.producer import BrokerPublisher, mask_url

log = logging.getLogger("payrecon.receiver")

PREFIX: Final = "/webhooks"
#: The methods each provider calls back with (as each provider documents its callbacks): nothing else is taken.
METHODS: Final[dict[str, tuple[str, ...]]] = {
    "cinetpay": ("GET", "POST"),  # the form-encoded notification, and an empty GET "ping"
    "mtn_momo": ("POST", "PUT"),
    "orange_money": ("POST",),
    "wave": ("POST",),
}
DEFAULT_MAX_BODY: Final = 64 * 1024  # a provider's callback is a few KB
MAX_BODY_LIMIT: Final = 1_000_000  # the envelope's body holds at most this many characters
RETRY_AFTER: Final = "30"
#: A callback is answered within the providers' timeouts (MTN MoMo: 2 s): one quick retry, no more.
PUBLISH_RETRY: Final = {"max_retries": 1, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.2}


def envelope_of(
    provider: str, request: Request, body: bytes, *, received_at: datetime, receiver: str
) -> dict[str, Any]:
    """The ``payrecon.webhook/1`` envelope of a request, untouched (see the module's notes)."""
    scope = request.scope
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope["path"]
    query: dict[str, str | list[str]] = {}
    for name, value in parse_qsl(
        scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True, errors="surrogateescape"
    ):
        held = query.get(name)
        if held is None:
            query[name] = value
        elif isinstance(held, list):
            held.append(value)
        else:
            query[name] = [held, value]
    headers: dict[str, str] = {}
    for raw_name, raw_value in request.headers.raw:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return {
        "schema": WEBHOOK_SCHEMA,
        "provider": provider,
        "received_at": received_at.isoformat(timespec="milliseconds"),
        "method": request.method,
        "path": path,
        "query": query,
        "headers": headers,
        "body": body.decode("utf-8", "surrogateescape"),
        "source_ip": request.client.host if request.client else None,
        "receiver": receiver,
    }


def create_app(publisher: BrokerPublisher, *, receiver: str, max_body_bytes: int = DEFAULT_MAX_BODY) -> Starlette:
    """The receiver's ASGI app, enqueuing through ``publisher`` (closed when the app shuts down)."""

    def provider_endpoint(provider: str) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            return await receive(provider, request)

        return endpoint

    async def receive(provider: str, request: Request) -> Response:
        started = time.monotonic()
        received_at = datetime.now(UTC)
        if request.method not in METHODS[provider]:  # Starlette adds HEAD to a GET route: no provider sends it
            return Response(status_code=405, headers={"Allow": ", ".join(METHODS[provider])})
        facts: dict[str, Any] = {"provider": provider, "method": request.method, "path": request.url.path}

        def answer(status: int, document: dict[str, Any], message: str, **more: Any) -> Response:
            level = logging.INFO if status == 200 else logging.WARNING
            duration = round((time.monotonic() - started) * 1000, 1)
            line = f"{status} {request.method} {facts['path']}: {message}"
            log.log(level, line, extra={**facts, "http_status": status, "duration_ms": duration, **more})
            headers = {"Retry-After": RETRY_AFTER} if status == 503 else None
            return JSONResponse(document, status_code=status, headers=headers)

        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            return answer(413, _too_large(max_body_bytes), "refused: body too large", size=int(declared))
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                return answer(413, _too_large(max_body_bytes), "refused: body too large", size=len(body))
        facts["size"] = len(body)
        # Not validated here: what the schema refuses (a body that is not UTF-8, a path over 2,048
        # characters) is the worker's to dead-letter with its raw input, so that it is kept.
        envelope = envelope_of(provider, request, bytes(body), received_at=received_at, receiver=receiver)
        try:
            message_id = await run_in_threadpool(publisher.publish, envelope)
        except Exception as exc:
            return answer(
                503,
                {"error": "not accepted: the queue is unavailable; send it again later"},
                f"not enqueued: broker {publisher.safe_url} failed: {type(exc).__name__}: {exc}",
            )
        return answer(200, {"status": "received"}, "enqueued", message_id=message_id)

    async def healthz(request: Request) -> Response:
        try:
            await run_in_threadpool(publisher.check)
        except Exception as exc:
            detail = f"{publisher.safe_url} unreachable: {type(exc).__name__}"
            log.warning("health: broker %s", detail)
            return JSONResponse({"status": "unavailable", "broker": detail}, status_code=503)
        return JSONResponse({"status": "ok", "broker": f"reachable ({publisher.broker_url.split('://')[0]})"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        publisher.close()

    routes = [Route("/healthz", healthz, methods=["GET"])]
    for provider, methods in METHODS.items():
        endpoint = provider_endpoint(provider)
        routes.append(Route(f"{PREFIX}/{provider}", endpoint, methods=list(methods), name=provider))
        routes.append(Route(f"{PREFIX}/{provider}/{{rest:path}}", endpoint, methods=list(methods)))
    return Starlette(routes=routes, lifespan=lifespan)


def _too_large(limit: int) -> dict[str, str]:
    return {"error": f"body over {limit} bytes"}


def serve(
    broker_url: str,
    *,
    host: str,
    port: int,
    receiver: str,
    max_body_bytes: int,
    forwarded_allow_ips: str,
    log_format: str = "json",
) -> None:
    """Run the receiver in the foreground until SIGINT or SIGTERM (``payrecon receive``)."""
    import uvicorn

    from worker import logs

    password = urlsplit(broker_url).password
    logs.configure(logging.INFO, secrets=[password] if password else [], fmt=log_format)
    publisher = BrokerPublisher(broker_url, pool_limit=10, retry_policy=PUBLISH_RETRY, app_name="payrecon-receive")
    try:
        publisher.check()
        log.info("broker %s reachable", publisher.safe_url)
    except Exception as exc:
        # Not fatal: callbacks are answered 503 (the provider sends them again) until it answers.
        log.warning("broker %s unreachable: %s: callbacks get 503 until it answers", mask_url(broker_url), exc)
    log.info(
        "receiving %s on http://%s:%s%s/<provider> (max body %d bytes), as %r",
        ", ".join(METHODS),
        host,
        port,
        PREFIX,
        max_body_bytes,
        receiver,
    )
    uvicorn.run(
        create_app(publisher, receiver=receiver, max_body_bytes=max_body_bytes),
        host=host,
        port=port,
        log_config=None,  # our handler: one JSON line each, masked
        access_log=False,  # uvicorn's access line carries the query string (tokens): ours leaves it out
        proxy_headers=True,
        forwarded_allow_ips=forwarded_allow_ips,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
