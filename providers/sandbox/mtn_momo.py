"""Sandbox wire API for MtnMomo (being written: see the helper's brief)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from providers.sandbox.state import SandboxState
from providers.sandbox.web import Notifier, Router

NAME = "mtn_momo"


@dataclass(frozen=True, slots=True)
class MtnMomoConfig:
    """Merchant credentials and behaviour of the MtnMomo sandbox (defaults for offline use)."""


class MtnMomoSandbox:
    name = NAME

    def __init__(
        self, state: SandboxState, notifier: Notifier, config: MtnMomoConfig, *, base_url: Callable[[], str]
    ) -> None:
        self.state = state
        self.notifier = notifier
        self.config = config
        self._base_url = base_url

    def register(self, router: Router) -> None:
        """Add the wire routes and the ``/_sandbox/mtn_momo/...`` control routes."""
