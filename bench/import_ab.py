"""One statement import timed stage by stage, for two versions of the code alternated on copies of one database (#14).

    .venv/bin/python bench/import_ab.py --payments 1000000 --pairs 3                     # this tree, three times
    .venv/bin/python bench/import_ab.py --payments 1000000 --pairs 3 --code /path/to/other/checkout

``bench/reconcile_scale.py`` times a whole run once; a change to one stage of the import (a cheaper check in the
convert-and-insert statement) moves less than the machine's noise between two such runs. Here the bench's
CinetPay day (``reconcile_scale.seed_payments`` and ``write_statement``: N payments, vacuumed, analyzed and
checkpointed, and the day's statement file) is built once in a template database, and each import runs on a fresh
copy of it (``CREATE DATABASE ... TEMPLATE``), in a child process started in the code tree under test (its own
``PYTHONPATH``), for each ``--code`` in turn, then the other way round (default: this tree; give one to compare
it with this tree, ``--code`` twice to compare two others). Each tree runs on the schema of its own
migrations (``bench/ab.py``: an older tree's copy is taken down to its last migration). Each import's
``progress`` stages are timed from the first report of a stage to the first of the next: ``checksum`` (the file's
SHA-256, the import row, the load's lock, the sweep of failed loads), ``check`` (reading the file for what COPY
cannot take), ``copy`` (COPY to the stage table), ``insert`` (the optimistic convert-and-insert statement, two
sessions side by side, to the commit); and the whole ``import_file``; and the CPU the import cost PostgreSQL (every
process of its cluster, ended ones included, as ``bench/throughput.py`` counts them: on a shared machine other
databases' work counts too), less noisy than the times when the machine's speed moves. An import that leaves the
optimistic path (for the strict one, or Python's) stops the run: its stages would not compare. Last line, per tree:
``code=<dir> insert_s=<median> import_s=<median> postgres_cpu_s=<median>``. Needs PostgreSQL as for the tests
(``PAYRECON_TEST_PG``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import ab
import reconcile_scale

STAGES = ("checksum", "check", "copy", "insert")

#: What a child runs in the tree under test: one import, its stages' times as JSON on the last line.
CHILD = """
import json, sys, time
from pathlib import Path
from zoneinfo import ZoneInfo
from reconciliation.db import make_engine, session_factory, transaction
from reconciliation.statements import pg as statements_pg
from reconciliation.statements.files import import_file

strict = []  # the optimistic statement refused a row: the strict path converted the file instead
_strict = statements_pg._strict
def _counted(*args, **kwargs):
    strict.append(True)
    return _strict(*args, **kwargs)
statements_pg._strict = _counted

url, path = sys.argv[1], Path(sys.argv[2])
first = {}
def progress(stage, done, total):
    first.setdefault(stage, time.perf_counter())
engine = make_engine(url, pool_size=2)
sessions = session_factory(engine)
started = time.perf_counter()
with transaction(sessions) as session:
    imported = import_file(session, "cinetpay", path, business_tz=ZoneInfo("Africa/Abidjan"), progress=progress)
ended = time.perf_counter()
engine.dispose()
marks = sorted(first.items(), key=lambda item: item[1]) + [("end", ended)]
stages = {name: marks[i + 1][1] - at for i, (name, at) in enumerate(marks[:-1])}
path = "python" if "rows" in first else "strict" if strict else "optimistic"
print(json.dumps({"rows": imported.rows, "import": ended - started, "stages": stages, "path": path}))
"""


def _prepare(url: str, tmp: Path, payments: int) -> list[str]:
    """The day's payments seeded and its statement written; the child's argument: the statement."""
    statement = tmp / "cinetpay-2026-11-20.csv"
    built = time.perf_counter()
    reconcile_scale.seed_payments(url, payments, False)
    reconcile_scale.write_statement(statement, payments, False)
    print(f"{payments} payments and the day's statement in {time.perf_counter() - built:.1f} s")
    return [str(statement)]


def _measure(n: int, tree: Path, result: dict[str, Any], spent: float) -> dict[str, float]:
    if result["path"] != "optimistic":  # its "insert" stage would be another thing, or absent
        raise SystemExit(f"the import in {tree} took the {result['path']} path, not the optimistic one")
    figures = {**result["stages"], "import": result["import"], "postgres_cpu": spent}
    shown = ", ".join(f"{name} {figures.get(name, 0.0):.2f} s" for name in (*STAGES, "import", "postgres_cpu"))
    print(f"{n}: {tree}: {result['rows']} lines; {shown}", flush=True)
    return figures


def main() -> None:
    ab.compare(
        __doc__ or "",
        what="imports",
        database="payrecon_import_ab",
        child=CHILD,
        prepare=_prepare,
        measure=_measure,
        names=("insert", "import", "postgres_cpu"),
    )


if __name__ == "__main__":
    main()
