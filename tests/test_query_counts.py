"""Query-count guards (#15): the webhook path costs the same SQL statements for a batch of 5 deliveries as for
a batch of 25 (set-wise, no statement per delivery), and healing a lost webhook costs a fixed number of
statements each. A loop that queries once per row fails here, before it shows in a benchmark."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event

from providers.sandbox.client import SandboxClient
from reconciliation.models import PaymentStatus
from reconciliation.nightly import runs
from tests.helpers import new_reference
from tests.test_batches import outcomes, paid
from tests.test_reconciliation import DAY, line, payment, policy
from worker import pipeline
from worker.pipeline import Disposition
from worker.runtime import Runtime


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """Every SQL statement sent to PostgreSQL meanwhile (an executemany counts once: one round trip)."""
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_a_batch_of_25_costs_the_statements_of_a_batch_of_5(rt: Runtime, sandbox: SandboxClient) -> None:
    pipeline.ingest_batch(rt, [paid(rt, sandbox, new_reference()) for _ in range(3)])  # accounts exist from now on
    small = [paid(rt, sandbox, new_reference()) for _ in range(5)]
    large = [paid(rt, sandbox, new_reference()) for _ in range(25)]
    with statements(rt.engine) as five:
        assert outcomes(pipeline.ingest_batch(rt, small)) == [Disposition.ACCEPTED] * 5
    with statements(rt.engine) as twenty_five:
        assert outcomes(pipeline.ingest_batch(rt, large)) == [Disposition.ACCEPTED] * 25
    assert len(twenty_five) == len(five), "\n".join(sorted(set(twenty_five) - set(five)) or twenty_five)
    assert len(five) == PER_BATCH, "\n".join(five)


def _heal(rt: Runtime, lost: int) -> int:
    for _ in range(lost):  # pending with us, paid in the statement: a lost webhook the run heals
        ref = new_reference()
        payment(rt, ref, PaymentStatus.PENDING)
        line(rt, ref)
    run_id = runs.start(rt.sessions, "cinetpay", DAY, policy(rt), "manual")
    runs.classify_run(rt.sessions, run_id, policy(rt), parallel=1)
    with statements(rt.engine) as sent:
        assert runs.heal(rt.sessions, run_id, policy(rt)) == lost
    return len(sent)


def test_healing_costs_a_fixed_number_of_statements_per_lost_webhook(rt: Runtime) -> None:
    two, six = _heal(rt, 2), _heal(rt, 4)  # the second run heals the 4 new ones (the first 2 are matched now)
    per_payment = (six - two) / 2
    assert per_payment == PER_HEALED, (two, six)


#: Statements per healed payment (its own transaction: lock or adopt the payment, settle the answer, post the
#: journal, grant, flag, outbox, the item), and per batch of webhooks whatever its size (store, mark, read the
#: payments, settle set-wise, coalesce, the pool's pre-pings): measured 2026-12-05. A change that moves them
#: says so here, on purpose: 2026-12-07, the item updated by one statement (runs.exception_item), not read then
#: flushed, 20 -> 19.
PER_HEALED = 19
PER_BATCH = 15
