"""What the providers' control APIs share (``/_sandbox/<provider>/...``).

Every provider has the same five routes, JSON in and out (bad input → 400 ``{"error": ...}``,
unknown transaction → 404, existing one → 409)::

    GET  /_sandbox/<provider>/transactions                    every transaction
    POST /_sandbox/<provider>/transactions                    script one (201)
    GET  /_sandbox/<provider>/transactions/{id}               its state
    POST /_sandbox/<provider>/transactions/{id}/status        force a status now
    POST /_sandbox/<provider>/transactions/{id}/notification  build (and deliver) a notification

:class:`ProviderControl` implements the listing, the lookups, forced statuses, the
validation shared by every create and notification body (fate, amount, ``notify_url``,
``method``, ``enqueue``) and the delivery of a notification with its answer
``{"envelope", "delivered", "delivery_error", "enqueued", "enqueue_error"}``; each
provider's module (``<provider>_control.py``) builds its own transactions and notifications.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any, Final, Generic, TypeVar

from providers.sandbox.state import (
    FATES,
    ControlError,
    Transaction,
    check_keys,
    check_url,
    get_bool,
    get_int,
)
from providers.sandbox.web import Request, Response, Router, json_response
from providers.sandbox.wire import ENQUEUE, WireSandbox, get_transaction

W = TypeVar("W", bound=WireSandbox)
T = TypeVar("T", bound=Transaction)

#: Fields every provider's ``POST .../transactions`` body accepts; each adds its id field and its own.
CREATE_KEYS: Final = frozenset(
    {"amount", "currency", "fate", "pending_checks", "confirm_amount", "confirm_currency", "faults", "notify_url"}
)
#: Fields every provider's ``POST .../notification`` body accepts; each may add its own.
NOTIFICATION_KEYS: Final = frozenset({"forged", "tamper", "deliver_to", "enqueue", "method"})


def no_broker(what: str) -> ControlError:
    """The error for an enqueue asked of a sandbox without a broker."""
    return ControlError(f"{what} needs a sandbox started with a broker_url (SandboxServer(broker_url=...))")


def check_method(payload: dict[str, Any], default: str = "POST") -> str:
    """The notification's HTTP ``method`` (upper case)."""
    method = payload.get("method", default)
    if not isinstance(method, str) or not method.isalpha() or not 3 <= len(method) <= 7:
        raise ControlError(f"method must be an HTTP method, got {method!r}")
    return method.upper()


class ProviderControl(Generic[W, T]):
    """The shared control routes over one provider's wire sandbox ``W`` and its transactions ``T``.

    Subclasses set ``transaction_type``, ``statuses`` (what ``/status`` may force) and the
    fields their create and notification bodies accept, and implement ``_create``,
    ``_notification`` and ``_status_change``.
    """

    transaction_type: type[T]
    #: The wire statuses ``POST .../status`` may force.
    statuses: tuple[str, ...]
    #: The fields of a ``POST .../transactions`` body.
    create_keys: AbstractSet[str]
    #: The fields of a ``POST .../notification`` body.
    notification_keys: AbstractSet[str] = NOTIFICATION_KEYS
    #: The fates ``POST .../transactions`` accepts.
    fates: tuple[str, ...] = FATES
    #: The fields of a ``POST .../status`` body.
    status_keys: frozenset[str] = frozenset({"status"})

    def __init__(self, wire: W) -> None:
        """Control ``wire``'s transactions."""
        self.wire = wire

    @property
    def name(self) -> str:
        """The provider."""
        return self.wire.name

    def register(self, router: Router) -> None:
        """Add the five ``/_sandbox/<provider>/transactions...`` routes."""
        control = f"/_sandbox/{self.name}"
        router.add("GET", f"{control}/transactions", self.list_transactions)
        router.add("POST", f"{control}/transactions", self.create_transaction)
        router.add("GET", f"{control}/transactions/{{id}}", self.get_transaction)
        router.add("POST", f"{control}/transactions/{{id}}/status", self.force_status)
        router.add("POST", f"{control}/transactions/{{id}}/notification", self.notification)

    # ------------------------------------------------------------------ provider-specific

    def _create(self, payload: dict[str, Any]) -> Response:
        """Script a transaction from a create body whose fields are known (201)."""
        raise NotImplementedError

    def _notification(self, payload: dict[str, Any], transaction_id: str) -> Response:
        """A notification about ``transaction_id``, from a body whose fields are known."""
        raise NotImplementedError

    def _status_change(self, payload: dict[str, Any]) -> Callable[[T, str], None]:
        """Validate a status change's other fields; return how to apply it (caller holds the lock)."""
        raise NotImplementedError

    def view(self, txn: T) -> dict[str, Any]:
        """The transaction as the control API shows it (caller holds the lock)."""
        return txn.to_json()

    # ------------------------------------------------------------------ shared routes

    def create_transaction(self, request: Request) -> Response:
        """``POST /_sandbox/<provider>/transactions``: script a transaction (201)."""
        payload = request.json_object()
        check_keys(payload, self.create_keys, "transaction")
        return self._create(payload)

    def notification(self, request: Request) -> Response:
        """``POST .../transactions/{id}/notification``: build a notification, deliver it as asked."""
        payload = request.json_object()
        check_keys(payload, self.notification_keys, "notification")
        return self._notification(payload, request.params["id"])

    def find(self, transaction_id: str) -> T:
        """A transaction by id, or ``ControlError`` 404."""
        return get_transaction(self.wire.state, self.name, transaction_id, self.transaction_type)

    def list_transactions(self, request: Request) -> Response:
        """``GET /_sandbox/<provider>/transactions``: every transaction."""
        with self.wire.state.lock:
            store = self.wire.state.transactions(self.name).values()
            return json_response(200, [self.view(t) for t in store if isinstance(t, self.transaction_type)])

    def get_transaction(self, request: Request) -> Response:
        """``GET /_sandbox/<provider>/transactions/{id}``: state, ``check_count``, notifications."""
        txn = self.find(request.params["id"])
        with self.wire.state.lock:
            return json_response(200, self.view(txn))

    def force_status(self, request: Request) -> Response:
        """``POST .../transactions/{id}/status`` ``{"status"}``: change now, notify, stop the script."""
        payload = request.json_object()
        check_keys(payload, self.status_keys, "status change")
        status = payload.get("status")
        if status not in self.statuses:
            raise ControlError(f"status must be one of {', '.join(self.statuses)}, got {status!r}")
        change = self._status_change(payload)
        txn = self.find(request.params["id"])
        with self.wire.state.lock:
            txn.scripted = False
            change(txn, status)
            return json_response(200, self.view(txn))

    # ------------------------------------------------------------------ creating

    def _fate_and_amount(self, payload: dict[str, Any]) -> tuple[str, int]:
        """A create body's ``fate`` (default ``accepted``) and required ``amount`` (minor units)."""
        fate = payload.get("fate", "accepted")
        if fate not in self.fates:
            raise ControlError(f"fate must be one of {', '.join(self.fates)}, got {fate!r}")
        amount = get_int(payload, "amount", minimum=1)
        if amount is None:
            raise ControlError("amount (integer, minor units) is required")
        return fate, amount

    def _notify_url(self, value: Any) -> str | None:
        """A create body's ``notify_url``: an http(s) URL, or ``"enqueue"`` (needs a broker)."""
        if value == ENQUEUE:
            if not self.wire.notifier.can_enqueue:
                raise no_broker('notify_url "enqueue"')
            return ENQUEUE
        try:
            return check_url(value, "notify_url")
        except ControlError:
            raise ControlError(f'notify_url must be an absolute http(s) URL or "enqueue", got {value!r}') from None

    def _created(self, txn: T) -> Response:
        """Store a new transaction (409 if its id is taken); answer 201 with its state."""
        self.wire.state.add(txn)
        with self.wire.state.lock:
            return json_response(201, self.view(txn))

    # ------------------------------------------------------------------ notifications

    def _enqueue_flag(self, payload: dict[str, Any]) -> bool:
        """A notification body's ``enqueue`` (needs a broker)."""
        enqueue = get_bool(payload, "enqueue")
        if enqueue and not self.wire.notifier.can_enqueue:
            raise no_broker('"enqueue": true')
        return enqueue

    def _deliver(
        self,
        method: str,
        body: str,
        headers: dict[str, str],
        envelope: dict[str, Any],
        *,
        deliver_to: str | None,
        enqueue: bool,
    ) -> dict[str, Any]:
        """Send the notification to ``deliver_to`` and/or enqueue ``envelope``, now; the route's answer.

        A failed delivery or enqueue is reported in the answer, not raised.
        """
        delivered, error = (None, None)
        if deliver_to is not None:
            delivered, error = self.wire.notifier.send(method, deliver_to, body, headers)
        enqueued, enqueue_error = self.wire.notifier.enqueue(envelope) if enqueue else (False, None)
        return {
            "envelope": envelope,
            "delivered": delivered,
            "delivery_error": error,
            "enqueued": enqueued,
            "enqueue_error": enqueue_error,
        }

    def _deliver_as_asked(
        self, method: str, body: str, headers: dict[str, str], envelope: dict[str, Any], payload: dict[str, Any]
    ) -> dict[str, Any]:
        """:meth:`_deliver`, reading ``deliver_to`` and ``enqueue`` from the notification body now."""
        deliver_to = check_url(payload.get("deliver_to"), "deliver_to")
        enqueue = self._enqueue_flag(payload)
        return self._deliver(method, body, headers, envelope, deliver_to=deliver_to, enqueue=enqueue)

    def _recorded(
        self, txn: T, record: dict[str, Any], *, tamper: dict[str, Any], url: Any, result: dict[str, Any]
    ) -> Response:
        """Add a manual notification's ``record`` (with how it went) to ``txn``; answer ``result``."""
        record |= {"tampered": sorted(tamper), "url": url}
        record |= {"delivered": result["delivered"], "error": result["delivery_error"]}
        record |= {"enqueued": result["enqueued"], "enqueue_error": result["enqueue_error"]}
        with self.wire.state.lock:
            txn.notifications.append(record)
        return json_response(200, result)
