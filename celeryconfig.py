"""Celery configuration for payrecon workers and beat.

Read by ``worker.app``. Values from the environment come through ``worker.settings.CelerySettings``,
checked like every other setting (a bad PAYRECON_RECON_AT is a ConfigError naming it, not a traceback),
so that a worker, beat and a producer agree.
"""

from __future__ import annotations

from celery.schedules import crontab
from kombu import Queue

from schemas.producer import INGEST_TASK, QUEUE, REGISTER_TASK
from worker.settings import CelerySettings

_settings = CelerySettings.from_env()

broker_url = _settings.broker_url
broker_connection_retry_on_startup = True

# JSON only: producers in any language; no pickle ever crosses the broker.
task_serializer = "json"
accept_content = ["json"]
result_serializer = "json"
task_ignore_result = True
result_backend = None

# Every task may run twice (acks after the work, redelivered if a worker dies):
# each one is idempotent by database constraints and row locks.
task_acks_late = True
task_reject_on_worker_lost = True
# A failed task is acknowledged: a contract task's input is already in the dead letters, stored work keeps
# its row and lease, a beat job runs again next time (the retry rules of worker.tasks).
task_acks_on_failure = True
task_acks_on_timeout = True

# Verification waits on the provider (0.1-2 s a call): a thread pool with many
# threads keeps many calls in flight. A worker prefetches little: a message it holds but
# has not started is one that another worker could be doing, and it is what a killed
# worker leaves waiting for the visibility timeout.
# The pool is chosen by `payrecon worker --pool` (default threads), not here: Celery
# ignores an explicit `-P prefork` whenever `worker_pool` is configured.
worker_concurrency = _settings.worker_concurrency
worker_prefetch_multiplier = 1
# (Webhook messages held for a batch raise the prefetch one by one, up to PAYRECON_BATCH_PREFETCH
# messages: worker.batching.)
# After a reconnection Celery would lower the prefetch by the tasks still running, then raise it back by
# one at each acknowledgement up to one per thread: that would wipe what batches raised, and their own
# lowering then take it to 1 until the next reconnection. The batches account for what they hold.
worker_enable_prefetch_count_reduction = False
worker_max_tasks_per_child = None
worker_hijack_root_logger = False

# Redis hands an unacknowledged message to another worker after the visibility timeout, so
# that a killed worker's messages come back. PostgreSQL holds all unfinished work
# (docs/pipeline.md), so nothing waits on the broker for long: wake-up countdowns are 10 s at most
# (worker.tasks.WAKE_UP_MAX), the webhook-path tasks end within 45 s (their time limit), and
# the long jobs (reconciliation, beat's) are acknowledged on receipt and re-driven from the
# database. 60 s is above the longest of those; a killed worker's messages are back within
# about 65 s (the timeout plus one restore sweep: every 5 s, each sweep scanning).
VISIBILITY_TIMEOUT = 60
broker_transport_options = {
    "visibility_timeout": VISIBILITY_TIMEOUT,
    "unacked_restore_interval": 5,
    "unacked_restore_throttle": 1,
}

task_time_limit = 300
task_soft_time_limit = 240

task_default_queue = QUEUE
# Each queue has its own routing key, so the bindings say what they mean (a queue declared
# without one is bound with the default queue's key; Celery still routes by queue name).
task_queues = (
    Queue(QUEUE, routing_key=QUEUE),  # contract: ingest_webhook and register_payment
    Queue("verify", routing_key="verify"),  # retries and janitor re-checks
    Queue("maintenance", routing_key="maintenance"),  # beat jobs
)
task_routes = {
    INGEST_TASK: {"queue": QUEUE},
    REGISTER_TASK: {"queue": QUEUE},
    "payrecon.retry_delivery": {"queue": "verify"},
    "payrecon.verify_payment": {"queue": "verify"},
    "payrecon.recheck_due": {"queue": "maintenance"},
    "payrecon.expire_subscriptions": {"queue": "maintenance"},
    "payrecon.reconcile": {"queue": "maintenance"},
    "payrecon.nightly_reconciliation": {"queue": "maintenance"},
    "payrecon.deliver_events": {"queue": "maintenance"},
    "payrecon.send_reminders": {"queue": "maintenance"},
    "payrecon.purge": {"queue": "maintenance"},
}

timezone = _settings.timezone.key
enable_utc = True

beat_schedule = {
    "recheck-due-payments": {
        "task": "payrecon.recheck_due",
        "schedule": _settings.recheck_interval,
    },
    "expire-subscriptions": {
        "task": "payrecon.expire_subscriptions",
        "schedule": _settings.expire_interval,
    },
    "send-reminders": {"task": "payrecon.send_reminders", "schedule": 600.0},
    # Outbox events to the merchant apps (never in the way of settlement).
    "deliver-events": {
        "task": "payrecon.deliver_events",
        "schedule": _settings.events_interval,
    },
    # Retention (PAYRECON_RETENTION_DAYS; the task does nothing without it), in the quiet hours.
    "purge": {"task": "payrecon.purge", "schedule": crontab(hour=3, minute=30)},
    # The previous business day of every provider, plus re-runs (T+1, T+3), at PAYRECON_RECON_AT
    # in the business time zone (``timezone`` above).
    "nightly-reconciliation": {
        "task": "payrecon.nightly_reconciliation",
        "schedule": crontab(hour=_settings.recon_at[0], minute=_settings.recon_at[1]),
    },
}

if broker_url.startswith("sqla+sqlite"):
    # Embedded demo broker (kombu's SQLAlchemy transport). Its transport options are
    # passed to create_engine, so the polling interval is set on the class instead.
    from kombu.transport import sqlalchemy as _sqla

    _sqla.Transport.polling_interval = 0.1  # type: ignore[attr-defined]
    broker_transport_options = {"connect_args": {"timeout": 30}}
