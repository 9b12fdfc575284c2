"""Delivery of outbox events to merchant apps: signed HTTP POSTs or Celery tasks, retried on a
schedule with jitter until delivered or given up (then dead-lettered). At least once: a
receiver deduplicates on the event id, which never changes between attempts.

HTTP deliveries are signed by the Standard Webhooks specification (https://www.standardwebhooks.com),
so a merchant app verifies them with the official library of its language::

    webhook-id: evt_...                        (the event id: the same on every attempt)
    webhook-timestamp: <unix seconds of this attempt>
    webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<raw body>")> [v1,<...> ...]

one ``v1,`` signature per configured secret, newest first (key rotation). An app still configured
with a plain secret (payrecon's form before Standard Webhooks) also gets the legacy headers
``PayRecon-Event-Id`` and ``PayRecon-Signature: t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``
during the transition; a ``whsec_`` secret ends them. The body is ``{"id", "type", "created_at",
"data": {...}}``. Redirects are not followed: a 3xx is a failed attempt, so the signed body never
goes to a URL the operator did not configure.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import requests

from reconciliation import outbox, retries
from reconciliation.db import transaction
from reconciliation.models import OutboxEvent
from worker.runtime import Runtime
from worker.settings import AppSettings, SigningKey

log = logging.getLogger(__name__)

TIMEOUT = (3.05, 10.0)


def body(event: OutboxEvent) -> str:
    return json.dumps(
        {"id": event.id, "type": event.type, "created_at": event.created_at.isoformat(), "data": event.payload},
        ensure_ascii=False,
        sort_keys=True,
    )


def standard_signature(keys: Sequence[SigningKey], event_id: str, timestamp: int, raw: str) -> str:
    """The ``webhook-signature`` header: ``v1,<base64>`` per key, space-separated, for ``raw`` (the
    exact body sent)."""
    signed = f"{event_id}.{timestamp}.{raw}".encode()
    return " ".join("v1," + base64.b64encode(hmac.new(k.key, signed, hashlib.sha256).digest()).decode() for k in keys)


def legacy_signature(key: bytes, timestamp: int, raw: str) -> str:
    """The deprecated ``PayRecon-Signature`` header: ``t=...,v1=<hex>`` for ``raw``."""
    mac = hmac.new(key, f"{timestamp}.{raw}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def headers(app: AppSettings, event_id: str, timestamp: int, raw: str) -> dict[str, str]:
    """The headers of one HTTP attempt."""
    sent = {
        "Content-Type": "application/json",
        "User-Agent": "payrecon-events/1",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard_signature(app.keys, event_id, timestamp, raw),
    }
    if not app.keys[0].standard:  # configured as before Standard Webhooks: what its receiver checks today
        sent["PayRecon-Event-Id"] = event_id
        sent["PayRecon-Signature"] = legacy_signature(app.keys[0].key, timestamp, raw)
    return sent


#: A URL, or a path as an HTTP library's message quotes it (``url: /hook?token=…``), with its query.
_QUERY = re.compile(r"(https?://[^\s'\"?#]*|/[^\s'\"?#]*)\?[^\s'\")#]+")


def scrubbed(message: str, url: str) -> str:
    """``message`` without ``url``'s query string, fragment or password (tokens some apps put there),
    in every form an HTTP library may quote it; and any other URL's or path's query masked too (a
    redirect's ``Location``)."""
    parts = urlsplit(url)
    for secret in (parts.query, parts.fragment, parts.password):
        if secret:
            for form in {secret, unquote(secret), quote(unquote(secret), safe="=&")}:
                if len(form) >= 3:  # a shorter one would mask ordinary text; the pattern below catches it
                    message = message.replace(form, "***")
    return _QUERY.sub(r"\1?***", message)


def fan_out(rt: Runtime, now: datetime) -> int:
    """A pending delivery per (recent event, interested app), created once."""
    with transaction(rt.sessions) as session:
        return outbox.fan_out(session, [(app.name, app.products) for app in rt.settings.apps], now)


def deliver_due(rt: Runtime, now: datetime, *, limit: int = 200) -> dict[str, int]:
    """Send what is due; returns counts by result (delivered, retry, failed)."""
    with transaction(rt.sessions) as session:
        due = outbox.lease_due(session, now, limit=limit)  # another worker does not take them meanwhile
    apps = {app.name: app for app in rt.settings.apps}
    results = {"delivered": 0, "retry": 0, "failed": 0}
    for delivery_id in due:
        results[_attempt(rt, delivery_id, apps, now)] += 1
    return results


def _attempt(rt: Runtime, delivery_id: int, apps: dict[str, AppSettings], now: datetime) -> str:
    with rt.sessions() as session:
        name, event = outbox.to_send(session, delivery_id)
        raw = body(event)
    app = apps.get(name)
    error = "app no longer configured" if app is None else send(rt, app, event, raw)  # no transaction held
    with transaction(rt.sessions) as session:
        return outbox.record_attempt(
            session, delivery_id, error, schedule=retries.event_delivery(rt.settings.event_retries), raw=raw, now=now
        )


def send(rt: Runtime, app: AppSettings, event: OutboxEvent, raw: str) -> str | None:
    """Deliver once; None on success, else why not."""
    if app.via_celery:
        queue, _, task = app.url.removeprefix("celery://").partition("/")
        from worker.app import app as celery_app

        try:
            # On this deployment's broker, explicitly: the app may have been imported with another.
            with celery_app.connection_for_write(rt.settings.broker_url) as conn:
                celery_app.send_task(
                    task or "payrecon_events.receive", kwargs={"event": json.loads(raw)}, queue=queue, connection=conn
                )
        except Exception as exc:
            return f"broker: {type(exc).__name__}: {exc}"
        return None
    assert app.keys  # noqa: S101 - settings refuse an HTTP app without a secret
    sent = headers(app, event.id, int(time.time()), raw)
    try:
        # Never follow a redirect: it would carry the signed body to a URL nobody configured.
        response = requests.post(app.url, data=raw.encode(), headers=sent, timeout=TIMEOUT, allow_redirects=False)
    except requests.RequestException as exc:
        return scrubbed(f"{type(exc).__name__}: {exc}", app.url)
    if 200 <= response.status_code < 300:
        return None
    if 300 <= response.status_code < 400:
        location = response.headers.get("Location", "(no Location)")
        location = location.split("?", 1)[0] + ("?***" if "?" in location else "")  # relative ones too
        return scrubbed(
            f"HTTP {response.status_code}: redirect to {location} not followed (the signed body goes only to "
            "the configured URL): set the app's URL to where it should be delivered",
            app.url,
        )
    return scrubbed(f"HTTP {response.status_code}: {response.text[:200]}", app.url)


def redeliver(rt: Runtime, *, event_ids: list[str] | None = None, failed: bool = False, now: datetime) -> int:
    """Send events again now (an operator's decision): given-up ones, or by id."""
    with transaction(rt.sessions) as session:
        return outbox.redeliver(session, event_ids=event_ids, failed=failed, now=now)


def listing(rt: Runtime, *, status: str | None, limit: int) -> list[dict[str, Any]]:
    with rt.sessions() as session:
        return outbox.listing(session, status=status, limit=limit)
