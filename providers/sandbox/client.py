"""``SandboxClient``: a small Python wrapper of the sandbox's control API.

Used by payrecon's tests and demo, and by merchants' developers who drive the
sandbox from their own test suites::

    with SandboxServer() as server, SandboxClient(server.url) as sandbox:
        sandbox.create_cinetpay("order-1", 5000, fate="waiting_then_accepted", pending_checks=2)
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import quote

import requests


class SandboxError(Exception):
    """The sandbox refused a control call (``status`` and its ``{"error": ...}`` text)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"sandbox answered {status}: {message}")
        self.status = status
        self.message = message


class SandboxClient:
    """Control-API client for a running sandbox at ``base_url``."""

    def __init__(
        self,
        base_url: str,
        *,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (2.0, 15.0),
    ) -> None:
        """Talk to the sandbox at ``base_url`` (e.g. ``SandboxServer.url``)."""
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        response = self._session.request(method, f"{self.base_url}{path}", json=payload, timeout=self.timeout)
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            message = body.get("error") if isinstance(body, dict) else None
            raise SandboxError(response.status_code, str(message or response.text[:200]))
        return body

    @staticmethod
    def _txn_path(transaction_id: str) -> str:
        return f"/_sandbox/cinetpay/transactions/{quote(transaction_id, safe='')}"

    # ------------------------------------------------------------------ CinetPay

    def create_cinetpay(
        self, transaction_id: str, amount: int, currency: str = "XOF", fate: str = "accepted", **options: Any
    ) -> dict[str, Any]:
        """Script a CinetPay transaction (``amount`` in minor units); return its state.

        ``options``: ``pending_checks``, ``confirm_amount``, ``confirm_currency``,
        ``faults``, ``payment_method``, ``phone``, ``notify_url`` (an http(s) URL, or
        ``"enqueue"`` to enqueue its status-change notifications on the sandbox's
        broker), ``description``, ``metadata``.
        """
        payload = {"transaction_id": transaction_id, "amount": amount, "currency": currency, "fate": fate}
        return cast(dict[str, Any], self._call("POST", "/_sandbox/cinetpay/transactions", payload | options))

    def get_cinetpay(self, transaction_id: str) -> dict[str, Any]:
        """State of a CinetPay transaction, including ``status`` and ``check_count``."""
        return cast(dict[str, Any], self._call("GET", self._txn_path(transaction_id)))

    def list_cinetpay(self) -> list[dict[str, Any]]:
        """Every CinetPay transaction."""
        return cast(list[dict[str, Any]], self._call("GET", "/_sandbox/cinetpay/transactions"))

    def set_cinetpay_status(self, transaction_id: str, status: str) -> dict[str, Any]:
        """Force ``ACCEPTED``/``REFUSED``/``WAITING_FOR_CUSTOMER`` now (notifies ``notify_url``)."""
        path = f"{self._txn_path(transaction_id)}/status"
        return cast(dict[str, Any], self._call("POST", path, {"status": status}))

    def send_cinetpay_notification(
        self,
        transaction_id: str,
        *,
        forged: bool = False,
        tamper: dict[str, str] | None = None,
        deliver_to: str | None = None,
        method: str = "POST",
        enqueue: bool = False,
    ) -> dict[str, Any]:
        """Build a notification, optionally POST it to ``deliver_to`` and/or ``enqueue`` it on the broker.

        Returns ``envelope``, ``delivered``, ``delivery_error``, ``enqueued``, ``enqueue_error``.
        ``enqueue=True`` needs a sandbox with a ``broker_url`` (else ``SandboxError`` 400).
        """
        payload = {"forged": forged, "tamper": tamper, "deliver_to": deliver_to, "method": method, "enqueue": enqueue}
        path = f"{self._txn_path(transaction_id)}/notification"
        return cast(dict[str, Any], self._call("POST", path, payload))

    def cinetpay_notification(
        self,
        transaction_id: str,
        *,
        forged: bool = False,
        tamper: dict[str, str] | None = None,
        deliver_to: str | None = None,
        enqueue: bool = False,
    ) -> dict[str, Any]:
        """A signed (or forged/tampered) notification as a ``payrecon.webhook/1`` envelope dict.

        ``enqueue=True`` also publishes it as ``payrecon.ingest_webhook`` on the sandbox's
        broker; ``SandboxError`` if that fails.
        """
        result = self.send_cinetpay_notification(
            transaction_id, forged=forged, tamper=tamper, deliver_to=deliver_to, enqueue=enqueue
        )
        return self._enqueued_envelope(result, enqueue)

    def cinetpay_ping(self, *, deliver_to: str | None = None, enqueue: bool = False) -> dict[str, Any]:
        """CinetPay's empty GET ping as an envelope dict (``enqueue``: as for notifications)."""
        result = self._call("POST", "/_sandbox/cinetpay/ping", {"deliver_to": deliver_to, "enqueue": enqueue})
        return self._enqueued_envelope(result, enqueue)

    @staticmethod
    def _enqueued_envelope(result: dict[str, Any], enqueue: bool) -> dict[str, Any]:
        if enqueue and not result.get("enqueued"):
            # The sandbox answered 200 (the envelope was built); only the broker failed.
            raise SandboxError(200, f"notification built but not enqueued: {result.get('enqueue_error')}")
        return cast(dict[str, Any], result["envelope"])

    # ------------------------------------------------------------------ any provider
    # Every provider's control API has the same shape under /_sandbox/{provider}/:
    # transactions (create, list, get), .../{reference}/status and .../{reference}/notification.

    def create(self, provider: str, **fields: Any) -> dict[str, Any]:
        """Script a transaction at ``provider`` (fields as its control API documents); return its state."""
        return cast(dict[str, Any], self._call("POST", f"/_sandbox/{provider}/transactions", fields))

    def get(self, provider: str, reference: str) -> dict[str, Any]:
        """State of one transaction, including ``status`` and ``check_count``."""
        return cast(dict[str, Any], self._call("GET", self._ref_path(provider, reference)))

    def set_status(self, provider: str, reference: str, status: str, **fields: Any) -> dict[str, Any]:
        """Force a wire status now (notifies the transaction's ``notify_url``); ``fields``: the provider's others
        (MoMo: ``reason``)."""
        payload = {"status": status, **fields}
        return cast(dict[str, Any], self._call("POST", f"{self._ref_path(provider, reference)}/status", payload))

    def notification(self, provider: str, reference: str, *, enqueue: bool = False, **options: Any) -> dict[str, Any]:
        """A notification for the transaction as a ``payrecon.webhook/1`` envelope dict.

        ``options`` as the provider's control API documents (``forged``, ``tamper``,
        ``deliver_to``, ``method``, ...).
        """
        result = self._call(
            "POST", f"{self._ref_path(provider, reference)}/notification", {"enqueue": enqueue, **options}
        )
        return self._enqueued_envelope(result, enqueue)

    @staticmethod
    def _ref_path(provider: str, reference: str) -> str:
        return f"/_sandbox/{provider}/transactions/{quote(reference, safe='')}"

    # ------------------------------------------------------------------ shared

    def add_faults(self, path: str, faults: list[dict[str, Any]]) -> dict[str, Any]:
        """Queue global faults for a wire path, e.g. ``/v2/payment/check``."""
        return cast(dict[str, Any], self._call("POST", "/_sandbox/faults", {"path": path, "faults": faults}))

    def transactions(self, provider: str) -> list[dict[str, Any]]:
        """Every transaction at ``provider``, with its ``status`` (the provider's truth)."""
        return cast(list[dict[str, Any]], self._call("GET", f"/_sandbox/{provider}/transactions"))

    def set_fault_rates(self, rates: list[dict[str, Any]], seed: int | None = None) -> dict[str, Any]:
        """Inject faults at random into every wire answer: ``[{"probability": 0.1, "fault": {...}}, ...]``
        (``[]`` stops); returns the rates as the sandbox shows them."""
        payload: dict[str, Any] = {"rates": rates} if seed is None else {"rates": rates, "seed": seed}
        return cast(dict[str, Any], self._call("POST", "/_sandbox/fault_rates", payload)["fault_rates"] or {})

    def fault_rates(self) -> dict[str, Any] | None:
        """The fault rates with ``drawn`` and each rate's ``injected`` count, or None."""
        return cast(dict[str, Any] | None, self._call("GET", "/_sandbox/fault_rates")["fault_rates"])

    def reset(self) -> None:
        """Forget every transaction and fault."""
        self._call("POST", "/_sandbox/reset")

    def health(self) -> dict[str, Any]:
        """``{"status": "ok", "providers": [...], "faults": {...}}``."""
        return cast(dict[str, Any], self._call("GET", "/_sandbox/health"))

    def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
