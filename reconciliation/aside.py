"""Files written aside and renamed into place, and what a killed writer left aside, swept.

A report, a general journal or a day page is written to a hidden file beside its final name and renamed over it
when whole (``replacing``): a reader never sees half a file, and two writers of the same file each write their own.
A writer killed outright (SIGKILL, the machine's OOM killer, a container stopped) cannot remove its file aside, and a
million-item run's JSON aside is half a gigabyte. So each writer holds an exclusive ``flock`` on its file aside while
it writes; the kernel drops the lock when the process dies, however it dies. ``sweep`` removes the files aside that
no one holds and that have not changed for ``STALE_AFTER`` seconds; ``replacing`` sweeps those of its own file first,
and the nightly job all of those in the day's report folders (``worker.nightly.write_reports``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

#: A file aside that no writer holds is removed once it has not changed for this long (seconds): the lock says whether
#: its writer lives; the age only spares a file created an instant before its writer locked it, and a file aside of
#: an earlier version of payrecon, which held no lock, while it is still being written.
STALE_AFTER = 600.0

#: The names of files aside: ``.<name>.<tag>.part`` (``replacing``; the tag was the writer's pid before), and
#: ``.<name>.partial`` or ``.<name>.<tag>.partial`` (the general journal's and the day pages' before ``replacing``).
_ASIDE = re.compile(r"\..+\.(?:part|partial)")


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A new file aside beside ``path`` (hidden, a name of its own, locked while the block runs) for the block to
    write; renamed over ``path`` when the block ends, removed when it raises. The abandoned files aside of ``path``
    are swept first (``sweep``; only those: ``path`` may be in anyone's folder). The file is created as ``open``
    creates one (its mode after the umask), so the file it becomes reads as one written in place would. On a file
    system that takes no locks the file is written unlocked (a sweep then goes by its age alone)."""
    sweep(path.parent, of=path.name)
    while True:
        aside = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        try:
            fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        break
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: no one else can hold it
        except OSError as exc:  # no locks here (some network and FUSE file systems)
            log.warning("writing %s unlocked: %s", aside, exc)
        yield aside
        os.replace(aside, path)
    except BaseException:
        try:
            aside.unlink(missing_ok=True)
        except OSError as exc:  # the error that stopped the writer is the one to raise
            log.warning("could not remove %s: %s", aside, exc)
        raise
    finally:
        os.close(fd)  # the lock goes with it


def sweep(directory: Path, *, of: str | None = None, depth: int = 0, older_than: float = STALE_AFTER) -> list[Path]:
    """Remove the files aside in ``directory`` (and its subdirectories, ``depth`` levels down; only those of the file
    named ``of``, if given) that no writer holds and that have not changed for ``older_than`` seconds; returns them.
    Nothing else is touched; a file that goes away or is held meanwhile is left alone, and a folder that cannot be
    read is skipped (logged): a sweep never fails the writing it comes before."""
    removed: list[Path] = []
    cutoff = time.time() - older_than
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    except OSError as exc:
        log.warning("files aside not swept in %s: %s", directory, exc)
        return removed
    for entry in entries:
        try:
            if depth > 0 and entry.is_dir(follow_symlinks=False):
                removed += sweep(Path(entry.path), of=of, depth=depth - 1, older_than=older_than)
            elif (
                _ASIDE.fullmatch(entry.name)
                and (of is None or entry.name.startswith(f".{of}."))
                and entry.is_file(follow_symlinks=False)
                and _abandoned(entry, cutoff)
            ):
                removed.append(Path(entry.path))
        except OSError as exc:
            log.warning("file aside not swept, %s: %s", entry.path, exc)
    return removed


def _abandoned(entry: os.DirEntry[str], cutoff: float) -> bool:
    """Remove ``entry`` if no one holds it and it has not changed since ``cutoff``; whether it was removed. Where
    the file system takes no locks, its age alone decides."""
    try:
        if entry.stat(follow_symlinks=False).st_mtime > cutoff:
            return False
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # gone meanwhile (renamed into place, or swept by another)
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its writer is alive
            return False
        except OSError:  # no locks here: old enough is abandoned enough
            pass
        os.unlink(entry.path)
    except OSError:
        return False
    finally:
        os.close(fd)
    log.warning("removed %s: a file aside that its writer left (a writer stopped before it was done)", entry.path)
    return True
