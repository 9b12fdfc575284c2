"""Alembic environment. The URL comes from the Config (set by ``reconciliation.migrate``)
or from ``DATABASE_URL``."""

from __future__ import annotations

import os
import warnings

from alembic import context
from sqlalchemy import MetaData, engine_from_config, pool
from sqlalchemy.exc import SAWarning

from reconciliation.db import normalize_database_url
from reconciliation.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("DATABASE_URL is not set: it must name the database to migrate")
    try:
        return normalize_database_url(url)
    except ValueError as exc:
        raise SystemExit(f"DATABASE_URL {exc}") from None


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    section = config.get_section(config.config_ini_section, {})
    section["sqlalchemy.url"] = _url()
    engine = engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _for_this_database(dialect: str) -> MetaData:
    """The models' metadata as this database should have it: without the indexes they create on other databases
    only (``Index.ddl_if``, which Alembic does not read), so that such an index found here shows as one to drop."""
    elsewhere = set()
    for table in Base.metadata.tables.values():
        for index in table.indexes:
            rule = getattr(index, "_ddl_if", None)  # what Index.ddl_if() set (SQLAlchemy's DDLIf)
            if rule is not None and rule.dialect is not None:
                dialects = (rule.dialect,) if isinstance(rule.dialect, str) else tuple(rule.dialect)
                if dialect not in dialects:
                    elsewhere.add(index.name)
    if not elsewhere:
        return Base.metadata
    here = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.sorted_tables:
        copy = table.to_metadata(here)
        for index in [index for index in copy.indexes if index.name in elsewhere]:
            copy.indexes.discard(index)
    return here


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=_for_this_database(connection.dialect.name),  # type: ignore[attr-defined]
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction(), warnings.catch_warnings():
        # SQLAlchemy cannot reflect SQLite's expression indexes (``ix_payments_business_time``): it says so and
        # skips them, and so does the drift check (it compares them on PostgreSQL).
        warnings.filterwarnings(
            "ignore", "Skipped unsupported reflection of expression-based index ix_payments_business_time$", SAWarning
        )
        warnings.filterwarnings(
            "ignore",
            "autogenerate skipping metadata-specified expression-based index 'ix_payments_business_time'; "
            "dialect 'sqlite'",
            UserWarning,
        )
        if connection.dialect.name == "postgresql":  # type: ignore[attr-defined]
            # Two deploys migrating at once must not interleave.
            context.execute("SELECT pg_advisory_xact_lock(7072698)")
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
