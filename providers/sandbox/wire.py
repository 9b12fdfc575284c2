"""What the provider sandboxes share on the wire side: status calls, fates, automatic notifications.

Each provider module (``cinetpay.py``, ``mtn_momo.py``, ``orange_money.py``, ``wave.py``)
speaks its own wire format; the bookkeeping around it is the same everywhere:

* a status call naming a transaction counts in its ``check_count`` and consumes its next
  per-transaction fault (:func:`take_fault`, :func:`slowed`);
* a ``waiting_then_*`` fate answers waiting ``pending_checks`` times, then turns final
  (:func:`advance_fate`);
* a status change is notified in the background, POSTed to ``notify_url`` or, when it is
  ``"enqueue"``, published on the broker (:meth:`WireSandbox.notify_later`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from providers.sandbox.state import ControlError, Fault, SandboxState, Transaction
from providers.sandbox.web import Notifier, Response, fault_response

#: The ``notify_url`` (control API only) that enqueues notifications on the broker instead of sending them.
ENQUEUE: Final = "enqueue"

T = TypeVar("T", bound=Transaction)


def webhook_envelope(
    provider: str,
    method: str,
    path: str,
    body: str,
    headers: dict[str, str],
    *,
    query: dict[str, str | list[str]] | None = None,
) -> dict[str, Any]:
    """The ``payrecon.webhook/1`` envelope payrecon's receiver would build for this notification."""
    return {
        "schema": "payrecon.webhook/1",
        "provider": provider,
        "received_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "method": method,
        "path": path,
        "query": {} if query is None else query,
        "headers": headers,
        "body": body,
        "receiver": "payrecon-sandbox",
    }


def get_transaction(state: SandboxState, provider: str, transaction_id: str, kind: type[T]) -> T:
    """``provider``'s transaction ``transaction_id`` as a ``kind``, or ``ControlError`` 404."""
    txn = state.get(provider, transaction_id)
    if not isinstance(txn, kind):  # pragma: no cover - each provider's store holds only its own kind
        raise ControlError(f"no {provider} transaction {transaction_id!r}", status=404)
    return txn


def take_fault(txn: Transaction, error_body: Callable[[int], Any]) -> tuple[Fault | None, Response | None]:
    """Count a status call naming ``txn`` and take its next fault (caller holds the lock).

    Returns ``(fault, forced answer)``: answer the forced one when there is one; a
    delay-only fault forces nothing, pass it to :func:`slowed` with the normal answer.
    ``error_body(status)`` is the provider-flavoured JSON of an injected HTTP error.
    """
    txn.check_count += 1
    fault = txn.faults.popleft() if txn.faults else None
    forced = fault_response(fault, error_body) if fault is not None else None
    return fault, forced


def slowed(response: Response, fault: Fault | None) -> Response:
    """``response``, answered after a delay-only fault's delay (the state has moved on regardless)."""
    return response if fault is None else replace(response, delay=fault.delay)


def advance_fate(
    txn: Transaction,
    *,
    waiting: Collection[str],
    final: Mapping[str, str],
    transition: Callable[[str], None],
) -> None:
    """Play the fate's script for one status call (caller holds the lock).

    A transaction in a ``waiting`` status answers waiting ``pending_checks`` times; then,
    if its script still runs and its fate has a ``final`` status, ``transition(final status)``.
    """
    if txn.status not in waiting:
        return
    if txn.scripted and txn.fate in final and txn.waiting_answers >= txn.pending_checks:
        transition(final[txn.fate])
    else:
        txn.waiting_answers += 1


class WireSandbox:
    """One provider's wire API over the shared state and notifier (subclasses set ``name``)."""

    name: str

    def __init__(self, state: SandboxState, notifier: Notifier, *, base_url: Callable[[], str]) -> None:
        self.state = state
        self.notifier = notifier
        self._base_url = base_url

    def notify_later(
        self,
        txn: Transaction,
        record: dict[str, Any],
        *,
        method: str,
        url: str,
        body: str,
        headers: dict[str, str],
        envelope: dict[str, Any],
    ) -> None:
        """Add ``record`` to ``txn``'s notifications and deliver in the background (caller holds the lock).

        ``url`` ``"enqueue"`` publishes ``envelope`` on the broker, any other is sent
        ``method`` with ``body`` and ``headers``; the record gets ``enqueued`` or
        ``delivered``, and ``error``, once done.
        """
        txn.notifications.append(record)
        if url == ENQUEUE:

            def enqueued(ok: bool, error: str | None) -> None:
                with self.state.lock:
                    record.update(enqueued=ok, error=error)

            self.notifier.enqueue_later(envelope, enqueued)
            return

        def delivered(http_status: int | None, error: str | None) -> None:
            with self.state.lock:
                record.update(delivered=http_status, error=error)

        self.notifier.send_later(method, url, body, headers, delivered)
