"""Delivering sandbox notifications straight onto payrecon's Celery broker.

Instead of POSTing a notification to a receiver, the sandbox can publish the
``payrecon.webhook/1`` envelope it built as the task the receiver would have
enqueued: ``payrecon.ingest_webhook(envelope=...)`` on queue ``webhooks``, JSON only.
It uses the one producer every sender in the repository shares (``schemas/producer.py``,
also behind ``payrecon receive`` and ``payrecon enqueue``).
"""

from __future__ import annotations

from schemas.producer import INGEST_TASK, QUEUE, BrokerPublisher, mask_url

__all__ = ["INGEST_TASK", "QUEUE", "BrokerPublisher", "mask_url"]
