"""Where this process serves its Prometheus metrics.

``payrecon worker --metrics-port`` and ``payrecon beat --metrics-port`` say it here (``PORTS``), in the
process that then runs Celery; a process Celery started by itself (``celery -A worker.app worker``) reads
``PAYRECON_METRICS_PORT`` / ``PAYRECON_BEAT_METRICS_PORT``, checked. No other import: the command line sets
it before anything imports prometheus_client (``worker.metrics_dir``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

#: "worker" or "beat" -> the port the command line gave (0: off).
PORTS: dict[str, int] = {}
#: Each kind's variable and default, as the command line's options have them.
ENV = {"worker": ("PAYRECON_METRICS_PORT", 9808), "beat": ("PAYRECON_BEAT_METRICS_PORT", 9809)}


def port(kind: str, env: Mapping[str, str] | None = None) -> int:
    """The port to serve ``kind``'s metrics on (0: off): the command line's, else the environment's."""
    if kind in PORTS:
        return PORTS[kind]
    name, default = ENV[kind]
    value = (os.environ if env is None else env).get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) > 65535:
        log.error("%s must be a port number (0: off), got %r: metrics are not served", name, value)
        return 0
    return int(value)
