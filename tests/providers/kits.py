"""What the conformance suite needs to know about one provider: a *kit*.

Each provider module ``tests/providers/kit_<provider>.py`` exports ``KIT``; the suite in
``test_conformance.py`` runs the same checks against every kit, over real HTTP against
the sandbox started by ``conftest.py`` (default sandbox credentials of each provider).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from providers.base import ProviderClient, RegistrationView
from providers.sandbox import SandboxClient


@dataclass(frozen=True)
class Kit:
    name: str
    #: Can an authentic callback be told from a forged one? (False for MTN MoMo: it signs nothing.)
    signed: bool
    #: ``make_client(sandbox_url, **overrides)``: a client on the sandbox with the sandbox's default
    #: credentials, ``wait=wait_none()`` (no sleeping between retries), ``timeout=(1.0, 3.0)``;
    #: overrides replace constructor arguments (e.g. ``timeout``, ``max_attempts``).
    make_client: Callable[..., ProviderClient]
    #: Constructor overrides that make the provider refuse our credentials (→ ProviderAuthError).
    bad_credentials: dict[str, Any]
    #: ``create(sandbox, reference, amount, currency, fate, **options)`` scripts a transaction in the
    #: sandbox (fate: accepted | refused | waiting | waiting_then_accepted; options: confirm_amount,
    #: confirm_currency, faults) and returns the RegistrationView the merchant would have registered
    #: (with its provider_data: Orange pay_token/notif_token, Wave session id...).
    create: Callable[..., RegistrationView]
    #: ``notify(sandbox, view, forged=False)``: a webhook envelope dict for the transaction.
    notify: Callable[..., dict[str, Any]]
    #: ``status_path(view)``: the wire path of the status call, for injecting global faults.
    status_path: Callable[[RegistrationView], str]
    #: ``new_reference()``: a fresh merchant reference in the provider's format.
    new_reference: Callable[[], str]
    #: Currency the sandbox settles in by default.
    currency: str = "XOF"
    #: Extra checks specific to the provider: ``(name, fn(sandbox, sandbox_url))``.
    extra: list[tuple[str, Callable[[SandboxClient, str], None]]] = field(default_factory=list)
