"""In-memory state of the sandbox: transactions, their scripted fates, injected faults.

Everything here is provider-neutral so MTN MoMo, Orange Money and Wave can reuse it:
a transaction has a ``provider`` and a provider-specific wire ``status`` string; the
provider module decides what the status values are and how a fate plays out.

Thread safety: the HTTP server runs one thread per connection. Every read or write
of transactions or faults happens under ``SandboxState.lock`` (re-entrant).
"""

from __future__ import annotations

import random
import re
import threading
from collections import deque
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from schemas.currency import MINOR_UNIT_EXPONENT

#: How a transaction behaves on status checks.
#: ``accepted``/``refused``: final from the start. ``waiting``: never leaves waiting.
#: ``waiting_then_*``: answers waiting ``pending_checks`` times, then becomes final.
FATES: Final = ("accepted", "refused", "waiting", "waiting_then_accepted", "waiting_then_refused")

_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:\-]{1,100}$")
_MAX_DELAY = 60.0


class ControlError(Exception):
    """Bad input to the sandbox: answered as ``{"error": message}`` with ``status``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# --------------------------------------------------------------------------- validation helpers


def check_keys(payload: dict[str, Any], allowed: AbstractSet[str], what: str) -> None:
    """Refuse unknown keys: a typo in a fault or option must not be silently ignored."""
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise ControlError(f"{what}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def get_int(payload: dict[str, Any], key: str, *, default: int | None = None, minimum: int = 0) -> int | None:
    """An optional JSON integer (booleans and floats refused) ``>= minimum``."""
    value = payload.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ControlError(f"{key} must be an integer, got {value!r}")
    if value < minimum:
        raise ControlError(f"{key} must be >= {minimum}, got {value}")
    return value


def get_str(payload: dict[str, Any], key: str, *, default: str | None = None) -> str | None:
    """An optional JSON string."""
    value = payload.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ControlError(f"{key} must be a string, got {value!r}")
    return value


def get_bool(payload: dict[str, Any], key: str, *, default: bool = False) -> bool:
    """An optional JSON boolean."""
    value = payload.get(key, default)
    if not isinstance(value, bool):
        raise ControlError(f"{key} must be true or false")
    return value


def get_number(payload: dict[str, Any], key: str) -> float | None:
    """An optional JSON number in ``[0, 60]`` (seconds)."""
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= _MAX_DELAY:
        raise ControlError(f"{key} must be a number of seconds between 0 and {_MAX_DELAY:g}, got {value!r}")
    return float(value)


def check_transaction_id(value: Any) -> str:
    """A merchant transaction id, as the registration contract allows them."""
    if not isinstance(value, str) or not _ID_PATTERN.match(value):
        raise ControlError("transaction_id must be 1-100 characters of A-Z a-z 0-9 . _ : -")
    return value


def check_currency(value: Any, key: str = "currency") -> str:
    """An ISO code payrecon knows."""
    if not isinstance(value, str) or value not in MINOR_UNIT_EXPONENT:
        raise ControlError(f"{key} must be one of {', '.join(sorted(MINOR_UNIT_EXPONENT))}, got {value!r}")
    return value


def check_url(value: Any, key: str) -> str | None:
    """An optional absolute http(s) URL."""
    if value is None:
        return None
    if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+", value):
        raise ControlError(f"{key} must be an absolute http(s) URL, got {value!r}")
    return value


# --------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour, consumed by one request.

    ``status``: answer this HTTP status instead (with ``body`` if given, else a JSON
    error); ``retry_after``: add a ``Retry-After`` header; ``delay``: wait this many
    seconds first (alone: answer slowly, then normally); ``drop``: close the
    connection without answering; ``headers``: extra response headers.
    """

    status: int | None = None
    retry_after: float | None = None
    delay: float = 0.0
    body: str | None = None
    content_type: str = "text/plain"
    drop: bool = False
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_json(cls, value: Any) -> Fault:
        """Validate one fault object from the control API."""
        if not isinstance(value, dict):
            raise ControlError(f"a fault must be an object, got {value!r}")
        check_keys(value, {"status", "retry_after", "delay", "body", "content_type", "drop", "headers"}, "fault")
        headers = value.get("headers") or {}
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and "\n" not in k + v for k, v in headers.items()
        ):
            raise ControlError("fault headers must be an object of header name -> string value")
        status = get_int(value, "status", minimum=100)
        if status is not None and status > 599:
            raise ControlError(f"fault status must be an HTTP status (100-599), got {status}")
        drop = value.get("drop", False)
        if not isinstance(drop, bool):
            raise ControlError("fault drop must be true or false")
        fault = cls(
            status=status,
            retry_after=get_number(value, "retry_after"),
            delay=get_number(value, "delay") or 0.0,
            body=get_str(value, "body"),
            content_type=get_str(value, "content_type", default="text/plain") or "text/plain",
            drop=drop,
            headers=tuple(headers.items()),
        )
        if fault.status is None and not fault.drop and not fault.delay:
            raise ControlError("a fault needs at least one of status, delay or drop")
        if fault.body is not None and fault.status is None:
            raise ControlError("fault body needs a status")
        return fault

    def to_json(self) -> dict[str, Any]:
        """The fault as the control API shows it."""
        out: dict[str, Any] = {}
        for key in ("status", "retry_after", "body", "drop", "delay"):
            value = getattr(self, key)
            if value not in (None, False, 0.0):
                out[key] = value
        if self.headers:
            out["headers"] = dict(self.headers)
        return out


def parse_faults(value: Any) -> list[Fault]:
    """Validate a list of faults from the control API."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ControlError("faults must be a list of objects")
    if len(value) > 1000:
        raise ControlError("at most 1000 faults at once")
    return [Fault.from_json(item) for item in value]


@dataclass(frozen=True)
class FaultRate:
    """A fault injected into a share of wire answers: ``probability`` in ``[0, 1]``."""

    probability: float
    fault: Fault

    @classmethod
    def from_json(cls, value: Any) -> FaultRate:
        """Validate one ``{"probability", "fault"}`` object from the control API."""
        if not isinstance(value, dict):
            raise ControlError(f"a fault rate must be an object, got {value!r}")
        check_keys(value, {"probability", "fault"}, "fault rate")
        probability = value.get("probability")
        if isinstance(probability, bool) or not isinstance(probability, int | float) or not 0 <= probability <= 1:
            raise ControlError(f"probability must be a number between 0 and 1, got {probability!r}")
        return cls(float(probability), Fault.from_json(value.get("fault")))


class FaultRates:
    """Faults drawn at random, for every wire answer no queued fault claims (a provider having a bad day).

    Draws come from one ``random.Random(seed)``: a seeded storm injects the same share of each
    fault (which request gets which depends on thread timing). Use under ``SandboxState.lock``.
    """

    def __init__(self, rates: list[FaultRate], seed: int | None = None) -> None:
        """``rates`` are exclusive: their probabilities add up to at most 1."""
        total = sum(rate.probability for rate in rates)
        if total > 1 + 1e-9:
            raise ControlError(f"fault rate probabilities add up to {total:g}, more than 1")
        self.rates = rates
        self.seed = seed
        self._random = random.Random(seed)  # noqa: S311 - fault injection, not security
        #: Wire answers drawn for, and faults injected per rate (same order as ``rates``).
        self.drawn = 0
        self.injected = [0] * len(rates)

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> FaultRates:
        """``{"rates": [{"probability", "fault"}, ...], "seed"?}`` from the control API."""
        check_keys(payload, {"rates", "seed"}, "fault rates")
        rates = payload.get("rates")
        if not isinstance(rates, list) or len(rates) > 100:
            raise ControlError("rates must be a list of at most 100 {probability, fault} objects")
        seed = get_int(payload, "seed", minimum=-(2**63))
        return cls([FaultRate.from_json(item) for item in rates], seed)

    def draw(self) -> Fault | None:
        """The fault for one wire answer, or None."""
        self.drawn += 1
        roll = self._random.random()
        for index, rate in enumerate(self.rates):
            if roll < rate.probability:
                self.injected[index] += 1
                return rate.fault
            roll -= rate.probability
        return None

    def to_json(self) -> dict[str, Any]:
        """The rates with what they injected so far."""
        return {
            "seed": self.seed,
            "drawn": self.drawn,
            "rates": [
                {"probability": rate.probability, "fault": rate.fault.to_json(), "injected": injected}
                for rate, injected in zip(self.rates, self.injected, strict=True)
            ],
        }


# --------------------------------------------------------------------------- transactions


@dataclass
class Transaction:
    """One payment as the sandboxed provider knows it. Mutate only under the state lock."""

    provider: str
    transaction_id: str
    amount: int  # minor units
    currency: str
    fate: str
    status: str  # the provider's own wire status value
    created_at: datetime
    payment_token: str
    pending_checks: int = 1
    confirm_amount: int | None = None  # what the provider reports, when it lies
    confirm_currency: str | None = None
    payment_method: str = "OM"
    phone: str = "+2250701020304"
    notify_url: str | None = None
    description: str = "payrecon sandbox payment"
    metadata: str | None = None
    operator_id: str | None = None
    paid_at: datetime | None = None
    faults: deque[Fault] = field(default_factory=deque)
    #: Checks that named this transaction (including ones answered by a fault).
    check_count: int = 0
    #: Checks answered "waiting" so far (what ``pending_checks`` counts down).
    waiting_answers: int = 0
    #: False once a status was forced: the fate's script stops there.
    scripted: bool = True
    notifications: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reported_amount(self) -> int:
        """The amount the provider reports (``confirm_amount`` when set)."""
        return self.amount if self.confirm_amount is None else self.confirm_amount

    @property
    def reported_currency(self) -> str:
        """The currency the provider reports (``confirm_currency`` when set)."""
        return self.confirm_currency or self.currency

    def to_json(self) -> dict[str, Any]:
        """The transaction as the control API shows it."""
        return {
            "provider": self.provider,
            "transaction_id": self.transaction_id,
            "amount": self.amount,
            "currency": self.currency,
            "fate": self.fate,
            "status": self.status,
            "pending_checks": self.pending_checks,
            "confirm_amount": self.confirm_amount,
            "confirm_currency": self.confirm_currency,
            "payment_method": self.payment_method,
            "phone": self.phone,
            "notify_url": self.notify_url,
            "description": self.description,
            "metadata": self.metadata,
            "payment_token": self.payment_token,
            "operator_id": self.operator_id,
            "created_at": self.created_at.isoformat(),
            "paid_at": self.paid_at.isoformat() if self.paid_at else None,
            "check_count": self.check_count,
            "waiting_answers": self.waiting_answers,
            "scripted": self.scripted,
            "faults_left": [fault.to_json() for fault in self.faults],
            "notifications": list(self.notifications),
        }


class SandboxState:
    """All sandbox state: per-provider transaction stores and global faults per path."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._transactions: dict[str, dict[str, Transaction]] = {}
        self._faults: dict[str, deque[Fault]] = {}
        self._fault_rates: FaultRates | None = None

    def transactions(self, provider: str) -> dict[str, Transaction]:
        """The mutable store of ``provider``'s transactions. Hold ``lock`` while using it."""
        return self._transactions.setdefault(provider, {})

    def get(self, provider: str, transaction_id: str) -> Transaction:
        """A transaction by id, or ``ControlError`` 404."""
        with self.lock:
            txn = self.transactions(provider).get(transaction_id)
        if txn is None:
            raise ControlError(f"no {provider} transaction {transaction_id!r}", status=404)
        return txn

    def add(self, txn: Transaction) -> None:
        """Store a new transaction; ``ControlError`` 409 if the id is taken."""
        with self.lock:
            store = self.transactions(txn.provider)
            if txn.transaction_id in store:
                raise ControlError(f"{txn.provider} transaction {txn.transaction_id!r} exists", status=409)
            store[txn.transaction_id] = txn

    def add_faults(self, path: str, faults: list[Fault]) -> int:
        """Queue global faults for ``path``; return how many are queued there now."""
        with self.lock:
            queue = self._faults.setdefault(path, deque())
            queue.extend(faults)
            return len(queue)

    def take_global_fault(self, path: str) -> Fault | None:
        """Pop the next global fault for ``path``, if any."""
        with self.lock:
            queue = self._faults.get(path)
            return queue.popleft() if queue else None

    def set_fault_rates(self, rates: FaultRates | None) -> None:
        """Inject faults at random into wire answers from now on (None or no rates: stop)."""
        with self.lock:
            self._fault_rates = rates if rates is not None and rates.rates else None

    def draw_rate_fault(self) -> Fault | None:
        """A fault drawn from the fault rates for one wire answer, if any are set."""
        with self.lock:
            return self._fault_rates.draw() if self._fault_rates is not None else None

    def fault_rates(self) -> dict[str, Any] | None:
        """The fault rates and their counters, or None."""
        with self.lock:
            return self._fault_rates.to_json() if self._fault_rates is not None else None

    def global_faults(self) -> dict[str, list[dict[str, Any]]]:
        """Queued global faults, per path."""
        with self.lock:
            return {path: [f.to_json() for f in queue] for path, queue in self._faults.items() if queue}

    def reset(self) -> None:
        """Forget every transaction and fault."""
        with self.lock:
            self._transactions.clear()
            self._faults.clear()
            self._fault_rates = None
