"""Facts the domain notes during a transaction, published only once it commits.

Settlement code says what happened (``note(session, "payment_final", ...)``); observers such as
the worker's metrics subscribe. A transaction that rolls back publishes nothing, so counters
never count a settlement that did not happen. The domain itself knows nothing of Prometheus.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

Listener = Callable[[str, dict[str, Any]], None]
_listeners: list[Listener] = []
_KEY = "payrecon.facts"


def note(session: Session, kind: str, **data: Any) -> None:
    """Record a fact about the current transaction."""
    session.info.setdefault(_KEY, []).append((kind, data))


def subscribe(listener: Listener) -> None:
    if listener not in _listeners:
        _listeners.append(listener)


def unsubscribe(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


@event.listens_for(Session, "after_commit")
def _publish(session: Session) -> None:
    for kind, data in session.info.pop(_KEY, []):
        for listener in _listeners:
            try:
                listener(kind, data)
            except Exception:  # an observer's bug must not fail a committed settlement
                log.exception("fact listener failed on %s", kind)


@event.listens_for(Session, "after_rollback")
def _discard(session: Session) -> None:
    session.info.pop(_KEY, None)
