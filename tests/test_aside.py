"""Files written aside and renamed into place (``reconciliation.aside``), and what a killed writer left aside."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from reconciliation import aside
from reconciliation.aside import replacing, sweep

ROOT = Path(__file__).resolve().parent.parent

#: A writer that is killed while it writes: it prints its file aside once it holds it, then waits to be killed.
KILLED_WRITER = """
import sys, time
from pathlib import Path
from reconciliation.aside import replacing
with replacing(Path(sys.argv[1])) as aside:
    aside.write_bytes(b"half a report")
    print(aside, flush=True)
    time.sleep(60)
"""


def _old(path: Path, seconds: float = 2 * aside.STALE_AFTER) -> Path:
    """``path`` last changed ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_a_file_is_written_aside_then_renamed_over_the_old_one_with_the_mode_open_gives(tmp_path: Path) -> None:
    before = os.umask(0o022)  # files readable by others: a file aside must not end up 0600 as mkstemp's do
    try:
        _written_aside(tmp_path)
    finally:
        os.umask(before)


def _written_aside(tmp_path: Path) -> None:
    target = tmp_path / "report.csv"
    target.write_text("old")
    plain = tmp_path / "plain.csv"
    plain.write_text("")
    with replacing(target) as written:
        assert written.parent == tmp_path and written.name.startswith(".report.csv.") and written.suffix == ".part"
        written.write_text("new")
        assert target.read_text() == "old"  # a reader sees the old file whole until the new one is
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.csv", "report.csv"]
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644


def test_a_writer_that_fails_leaves_the_old_file_and_nothing_aside(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(OSError, match="disk full"), replacing(target) as written:
        written.write_text("half")
        raise OSError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_two_writers_of_one_file_in_one_process_each_write_their_own(tmp_path: Path) -> None:
    """Two threads exporting the same file at once (a pid in the name was the same for both): each writes a file
    aside of its own, and the file is one of theirs, whole."""
    target = tmp_path / "report.csv"
    both_in = threading.Barrier(2)
    names: list[Path] = []

    def write(text: str) -> None:
        with replacing(target) as written:
            names.append(written)
            both_in.wait(5)
            written.write_text(text * 10_000)

    threads = [threading.Thread(target=write, args=(c,)) for c in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(set(names)) == 2
    assert target.read_text() in ("a" * 10_000, "b" * 10_000)
    assert [p.name for p in tmp_path.iterdir()] == ["report.csv"]


def test_a_killed_writer_leaves_its_file_aside_which_the_next_writer_sweeps(tmp_path: Path) -> None:
    """A real process killed by SIGKILL mid-write: while it lives its file aside is held and no sweep removes it,
    however old; once it is dead, the next writer of the same file removes it (and no other file's)."""
    target = tmp_path / "recon_cinetpay_2026-11-21_run1.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True, env=env
    ) as writer:
        try:
            assert writer.stdout is not None
            left = Path(writer.stdout.readline().strip())
            assert left.read_bytes() == b"half a report"
            _old(left)
            assert sweep(tmp_path) == []  # its writer holds it
        finally:
            writer.kill()  # SIGKILL: no cleanup of its own runs
            writer.wait(10)
    assert left.exists() and not target.exists()
    other = tmp_path / ".notes.txt.0a1b2c3d.part"
    other.write_text("someone else's")
    _old(other)
    with replacing(target) as written:  # sweeps what was left aside of its own file only
        written.write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, target.name]
    assert sweep(tmp_path) == [other]  # as the nightly job sweeps the day's folders: every file's


def test_sweep_removes_only_abandoned_files_aside_that_have_not_changed_for_a_while(tmp_path: Path) -> None:
    for name in (".report.csv.1234.part", ".journal.xlsx.partial", ".report.json.ab12cd34.part", "report.csv",
                 ".hidden", "movie.part", ".part", ".config"):  # fmt: skip
        (tmp_path / name).write_text("")
    old_part = _old(tmp_path / ".report.csv.1234.part")  # an earlier version's name: the writer's pid
    old_partial = _old(tmp_path / ".journal.xlsx.partial")  # the general journal's, before
    fresh = tmp_path / ".report.json.ab12cd34.part"  # created an instant before its writer locked it
    others = [_old(tmp_path / name) for name in ("report.csv", ".hidden", "movie.part", ".part", ".config")]
    assert sorted(sweep(tmp_path)) == sorted([old_part, old_partial])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, *(p.name for p in others)])
    assert sweep(tmp_path, older_than=0) == [fresh]


def test_sweep_goes_down_as_deep_as_asked_and_ignores_what_is_missing(tmp_path: Path) -> None:
    day = tmp_path / "cinetpay" / "2026-11-21"
    killed = day / "run7" / ".recon_cinetpay_2026-11-21_run7.json.0a1b2c3d.part"
    deeper = day / "run7" / "more" / ".x.csv.0a1b2c3d.part"
    deeper.parent.mkdir(parents=True)
    for path in (killed, deeper):
        path.write_text("half")
        _old(path)
    assert sweep(day) == []
    assert sweep(day, depth=1) == [killed]
    assert deeper.exists()
    assert sweep(tmp_path / "nowhere", depth=3) == []


def test_a_live_writer_of_this_process_is_never_swept_however_old_its_file(tmp_path: Path) -> None:
    """The worker's threads share one process: a sweep in one of them leaves another's file aside alone."""
    target = tmp_path / "report.json"
    with replacing(target) as written:
        written.write_text("half")
        _old(written)
        assert sweep(tmp_path) == [] and sweep(tmp_path, of=target.name, older_than=0) == []
        written.write_text("whole")
    assert target.read_text() == "whole"


def test_where_the_file_system_takes_no_locks_files_are_written_unlocked_and_swept_by_age(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(aside.fcntl, "flock", no_locks)
    target = tmp_path / "journal.csv"
    with replacing(target) as written:
        written.write_text("whole")
    assert target.read_text() == "whole" and [p.name for p in tmp_path.iterdir()] == ["journal.csv"]
    assert "unlocked" in caplog.text
    left = _written_old(tmp_path / ".journal.csv.0a1b2c3d.part")
    (tmp_path / ".journal.csv.4e5f6a7b.part").write_text("half")
    assert sweep(tmp_path) == [left]  # the old one; the fresh one may be being written still


def test_a_folder_that_cannot_be_read_is_skipped_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A sweep comes before writing a report: a run folder it may not read (the tests run as root, so the refusal is
    the file system's, simulated) is logged and skipped, and the rest is swept and written."""
    day = tmp_path / "2026-11-21"
    (day / "run1").mkdir(parents=True)
    (day / "run2").mkdir()
    left = _written_old(day / "run2" / ".recon.csv.0a1b2c3d.part")
    scandir = os.scandir

    def refusing(path: Any) -> Any:
        if Path(path).name == "run1":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(aside.os, "scandir", refusing)
    assert sweep(day, depth=1) == [left]
    assert "not swept in" in caplog.text and "run1" in caplog.text
    with replacing(day / "run1" / "recon.csv") as written:  # its own sweep refused too: it writes all the same
        written.write_text("whole")
    assert (day / "run1" / "recon.csv").read_text() == "whole"


def _written_old(path: Path) -> Path:
    path.write_text("half")
    return _old(path)
