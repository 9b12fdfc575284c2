"""The Celery application. ``celery -A worker.app worker`` or ``payrecon worker``."""

from __future__ import annotations

from celery import Celery

from worker import broker_recovery

# Before any broker connection: a Redis restart must not end the worker (issue #10).
broker_recovery.apply()
broker_recovery.apply_reliable_fetch()

app = Celery("payrecon")
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["worker"], related_name="tasks", force=True)

import worker.signals  # noqa: E402, F401 - connects the metrics, heartbeat and logging handlers
