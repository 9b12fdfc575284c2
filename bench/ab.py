"""What the A/B benches share (``bench/import_ab.py``, ``bench/fees_reports_ab.py``): code trees timed in turn on
fresh copies of one template database, each in a child process started in the tree under test, with the CPU the
child cost PostgreSQL.

Each run copies the template (``CREATE DATABASE ... TEMPLATE``; migrated by this tree, the copy is taken down to
the tree's own last migration when that is an older one, by this tree's migrations, so that each tree runs on its
own schema; what a downgrade rebuilds is built by ``CREATE INDEX``, compact, where the template's grew row by
row), checkpoints, runs the child (``python -c CHILD``
with the tree as its working directory and ``PYTHONPATH``, the copy's URL and the given arguments), counts the CPU
of every process of the PostgreSQL cluster meanwhile (as ``bench/throughput.py`` counts it: on a shared machine
other databases' work counts too), drops the copy, and returns the JSON object the child printed on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, text
from throughput import CLOCK_TICKS, _proc_table, _tree_ticks, postgres_roots

from reconciliation import migrate
from tests.helpers import scratch_database

PG_BASE = os.environ.get("PAYRECON_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")


def compare(
    doc: str,
    *,
    what: str,
    database: str,
    child: str,
    prepare: Callable[[str, Path, int], list[str]],
    measure: Callable[[int, Path, dict[str, Any], float], dict[str, float]],
    names: tuple[str, ...],
) -> None:
    """An A/B bench's whole run, ``doc`` its help: the arguments (``what`` a pair runs), a scratch database migrated
    by this tree, ``prepare(url, tmp, payments)`` building the template in it and returning the child's arguments,
    then ``child`` in each tree in turn (``alternated``), ``measure(pair, tree, result, postgres_cpu)`` printing a
    run's line and returning its figures, and the last lines: the ``names``' medians per tree."""
    root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments(parser, what)
    args = parser.parse_args()
    chosen = trees(root, args.code)
    cluster = Cluster()
    times: dict[Path, list[dict[str, float]]] = {tree: [] for tree in chosen}
    with scratch_database(PG_BASE, database) as url, tempfile.TemporaryDirectory() as tmp:
        migrate.upgrade(url)
        argv = prepare(url, Path(tmp), args.payments)
        for n, tree in alternated(chosen, args.pairs):
            result, spent = cluster.run(url, tree, child, *argv)
            times[tree].append(measure(n, tree, result, spent))
    cluster.dispose()
    for line in medians(times, names):
        print(line)


def arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--payments``, ``--pairs`` and ``--code`` (``what``: what a pair runs, for the help)."""
    parser.add_argument("--payments", type=int, default=1_000_000)
    parser.add_argument("--pairs", type=int, default=3, help=f"{what} per tree, alternated")
    parser.add_argument("--code", type=Path, action="append", help="a code tree to time (repeatable)")


def trees(root: Path, code: list[Path] | None) -> list[Path]:
    """The trees to time: ``root`` alone, ``root`` and one other, or the two (or more) given."""
    chosen = [root, *code] if code and len(code) == 1 else (code or [root])
    return [tree.resolve() for tree in chosen]


def alternated(chosen: list[Path], pairs: int) -> Iterator[tuple[int, Path]]:
    """(pair number from 1, tree), the trees in turn and the other way round the next time: neither always first."""
    for n in range(pairs):
        for tree in chosen if n % 2 == 0 else chosen[::-1]:
            yield n + 1, tree


class Cluster:
    """The PostgreSQL cluster of ``PG_BASE``: an administrative engine and the processes whose CPU is counted."""

    def __init__(self) -> None:
        self.admin: Engine = create_engine(f"{PG_BASE}/postgres", isolation_level="AUTOCOMMIT")
        self.roots = postgres_roots(self.admin)
        if not self.roots:
            raise SystemExit("the PostgreSQL cluster's processes are out of sight: its CPU cannot be counted")

    def run(self, template_url: str, tree: Path, child: str, *argv: str) -> tuple[dict[str, Any], float]:
        """``child`` run in ``tree`` on a fresh copy of the template: (its last line's JSON, PostgreSQL's CPU, s)."""
        base, template = template_url.rsplit("/", 1)
        copy = f"{template}_copy"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{copy}" TEMPLATE "{template}"'))
        try:
            schema = schema_of(tree)
            if schema != migrate.current_heads(f"{base}/{copy}")[0]:
                migrate.downgrade(f"{base}/{copy}", schema)  # an older tree: its schema, by this tree's migrations
            with self.admin.connect() as conn:
                conn.execute(text("CHECKPOINT"))
            before = _tree_ticks(self.roots, _proc_table())
            done = subprocess.run(
                [sys.executable, "-c", child, f"{base}/{copy}", *argv],
                cwd=tree,
                env={**os.environ, "PYTHONPATH": str(tree)},
                capture_output=True,
                text=True,
                check=False,
            )
            spent = (_tree_ticks(self.roots, _proc_table()) - before) / CLOCK_TICKS
        finally:
            with self.admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)'))
        if done.returncode != 0:
            raise SystemExit(f"the run in {tree} failed:\n{done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1]), spent

    def dispose(self) -> None:
        self.admin.dispose()


def _scripts(location: Path) -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(location))
    return ScriptDirectory.from_config(config)


def schema_of(tree: Path) -> str:
    """The last migration of ``tree``'s code; one this tree does not have cannot be reached from its template."""
    head = _scripts(tree / "reconciliation" / "migrations").get_current_head()
    known = {script.revision for script in _scripts(migrate.MIGRATIONS).walk_revisions()}
    if head not in known:
        raise SystemExit(f"{tree}'s schema ({head}) is newer than this tree's: run the bench from the newer tree")
    return str(head)


def medians(times: dict[Path, list[dict[str, float]]], names: tuple[str, ...]) -> Iterator[str]:
    """The last lines, one per tree: ``code=<dir> <name>_s=<median> ...``."""
    for tree, runs in times.items():
        figures = " ".join(f"{name}_s={statistics.median(run[name] for run in runs):.2f}" for name in names)
        yield f"code={tree} {figures}"
