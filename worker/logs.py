"""Structured JSON logs, with secrets and phone numbers masked.

Every line is one JSON object: ``ts``, ``level``, ``logger``, ``message`` and, when known,
``task_id``, ``task``, ``provider``, ``reference``, ``outcome`` (``payrecon receive``: ``method``, ``path``,
``size``, ``http_status``, ``message_id``, ``duration_ms``). Before a line is written, the
values of every configured secret (API keys, secret keys, tokens: whatever the settings hold)
are replaced by ``***``, and phone numbers (MSISDNs, 9 to 15 digits) keep only their last two
digits. ``PAYRECON_LOG_FORMAT=text`` gives plain lines, masked the same way.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

task_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("payrecon_task_id", default=None)
task_name: contextvars.ContextVar[str | None] = contextvars.ContextVar("payrecon_task_name", default=None)

#: A phone number: 9-15 digits, optionally with +, not part of a longer word or id.
MSISDN = re.compile(r"(?<![\w\-.])\+?\d{9,15}(?![\w\-])")
CONTEXT_FIELDS = ("provider", "reference", "outcome", "inbox_id", "payment_id")
#: ``payrecon receive``'s request fields (never a body, a query string or a header value).
REQUEST_FIELDS = ("method", "path", "size", "http_status", "message_id", "duration_ms")


def mask_msisdn(text: str) -> str:
    return MSISDN.sub(lambda m: "*" * (len(m.group()) - 2) + m.group()[-2:], text)


class Redactor:
    """Replaces known secret values and phone numbers in a line of text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is masked whole; short values are not
        # secrets worth masking (and would mangle ordinary words).
        self.secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return mask_msisdn(text)


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (tid := task_id.get()) is not None:
            entry["task_id"] = tid
            entry["task"] = task_name.get()
        for name in (*CONTEXT_FIELDS, *REQUEST_FIELDS):
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self.redact(json.dumps(entry, ensure_ascii=False, default=str))


class TextFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__("[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s")
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


def secrets_of(settings: Any) -> list[str]:
    """Every secret value in the settings (fields hidden from repr are the secret ones): text, keys
    given as bytes (as text and base64, the ``whsec_`` form), and a hidden URL's query string and
    password (an app's token, as an HTTP library's debug line quotes it)."""
    import base64
    from dataclasses import fields, is_dataclass
    from urllib.parse import unquote, urlsplit

    found: list[str] = []

    def hidden(value: Any) -> None:
        if isinstance(value, bytes):
            found.extend((base64.b64encode(value).decode(), base64.b64encode(value).decode().rstrip("=")))
            value = value.decode("utf-8", errors="ignore")
        if not isinstance(value, str):
            return
        found.append(value)
        if "://" in value:
            parts = urlsplit(value)
            found.extend(part for part in (parts.query, unquote(parts.query), parts.password) if part)

    def walk(obj: Any) -> None:
        if not is_dataclass(obj):
            return
        for f in fields(obj):
            value = getattr(obj, f.name)
            for item in value if isinstance(value, tuple) else (value,):
                if is_dataclass(item):
                    walk(item)
                elif not f.repr:
                    hidden(item)

    walk(settings)
    return found


def configure(level: int | str = logging.INFO, *, secrets: Iterable[str] = (), fmt: str = "json") -> None:
    """Send every log line of this process to stderr, structured and masked."""
    redact = Redactor(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(redact) if fmt == "json" else TextFormatter(redact))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
