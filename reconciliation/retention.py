"""Retention: finished inbox rows, dead letters and providers' raw answers past an age go away.

Never unfinished work: a ``received`` inbox row is work and stays whatever its age. The
verification history keeps every row (what was claimed, what was answered, the decision); only
the provider's raw response body is cleared, and the link to a purged inbox row is cut.
Everything is deleted in batches, each its own short transaction, so a purge of months of
webhooks never holds locks the pipeline waits on. With ``archive``, each deleted row is written
first, as one JSON line, so that nothing leaves the database without a copy if asked for.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from reconciliation.db import transaction
from reconciliation.models import DeadLetter, InboxDelivery, InboxStatus, Verification

BATCH = 5000
#: The columns an archived row keeps (its raw input among them).
INBOX_FIELDS = ("id", "provider", "dedupe_key", "status", "reference", "received_at", "first_seen_at",
                "last_seen_at", "repeat_count", "detail", "envelope_raw")  # fmt: skip
LETTER_FIELDS = ("id", "task", "reason", "detail", "provider", "reference", "created_at", "replayed_at", "payload")


@dataclass(frozen=True, slots=True)
class Purged:
    inbox: int
    dead_letters: int
    responses: int  # verifications whose raw provider response was cleared

    def as_dict(self) -> dict[str, int]:
        return {"inbox": self.inbox, "dead_letters": self.dead_letters, "responses": self.responses}


def purge(
    sessions: sessionmaker[Session], before: datetime, *, archive: IO[str] | None = None, batch: int = BATCH
) -> Purged:
    """Remove what finished before ``before``; write each removed row to ``archive`` first."""
    inbox = _in_batches(sessions, lambda session: _purge_inbox(session, before, archive, batch))
    letters = _in_batches(sessions, lambda session: _purge_dead_letters(session, before, archive, batch))
    responses = _in_batches(sessions, lambda session: _clear_responses(session, before, batch))
    return Purged(inbox=inbox, dead_letters=letters, responses=responses)


def _in_batches(sessions: sessionmaker[Session], step: Callable[[Session], int]) -> int:
    total = 0
    while True:
        with transaction(sessions) as session:
            done = step(session)
        total += done
        if done == 0:
            return total


def _purge_inbox(session: Session, before: datetime, archive: IO[str] | None, batch: int) -> int:
    rows = list(
        session.scalars(
            select(InboxDelivery)
            .where(InboxDelivery.status != InboxStatus.RECEIVED, InboxDelivery.last_seen_at < before)
            .order_by(InboxDelivery.id)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
    )
    if not rows:
        return 0
    ids = [row.id for row in rows]
    if archive is not None:
        for row in rows:
            _write(archive, "inbox", row, INBOX_FIELDS)
    session.execute(update(Verification).where(Verification.inbox_id.in_(ids)).values(inbox_id=None))
    session.execute(delete(InboxDelivery).where(InboxDelivery.id.in_(ids)))
    return len(ids)


def _purge_dead_letters(session: Session, before: datetime, archive: IO[str] | None, batch: int) -> int:
    rows = list(
        session.scalars(
            select(DeadLetter)
            .where(DeadLetter.created_at < before)
            .order_by(DeadLetter.id)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
    )
    if not rows:
        return 0
    if archive is not None:
        for row in rows:
            _write(archive, "dead_letter", row, LETTER_FIELDS)
    session.execute(delete(DeadLetter).where(DeadLetter.id.in_([row.id for row in rows])))
    return len(rows)


def _clear_responses(session: Session, before: datetime, batch: int) -> int:
    ids = list(
        session.scalars(
            select(Verification.id)
            .where(Verification.created_at < before, Verification.raw_response.is_not(None))
            .order_by(Verification.id)
            .limit(batch)
        )
    )
    if ids:
        session.execute(update(Verification).where(Verification.id.in_(ids)).values(raw_response=None))
    return len(ids)


def _write(archive: IO[str], kind: str, row: Any, fields: tuple[str, ...]) -> None:
    record = {"kind": kind, **{name: getattr(row, name) for name in fields}}
    archive.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
