"""Progress of long operations, reported to whoever shows it (the command line draws bars on a
terminal); nothing here prints.

A ``Progress`` is called as ``progress(stage, done, total)``: ``done`` of ``total`` units of
``stage`` (bytes, rows, steps or files: the stage's own), first with ``done`` 0 when the stage
starts, last with ``done == total`` when it ends.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]


def silent(stage: str, done: int, total: int) -> None:
    """The default: report to nobody."""
