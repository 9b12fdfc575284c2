"""``payrecon enqueue``: read the messages of a file, check every one of them, and only then send.

A file is one JSON object, a JSON array of objects, or JSON lines (one object a line; blank
lines are skipped). Every problem is reported as ``line N: field: message`` (``item N`` in an
array), without repeating the input, and nothing is sent unless the whole file is good: a file
whose second line is bad must not leave its first line on the queue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from schemas.messages import PaymentRegistration, WebhookEnvelope

MODELS: dict[str, type[BaseModel]] = {"webhook": WebhookEnvelope, "payment": PaymentRegistration}


@dataclass(frozen=True, slots=True)
class Message:
    """One message of the file and where it is (``line 3``, ``item 2``)."""

    where: str
    document: Any


class BadInput(Exception):
    """The file cannot be sent; ``problems`` are its lines, each ``where: field: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def read(text: str) -> list[Message]:
    """The messages of ``text``; :class:`BadInput` if it holds none or is not JSON."""
    if not text.strip():
        raise BadInput(["the input is empty: no message to send"])
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return _json_lines(text)
    if isinstance(parsed, list):
        if not parsed:
            raise BadInput(["the input is an empty JSON array: no message to send"])
        return [Message(f"item {number}", document) for number, document in enumerate(parsed, start=1)]
    lines = [number for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    return [Message(f"line {lines[0]}" if len(lines) == 1 else "the message", parsed)]


def _json_lines(text: str) -> list[Message]:
    messages: list[Message] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            messages.append(Message(f"line {number}", json.loads(line)))
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: not JSON: {exc.msg} (column {exc.colno})")
    if problems:
        raise BadInput(problems)
    return messages


def problems(kind: str, messages: list[Message]) -> dict[str, list[str]]:
    """The problems of each invalid message against the ``kind``'s schema, by where it is ({}: all valid)."""
    model = MODELS[kind]
    found: dict[str, list[str]] = {}
    for message in messages:
        if kind == "webhook" and _is_sandbox_answer(message.document):
            found[message.where] = [
                "this is the sandbox's notification answer, not an envelope: "
                'send its "envelope" field (e.g. jq -c .envelope)'
            ]
            continue
        try:
            model.model_validate(message.document)
        except ValidationError as exc:
            found[message.where] = describe(exc)
    return found


def describe(exc: ValidationError) -> list[str]:
    """``field: message`` for each error (``a.b`` for a nested field), never the input itself."""
    described = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        field = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        described.append(f"{field}: {message}" if field else message)
    return described


def _is_sandbox_answer(document: Any) -> bool:
    return isinstance(document, dict) and "envelope" in document and "schema" not in document
