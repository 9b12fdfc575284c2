"""Engine and session factory (one per process, created lazily after fork)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

#: What "the database is unavailable" looks like (a wait, never a loss): the server unreachable, gone or
#: refusing (OperationalError, InterfaceError), or no connection of the pool free in time (every one busy on a
#: slow server): work meeting one of these is put off and done again, not taken for a bug.
DB_UNAVAILABLE: tuple[type[Exception], ...] = (OperationalError, InterfaceError, PoolTimeout)


def make_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> Engine:
    """Create an engine for PostgreSQL (production, tests) or SQLite (embedded demo).

    SQLite gets WAL, a 30 s busy timeout and ``BEGIN IMMEDIATE`` transactions, so that
    concurrent worker threads and processes serialise their writes instead of failing
    with ``database is locked`` when a reader upgrades to a writer.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=pool_size,
        )
        _tune_sqlite(engine)
        return engine
    return create_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        executemany_mode="values_plus_batch",
    )


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, issue BEGIN (see the "begin" hook below).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # A REPLACE that deletes a conflicting row fires its delete triggers (the ledger's references, 0013) only so.
        cursor.execute("PRAGMA recursive_triggers=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def normalize_database_url(value: str) -> str:
    """``value`` on the project's driver: PostgreSQL in the forms hosts hand out (``postgres://``,
    ``postgresql://``, ``postgresql+psycopg2://``) becomes ``postgresql+psycopg2://``; SQLite (the
    demo) stays. Anything else: ValueError saying what is accepted."""
    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError("is not a database URL (e.g. postgresql://user:password@host:5432/db)") from None
    backend, _, driver = url.drivername.partition("+")
    if backend in ("postgres", "postgresql") and driver in ("", "psycopg2"):
        return url.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    if backend == "sqlite":
        return value
    raise ValueError(
        "must be a PostgreSQL URL (postgresql://, postgres:// or postgresql+psycopg2://; payrecon uses psycopg2) "
        f"or SQLite for the demo, got {url.drivername}://"
    )


def storable_text(value: str) -> str:
    """``value`` as PostgreSQL text and JSONB accept it: NUL and lone surrogates, which they
    refuse, written as ``\\u0000``-style escapes. The input itself is kept whole elsewhere (the
    inbox's and dead letters' raw JSON, where the escapes read back as the original)."""
    if "\x00" not in value:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            return value
    return "".join(f"\\u{ord(c):04x}" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in value)


def is_postgres(engine_or_session: Engine | Session) -> bool:
    bind = engine_or_session.get_bind() if isinstance(engine_or_session, Session) else engine_or_session
    return bind.dialect.name == "postgresql"


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)


@contextmanager
def statement_settings(session: Session | Connection, settings: dict[str, str]) -> Iterator[None]:
    """PostgreSQL ``settings`` (``SET LOCAL``; names and values are our constants) for the statements run in the
    block, each back to its default after it, not for the rest of the transaction. When the block raises, its
    transaction is rolled back, and the settings with it."""
    for name, value in settings.items():
        session.execute(text(f"SET LOCAL {name} = '{value}'"))
    yield
    for name in settings:
        session.execute(text(f"SET LOCAL {name} TO DEFAULT"))


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work: commit on success, roll back on any exception, always close."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def lease_rows(
    session: Session,
    model: Any,
    due: Any,
    *,
    where: Sequence[Any],
    until: datetime,
    limit: int,
    order: Sequence[Any] = (),
) -> list[int]:
    """Ids of up to ``limit`` rows of ``model`` due (``where``), oldest ``due`` first, leased: their ``due``
    moves to ``until`` in the same transaction. SKIP LOCKED: two workers leasing at once take different
    rows, and a worker that dies holding them only delays them until ``until``. The one way payrecon takes
    work from PostgreSQL (inbox deliveries, payment re-checks, event deliveries)."""
    ids = list(
        session.scalars(
            select(model.id).where(*where).order_by(due, *order).limit(limit).with_for_update(skip_locked=True)
        )
    )
    if ids:
        session.execute(update(model).where(model.id.in_(ids)).values({due.key: until}))
    return ids


def advisory_key(name: str) -> int:
    """The PostgreSQL advisory lock key of ``name`` (a bigint): one per name in every process of the installation,
    whichever kind of lock takes it (``advisory_lock``'s, for a transaction; a session's, ``runs._alive``)."""
    return int.from_bytes(hashlib.sha256(f"payrecon:{name}".encode()).digest()[:8], "big") >> 1


def advisory_lock(session: Session, name: str, *, shared: bool = False) -> None:
    """Hold the transaction-level advisory lock ``name`` until the session's transaction ends (PostgreSQL; on
    SQLite, the demo's, writers take turns anyway). One lock per name in every process of the installation;
    ``shared``: held by any number of transactions at once, and excluding the exclusive holder."""
    if session.get_bind().dialect.name == "postgresql":
        key = advisory_key(name)
        function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        session.execute(text(f"SELECT {function}(:key)"), {"key": key})
