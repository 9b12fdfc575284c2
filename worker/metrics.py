"""Prometheus metrics of the worker and beat.

Every metric payrecon exports is defined here, with its labels. Worker processes write them
in Prometheus' multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set and wiped by
``payrecon worker``), so a prefork pool and recycled children still add up; the serving
process adds live state read from the database and the broker at scrape time
(``StateCollector``): oldest pending payment, dead letters, queue depth.

Label values are bounded: providers, statuses and outcomes come from enums, never from input.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

NAMESPACE = "payrecon"

PAYMENTS_FINAL = Counter(
    "payments_final_total",
    "Payments reaching a final status (success rate = succeeded / all final).",
    ["provider", "status"],
    namespace=NAMESPACE,
)
DELIVERIES = Counter(
    "deliveries_total",
    "Webhook deliveries by outcome: accepted, duplicate, forged, malformed, orphan, mismatch, ping, retry, failed.",
    ["provider", "outcome"],
    namespace=NAMESPACE,
)
REGISTRATIONS = Counter(
    "registrations_total",
    "Payment registrations by outcome: created, duplicate, adopted, malformed, failed.",
    ["provider", "outcome"],
    namespace=NAMESPACE,
)
DISAGREEMENTS = Counter(
    "webhook_api_disagreements_total",
    "Webhooks whose claim the provider's API contradicted, by claimed and confirmed status.",
    ["provider", "claimed", "confirmed"],
    namespace=NAMESPACE,
)
PROVIDER_CALLS = Counter(
    "provider_calls_total",
    "Calls to a provider's API by operation and outcome (ok, or the error class).",
    ["provider", "operation", "outcome"],
    namespace=NAMESPACE,
)
PROVIDER_LATENCY = Histogram(
    "provider_call_seconds",
    "Latency of calls to a provider's API, retries inside the call included.",
    ["provider", "operation"],
    namespace=NAMESPACE,
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0),
)
BUDGET_WAITS = Counter(
    "budget_waits_total",
    "Work deferred because a provider's call budget was spent, by bucket (api, callbacks).",
    ["provider", "bucket"],
    namespace=NAMESPACE,
)
TIME_TO_FINAL = Histogram(
    "time_to_final_seconds",
    "Time from registration to a final status.",
    ["provider", "status"],
    namespace=NAMESPACE,
    buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400),
)
GRANTS = Counter(
    "subscription_grants_total", "Subscription periods granted by payments.", ["product"], namespace=NAMESPACE
)
EXPIRIES = Counter(
    "subscription_expiries_total", "Subscriptions switched off at their end.", ["product"], namespace=NAMESPACE
)
DEAD_LETTERED = Counter(
    "dead_letters_recorded_total", "Inputs dead-lettered, by reason.", ["reason"], namespace=NAMESPACE
)
TASKS = Counter(
    "tasks_total", "Celery task runs by task and state (succeeded, failed, retried).", ["task", "state"],
    namespace=NAMESPACE,
)  # fmt: skip
BATCHES = Histogram(
    "batch_messages",
    "Webhook messages a worker took, verified and settled together (PAYRECON_BATCH_SIZE at most).",
    buckets=(1, 2, 5, 10, 25, 50, 100, 200, 500),
    namespace=NAMESPACE,
)
BATCH_SETTLEMENTS = Counter(
    "batch_settlements_total",
    "Answers settled in a batch, by path: set_wise (a plain success) or one_by_one (anything else).",
    ["path"],
    namespace=NAMESPACE,
)
BEAT_DISPATCHES = Counter("beat_dispatches_total", "Periodic jobs beat sent, by task.", ["task"], namespace=NAMESPACE)
LAST_BEAT_DISPATCH = Gauge(
    "beat_last_dispatch_timestamp_seconds",
    "When beat last sent each periodic job (Unix time).",
    ["task"],
    namespace=NAMESPACE,
    multiprocess_mode="max",
)

RECON_RUNS = Counter(
    "reconciliation_runs_total", "Reconciliation runs by provider and status.", ["provider", "status"],
    namespace=NAMESPACE,
)  # fmt: skip
RECON_ITEMS = Counter(
    "reconciliation_items_total", "Items classified by reconciliation runs, by class.", ["provider", "class"],
    namespace=NAMESPACE,
)  # fmt: skip
RECON_DURATION = Histogram(
    "reconciliation_duration_seconds",
    "Duration of a reconciliation run (classification, healing, fees).",
    ["provider"],
    namespace=NAMESPACE,
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
)
