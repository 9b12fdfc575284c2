"""Trust profile of each provider, as data: the one place that says how far a provider's
callbacks can be trusted and how hard payrecon may lean on its API.

- ``callback_auth``: how a callback proves it comes from the provider.
- ``callbacks_authenticated``: whether a forged callback can be told from a real one. When
  not (MTN MoMo signs nothing), callbacks are rate-limited before they may spend API budget,
  and a callback for a payment that is already final spends nothing at all.
- A callback is never trusted for money, whatever its authentication: only the status API
  (or a statement) moves a payment. That rule is not configurable, so it is not a field.
- ``recheck_schedule``: seconds between re-checks of a payment that is not final (the
  janitor), the last delay repeating; ``give_up_after``: seconds after registration when a
  payment still not final becomes ``expired`` (the nightly reconciliation looks again).
- ``api_rate`` / ``api_burst``: the call budget, a token bucket shared by every worker
  (calls per second, bucket size); ``callback_rate`` / ``callback_burst``: the extra bucket
  unauthenticated callbacks must pass first.
- ``not_found_grace``: seconds after registration during which "not found" from the status
  API means "not visible yet" (MoMo answers 404 for a while after accepting a request).
- ``settle_sla``: seconds within which a payment should be final; the nightly reconciliation
  shows a payment still pending after that as ``missing_after_sla``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType

HOUR = 3600


@dataclass(frozen=True, slots=True)
class TrustProfile:
    provider: str
    callback_auth: str
    callbacks_authenticated: bool
    recheck_schedule: tuple[int, ...]
    give_up_after: int
    api_rate: float
    api_burst: int
    callback_rate: float | None = None
    callback_burst: int | None = None
    not_found_grace: int = 0
    settle_sla: int = HOUR

    def with_overrides(
        self,
        *,
        recheck_schedule: tuple[int, ...] | None = None,
        give_up_after: int | None = None,
        budget: tuple[float, int] | None = None,
    ) -> TrustProfile:
        """The profile with operator settings applied (``PAYRECON_*`` variables)."""
        profile = self
        if recheck_schedule is not None:
            profile = replace(profile, recheck_schedule=recheck_schedule)
        if give_up_after is not None:
            profile = replace(profile, give_up_after=give_up_after)
        if budget is not None:
            profile = replace(profile, api_rate=budget[0], api_burst=budget[1])
        return profile


PROFILES = MappingProxyType(
    {
        "cinetpay": TrustProfile(
            provider="cinetpay",
            callback_auth="x-token header: HMAC-SHA256 of the 16 cpm_* fields with the site's secret key",
            callbacks_authenticated=True,
            # Push-confirm operators keep a payment WAITING for minutes; CinetPay notifies each change.
            recheck_schedule=(30, 120, 300, 900, HOUR, 6 * HOUR, 24 * HOUR),
            give_up_after=48 * HOUR,
            api_rate=5.0,
            api_burst=20,
        ),
        "mtn_momo": TrustProfile(
            provider="mtn_momo",
            callback_auth="none: MTN signs nothing, a callback only names a reference to verify",
            callbacks_authenticated=False,
            # Callbacks may never come (sent once in some markets): poll early and often.
            recheck_schedule=(30, 120, 300, 900, HOUR, HOUR, 6 * HOUR, 24 * HOUR),
            give_up_after=72 * HOUR,
            api_rate=5.0,
            api_burst=20,
            callback_rate=1.0,
            callback_burst=10,
            not_found_grace=600,
        ),
        "orange_money": TrustProfile(
            provider="orange_money",
            callback_auth="notif_token in the body equals the one returned at payment initiation",
            callbacks_authenticated=True,
            # A pay_token lives about 10 minutes, then the payment is EXPIRED at Orange.
            recheck_schedule=(60, 180, 600, 1800, HOUR, 6 * HOUR),
            give_up_after=24 * HOUR,
            api_rate=5.0,
            api_burst=20,
            settle_sla=1800,
        ),
        "wave": TrustProfile(
            provider="wave",
            callback_auth="Wave-Signature: HMAC-SHA256 of timestamp + raw body, any v1 may match "
            "(key rotation), timestamp within 5 minutes of the delivery's arrival (the envelope's `received_at`, "
            "however late it is read); or a Bearer shared secret",
            callbacks_authenticated=True,
            # Checkout sessions expire 30 minutes after creation.
            recheck_schedule=(30, 120, 300, 900, 1800, HOUR, 6 * HOUR),
            give_up_after=24 * HOUR,
            api_rate=10.0,
            api_burst=40,
        ),
    }
)


def profile(provider: str) -> TrustProfile:
    return PROFILES[provider]


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", HOUR), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def markdown_table() -> str:
    """The profiles as docs/providers.md shows them (a test keeps the page in step)."""
    lines = [
        "| provider | callbacks authenticated by | re-checks (then the last repeats) | gives up after "
        "| call budget | unauthenticated callbacks | settlement SLA |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in PROFILES.values():
        callbacks = f"{p.callback_rate:g}/s, burst {p.callback_burst}" if p.callback_rate else "n/a (authenticated)"
        lines.append(
            f"| `{p.provider}` | {p.callback_auth} | {', '.join(_duration(s) for s in p.recheck_schedule)} "
            f"| {_duration(p.give_up_after)} | {p.api_rate:g}/s, burst {p.api_burst} | {callbacks} "
            f"| {_duration(p.settle_sla)} |"
        )
    return "\n".join(lines)
