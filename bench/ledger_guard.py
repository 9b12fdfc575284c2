"""The ledger's balance guard: journals posted per second under the old guard and the new one.

    .venv/bin/python bench/ledger_guard.py --journals 20000

Old guard: migration 0001's deferrable constraint trigger FOR EACH ROW on entries and journals
(three queries per row, run at COMMIT). New guard: migration 0010's AFTER INSERT triggers FOR EACH
STATEMENT over the transition tables. Each guard gets a scratch PostgreSQL database of its own
(migrated to 0009, and to 0012), and a third one at 0012 with the balance triggers disabled shows
what the writes cost with no guard at all (the foreign keys still there); a fourth, at head,
measures 0013's guard, which also checks the references that have no foreign keys any more. In
each, N two-entry journals (Dr clearing / Cr revenue, XOF) are posted in ONE transaction, timed
until its COMMIT returns (the old guard does its work there), through:

- ``post_many``: ``ledger.post_many``, one statement per ``ledger.POST_CHUNK`` journals;
- ``post``: ``ledger.post``, one call (one statement) per journal, as the webhook path does;
- ``post, before 0010``: the writer ``ledger.post`` was before 0010 (the journal flushed by the
  ORM, then an account look-up per line, then the entries flushed): the hot path as it was. Under
  the new guard it is refused (its journal has no entries when its statement ends), so it runs
  only under the old guard and with none.

Before each measurement the ledger is emptied and holds ``--base`` journals again (written in
bulk around the guard, then analyzed), so that the guards' queries are planned for a ledger that
is not empty, as in production; then a few journals are posted, so that PL/pgSQL has compiled
the guard. ``--base 0`` shows a new or just emptied ledger instead: there the old guard's
queries, planned while the table was nearly empty, stay sequential scans for the connection's
life (until the table is analyzed), and each journal costs more the more entries there are. Needs
PostgreSQL as for the tests (PAYRECON_TEST_PG), as a superuser (the base is written with
``session_replication_role = replica``).

Prints, for each guard and writer, the median over ``--repeat`` rounds (each round measures every
guard and writer in turn, so that a busy spell of a shared machine does not fall on one guard
only) of journals/s (wall time), and of the CPU time per journal of the PostgreSQL backend (read
from /proc: PostgreSQL on this machine) and of this process. CPU time is the steadier figure on a
machine that is doing other work.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reconciliation import ledger, migrate
from reconciliation.db import make_engine, session_factory, transaction
from reconciliation.models import Entry, Journal
from tests.helpers import scratch_database

PG_BASE = os.environ.get("PAYRECON_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")
LEDGER_TABLES = "payout_postings, ledger_entries, ledger_journals, ledger_accounts"
WARM_UP = 20


def lines(i: int) -> list[ledger.Line]:
    return ledger.transfer(ledger.clearing("cinetpay"), ledger.REVENUE, 1_000 + i % 5_000, "XOF")


def with_post_many(session: Session, n: int) -> None:
    ledger.post_many(session, [ledger.NewJournal(lines(i), kind="bench", memo=f"bench {i}") for i in range(n)])


def with_post(session: Session, n: int) -> None:
    for i in range(n):
        ledger.post(session, lines(i), kind="bench", memo=f"bench {i}")


def with_post_before_0010(session: Session, n: int) -> None:
    """``ledger.post`` as it was before migration 0010: journal, then entries, by the ORM."""
    for i in range(n):
        journal = Journal(kind="bench", memo=f"bench {i}")
        session.add(journal)
        session.flush()
        for line in lines(i):
            session.add(
                Entry(
                    journal_id=journal.id,
                    account_id=ledger.account_id(session, line.account, line.currency),
                    side=line.side,
                    amount=line.amount,
                    currency=line.currency,
                )
            )
        session.flush()


WRITERS: dict[str, Callable[[Session, int], None]] = {
    "post_many": with_post_many,
    "post": with_post,
    "post, before 0010": with_post_before_0010,
}


def seed(sessions: sessionmaker[Session], base: int) -> None:
    """An emptied ledger that holds ``base`` balanced journals again, written around the guard, analyzed."""
    with transaction(sessions) as session:
        session.execute(text(f"TRUNCATE {LEDGER_TABLES} RESTART IDENTITY CASCADE"))
        session.execute(text("SET LOCAL session_replication_role = replica"))
        session.execute(
            text("INSERT INTO ledger_accounts (code, currency) VALUES (:debit, 'XOF'), (:credit, 'XOF')"),
            {"debit": ledger.clearing("cinetpay"), "credit": ledger.REVENUE},
        )
        session.execute(
            text("INSERT INTO ledger_journals (kind, memo) SELECT 'base', '' FROM generate_series(1, :n)"), {"n": base}
        )
        session.execute(
            text(
                "INSERT INTO ledger_entries (journal_id, account_id, side, amount, currency) "
                "SELECT j, e.account, e.side, 1000, 'XOF' FROM generate_series(1, :n) AS j, "
                "(VALUES (1, 'debit'), (2, 'credit')) AS e (account, side) ORDER BY j, e.account"
            ),
            {"n": base},
        )
        session.execute(text("ANALYZE ledger_accounts, ledger_journals, ledger_entries"))


@dataclass(frozen=True, slots=True)
class Timing:
    wall: float  # seconds, COMMIT included
    server: float | None  # CPU seconds of the PostgreSQL backend (None: not on this machine)
    client: float  # CPU seconds of this process


def backend_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) a local PostgreSQL backend has used; less noisy than wall time
    on a shared machine. ``None`` when the server is not on this machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(sessions: sessionmaker[Session], writer: Callable[[Session, int], None], n: int, base: int) -> Timing:
    """Post ``n`` journals in one transaction, COMMIT included, on top of ``base`` journals."""
    seed(sessions, base)
    with transaction(sessions) as session:
        writer(session, WARM_UP)
    with transaction(sessions) as session:
        pid = int(session.scalar(text("SELECT pg_backend_pid()")) or 0)
        server0, client0, started = backend_cpu(pid), time.process_time(), time.perf_counter()
        writer(session, n)
    wall, client, server1 = time.perf_counter() - started, time.process_time() - client0, backend_cpu(pid)
    with sessions() as session:
        assert session.scalar(text("SELECT count(*) FROM ledger_journals")) == base + WARM_UP + n  # noqa: S101
        assert not ledger.unbalanced_journals(session)  # noqa: S101
    server = server1 - server0 if server0 is not None and server1 is not None else None
    return Timing(wall, server, client)


#: (label, Alembic revision, balance triggers disabled, writers measured)
GUARDS = [
    ("old: row-level, deferred (0001)", "0009", False, list(WRITERS)),
    ("new: statement-level (0010)", "0012", False, ["post_many", "post"]),
    ("none: balance triggers disabled", "0012", True, list(WRITERS)),
    # 0013: the guard also checks the references, which have no foreign keys any more.
    ("0013: guard checks references, no FKs", "head", False, ["post_many", "post"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--journals", type=int, default=20_000, help="journals per measurement (default 20000)")
    parser.add_argument("--base", type=int, default=100_000, help="journals already in the ledger (default 100000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds over every guard and writer (default 3)")
    args = parser.parse_args()
    n, base = args.journals, args.base
    print(f"{n:,} two-entry journals per measurement, one transaction (COMMIT included), over {base:,} journals;")
    print(f"medians of {args.repeat} rounds, each round measuring every guard and writer in turn")
    with ExitStack() as stack:
        databases = []
        for label, revision, disable, writers in GUARDS:
            url = stack.enter_context(scratch_database(PG_BASE, "payrecon_bench_guard"))
            migrate.upgrade(url, revision)
            engine = make_engine(url)
            stack.callback(engine.dispose)
            if disable:
                with engine.begin() as conn:
                    conn.execute(text("ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_balanced"))
                    conn.execute(text("ALTER TABLE ledger_journals DISABLE TRIGGER ledger_journals_balanced"))
            databases.append((label, session_factory(engine), writers))
        timings: dict[tuple[str, str], list[Timing]] = defaultdict(list)
        for _ in range(args.repeat):
            for label, sessions, writers in databases:
                for name in writers:
                    timings[label, name].append(measure(sessions, WRITERS[name], n, base))
    print(f"{'guard':<34} {'writer':<18} {'journals/s':>11} {'server CPU':>14} {'client CPU':>14}")
    for (label, name), runs in timings.items():
        wall = median(t.wall for t in runs)
        servers = [t.server for t in runs if t.server is not None]
        server = f"{median(servers) / n * 1e6:,.0f} us/j" if servers else "-"
        client = f"{median(t.client for t in runs) / n * 1e6:,.0f} us/j"
        print(f"{label:<34} {name:<18} {n / wall:>11,.0f} {server:>14} {client:>14}")


if __name__ == "__main__":
    main()
