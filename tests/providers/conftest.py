"""Fixtures for provider tests: one real sandbox server over HTTP, reset before each test."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The repo root must be importable however pytest is started (the package is not installed
# in the venv, and this directory has no __init__.py on purpose: "providers" would clash).
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from providers.cinetpay import CinetPayClient  # noqa: E402
from providers.sandbox import SandboxClient, SandboxServer  # noqa: E402
from tests.providers.support import Receiver, closing_factory, fast_options, fresh_sandbox, receiving  # noqa: E402

API_KEY = "test-api-key"
SITE_ID = "445160"
SECRET_KEY = "test-secret-key"


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    with SandboxServer(cinetpay_api_key=API_KEY, cinetpay_site_id=SITE_ID, cinetpay_secret_key=SECRET_KEY) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Iterator[SandboxClient]:
    yield from fresh_sandbox(sandbox_server)


@pytest.fixture
def make_client(sandbox_server: SandboxServer) -> Iterator[Any]:
    """Factory of CinetPayClients on the sandbox that never sleep between retries."""
    options = fast_options(sandbox_server.url) | {"api_key": API_KEY, "site_id": SITE_ID, "secret_key": SECRET_KEY}
    with closing_factory(lambda **overrides: CinetPayClient(**(options | overrides))) as make:
        yield make


@pytest.fixture
def cinetpay(make_client: Any) -> CinetPayClient:
    client: CinetPayClient = make_client()
    return client


@pytest.fixture
def txn_id() -> str:
    return f"order-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A merchant notify_url (GET and POST, answered 200) that records what it receives."""
    with receiving("/notify/cinetpay", ("GET", "POST")) as rec:
        yield rec
