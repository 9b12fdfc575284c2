"""Dead letters: input the worker could not process, kept whole with the reason, for replay."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
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
