"""Dialect-specific INSERT ... ON CONFLICT, the one thing PostgreSQL and SQLite spell alike."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert(session: Session, table: Any) -> Any:
    """``INSERT`` construct with ``on_conflict_do_nothing/do_update`` for the session's database."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
