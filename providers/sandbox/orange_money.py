"""Sandbox wire API for OrangeMoney (being written: see the helper's brief)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from providers.sandbox.state import SandboxState
from providers.sandbox.web import Notifier, Router

NAME = "orange_money"


@dataclass(frozen=True, slots=True)
class OrangeMoneyConfig:
    """Merchant credentials and behaviour of the OrangeMoney sandbox (defaults for offline use)."""


class OrangeMoneySandbox:
    name = NAME

    def __init__(
        self, state: SandboxState, notifier: Notifier, config: OrangeMoneyConfig, *, base_url: Callable[[], str]
    ) -> None:
        self.state = state
        self.notifier = notifier
        self.config = config
        self._base_url = base_url

    def register(self, router: Router) -> None:
        """Add the wire routes and the ``/_sandbox/orange_money/...`` control routes."""
