"""Heartbeats: a process says it is alive by writing when it last did its work (beat: each job it dispatches);
``payrecon health`` reads how long ago that was."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from reconciliation.dialect import insert
from reconciliation.models import Heartbeat


def record(session: Session, name: str, at: datetime) -> None:
    upsert = insert(session, Heartbeat).values(name=name, at=at)
    session.execute(upsert.on_conflict_do_update(index_elements=["name"], set_={"at": at}))


def last(session: Session, name: str) -> datetime | None:
    return session.scalar(select(Heartbeat.at).where(Heartbeat.name == name))
