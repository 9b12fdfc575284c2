"""The directory where a worker's processes write their metrics (prometheus_client multiprocess mode).

This module must not import prometheus_client: the client chooses how it stores values when it is
first imported, from ``PROMETHEUS_MULTIPROC_DIR``. ``payrecon worker`` sets that variable here before
anything imports the client; set later, every counter stayed in the memory of the process that
counted it and the worker's endpoint showed none of them (issue #12).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "payrecon-metrics-"


def prepare(path: str | None = None) -> str:
    """Point prometheus_client at a clean directory (the operator's ``PROMETHEUS_MULTIPROC_DIR``, else
    one of this process's own) and remove those left by workers that are gone (a SIGKILL leaves one)."""
    _remove_orphans()
    directory = Path(path or os.environ.get("PROMETHEUS_MULTIPROC_DIR") or _own())
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return str(directory)


def remove(path: str) -> None:
    """At the worker's exit: its own directory goes (an operator's stays, emptied at the next start)."""
    if Path(path) == _own():
        shutil.rmtree(path, ignore_errors=True)


def _own() -> Path:
    return Path(tempfile.gettempdir()) / f"{PREFIX}{os.getpid()}"


def _remove_orphans() -> None:
    for directory in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        pid = directory.name.removeprefix(PREFIX)
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(directory, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
