"""The inbox of webhook deliveries: first raw delivery kept byte for byte, repeats counted."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from reconciliation.dialect import insert
from reconciliation.models import InboxDelivery, InboxStatus
from schemas.messages import WebhookEnvelope


@dataclass(frozen=True, slots=True)
class Stored:
    id: int
    is_new: bool  # False: a repeat of a delivery already in the inbox
    status: InboxStatus


def store(
    session: Session,
    envelope: WebhookEnvelope,
    raw: str,
    *,
    dedupe_key: str,
    reference: str | None,
    status: InboxStatus,
    now: datetime,
    detail: str = "",
) -> Stored:
    """Insert the delivery, or count a repeat of it. Never overwrites the first one."""
    table = InboxDelivery.__table__
    statement = insert(session, InboxDelivery).values(
        provider=envelope.provider.value,
        dedupe_key=dedupe_key,
        status=status,
        reference=reference,
        method=envelope.method,
        path=envelope.path,
        headers=dict(envelope.headers),
        body=envelope.body,
        envelope_raw=raw,
        received_at=envelope.received_at,
        first_seen_at=now,
        last_seen_at=now,
        repeat_count=0,
        detail=detail,
    )
    statement = statement.on_conflict_do_update(
        index_elements=["provider", "dedupe_key"],
        set_={"repeat_count": table.c.repeat_count + 1, "last_seen_at": now},
    ).returning(table.c.id, table.c.repeat_count, table.c.status)
    row = session.execute(statement).one()
    return Stored(id=row.id, is_new=row.repeat_count == 0, status=InboxStatus(row.status))


def mark(session: Session, inbox_id: int, status: InboxStatus, detail: str = "") -> None:
    session.execute(update(InboxDelivery).where(InboxDelivery.id == inbox_id).values(status=status, detail=detail))


def reopen(session: Session, inbox_id: int) -> bool:
    """Take a delivery that was given up on (``failed``) back for verification, once.

    Used when the same delivery arrives again (a provider redelivery, or an operator's
    dead-letter replay): the conditional UPDATE lets only one of concurrent repeats win.
    """
    reopened = session.execute(
        update(InboxDelivery)
        .where(InboxDelivery.id == inbox_id, InboxDelivery.status == InboxStatus.FAILED)
        .values(status=InboxStatus.RECEIVED, detail="reopened by a repeat delivery")
        .returning(InboxDelivery.id)
    ).first()
    return reopened is not None
