"""Dead letters: input the worker could not process, kept whole with the reason, for replay."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from reconciliation import facts
from reconciliation.db import storable_text
from reconciliation.models import DeadLetter


def record(
    session: Session,
    *,
    task: str,
    reason: str,
    detail: str,
    payload: str,
    now: datetime,
    provider: str | None = None,
    reference: str | None = None,
) -> DeadLetter:
    letter = DeadLetter(
        task=task,
        reason=reason,
        detail=storable_text(detail),
        payload=storable_text(payload),
        provider=provider,
        reference=reference,
        created_at=now,
    )
    session.add(letter)
    session.flush()
    facts.note(session, "dead_letter", reason=reason)
    return letter


def pending(session: Session, *, include_replayed: bool = False, limit: int = 100) -> list[DeadLetter]:
    query = select(DeadLetter).order_by(DeadLetter.id).limit(limit)
    if not include_replayed:
        query = query.where(DeadLetter.replayed_at.is_(None))
    return list(session.scalars(query))


def mark_replayed(session: Session, letter_id: int, now: datetime) -> None:
    """The letter was sent again (``payrecon dead-letters replay``), after its message went out."""
    session.execute(update(DeadLetter).where(DeadLetter.id == letter_id).values(replayed_at=now))
