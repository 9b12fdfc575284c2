"""Matching (``reconciliation.nightly.matching``): one set-based pass classifies a business day's references,
our payments against the provider's lines, and the payouts the day touches. Real PostgreSQL; the
run around it is ``tests/test_runs.py``, the whole nightly reconciliation ``tests/test_reconciliation.py``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import event, insert, select, text

from reconciliation.db import transaction
from reconciliation.models import Payment, PaymentStatus, ReconItem, StatementLine
from reconciliation.nightly import matching, runs
from reconciliation.statements.files import VISIBLE_SQL
from tests.helpers import new_reference, plan_nodes
from tests.test_reconciliation import DAY, NOON, classes, line, payment, policy
from worker.runtime import Runtime

START, END = runs.business_window(DAY, ZoneInfo("Africa/Abidjan"))


def classify(rt: Runtime, *, part: tuple[int, int] | None = None, **over: Any) -> dict[str | None, str]:
    """``matching.classify`` of the day in a run of its own: {reference: class}."""
    run_id = runs.start(rt.sessions, "cinetpay", DAY, policy(rt), "manual")
    window = matching.Window(**{"provider": "cinetpay", "start": START, "end": END, "sla_cutoff": NOON, **over})
    with transaction(rt.sessions) as session:
        written = matching.classify(session, run_id, window, DAY, part)
    found = classes(rt, run_id)
    assert written == len(found)
    return found


def test_every_reference_is_classified_in_exactly_one_share(rt: Runtime) -> None:
    """``part=(k, n)``: the shares are disjoint and together are the whole day, each reference whole in one."""
    refs = [new_reference() for _ in range(24)]
    for n, ref in enumerate(refs):
        payment(rt, ref, PaymentStatus.SUCCEEDED)
        line(rt, ref, amount=5000 if n % 3 else 4000)
        if n % 4 == 0:
            line(rt, ref)  # a second line: the reference must not be split between shares
    whole = classify(rt)
    shares = [classify(rt, part=(k, 3)) for k in range(3)]
    assert sum(len(share) for share in shares) == len(whole) == len(refs)
    assert {ref: cls for share in shares for ref, cls in share.items()} == whole
    assert all(share for share in shares)  # 24 references spread over all three


def test_a_payment_still_pending_within_its_sla_is_not_an_exception_yet(rt: Runtime) -> None:
    waiting, silent = new_reference(), new_reference()
    payment(rt, waiting, PaymentStatus.PENDING)
    line(rt, waiting, "pending")
    payment(rt, silent, PaymentStatus.REGISTERED)
    assert classify(rt, sla_cutoff=NOON - timedelta(hours=1)) == {}
    assert classify(rt, sla_cutoff=NOON + timedelta(minutes=1)) == {
        waiting: "missing_after_sla",
        silent: "missing_after_sla",
    }


def test_the_expected_fee_rounds_half_up_and_no_fee_schedule_checks_no_fee(rt: Runtime) -> None:
    exact, short = new_reference(), new_reference()
    for ref, fee in ((exact, 1), (short, 0)):  # 1 % of 50 is 0.5: 1 expected
        payment(rt, ref, PaymentStatus.SUCCEEDED, amount=50)
        line(rt, ref, amount=50, fee=fee)
    assert classify(rt, fee_bps=100) == {exact: "matched", short: "fee_variance"}
    with rt.sessions() as session:
        assert set(session.scalars(select(ReconItem.expected_fee).where(ReconItem.reference == exact))) == {1}
    assert classify(rt) == {exact: "matched", short: "matched"}


def test_a_tolerance_excuses_an_amount_never_another_currency(rt: Runtime) -> None:
    ref = new_reference()
    payment(rt, ref, PaymentStatus.SUCCEEDED)
    line(rt, ref, amount=5000, currency="XAF")
    assert classify(rt, tolerance=5) == {ref: "currency_mismatch"}


def test_only_the_lines_of_the_business_day_count(rt: Runtime) -> None:
    ref = new_reference()
    payment(rt, ref, PaymentStatus.SUCCEEDED)
    line(rt, ref, at=NOON + timedelta(days=1))  # the provider put it on the next day
    assert classify(rt) == {ref: "missing_at_provider"}


def test_amount_tolerance(rt: Runtime) -> None:
    ref = new_reference()
    payment(rt, ref, PaymentStatus.SUCCEEDED)
    line(rt, ref, amount=4995)
    assert classes(rt, runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt)))[ref] == "amount_mismatch"
    assert classes(rt, runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt, tolerance=5)))[ref] == "matched"


def test_payouts_are_matched_to_the_payments_they_settle(rt: Runtime) -> None:
    def stored(ref: str | None, status: str, amount: int, fee: int, payout: str, at: datetime) -> None:
        with rt.sessions() as session, session.begin():
            session.execute(insert(StatementLine), [{
                "provider": "wave", "business_date": at.date(), "source": "file", "reference": ref,
                "status": status, "amount": amount, "currency": "XOF", "fee": fee, "occurred_at": at,
                "provider_txn_id": f"T-{new_reference()}", "payout_id": payout, "raw": "",
            }])  # fmt: skip

    next_day = NOON + timedelta(days=1)
    stored("CR-1", "succeeded", 6500, 65, "PO-1", NOON)
    stored("CR-2", "succeeded", 65000, 650, "PO-1", NOON)
    stored(None, "payout", 70785, 0, "PO-1", next_day)  # paid out the next day: found by its id
    stored("CR-3", "succeeded", 6500, 65, "PO-2", NOON)
    stored(None, "payout", 6000, 0, "PO-2", NOON)
    stored("CR-4", "succeeded", 6500, 65, "PO-3", NOON)  # its payout is not reported yet
    stored(None, "payout", 1000, 0, "PO-4", NOON)  # nothing of ours behind it
    run_id = runs.reconcile_stored(rt.sessions, "wave", DAY, policy(rt))
    with rt.sessions() as session:
        from reconciliation.reports import run as reports

        found = {p["payout_id"]: p for p in reports.payouts(session, run_id)}
        text = reports.render_terminal(session, run_id)
    assert {k: v["status"] for k, v in found.items()} == {
        "PO-1": "matched", "PO-2": "mismatch", "PO-3": "pending", "PO-4": "unexplained",
    }  # fmt: skip
    assert (found["PO-1"]["payments"], found["PO-1"]["settled_net"]) == (2, 70785)
    assert found["PO-2"]["difference"] == 6000 - 6435
    assert "PO-2: mismatch, 1 payment(s), paid 6000 vs net 6435 XOF" in text


def test_a_refunded_payment_matches_a_refund_and_is_never_healed_back(rt: Runtime) -> None:
    """After a refund (the operator's, or one a statement reported), re-runs see both sides refunded."""
    agreed, disputed = new_reference(), new_reference()
    payment(rt, agreed, PaymentStatus.REFUNDED)
    payment(rt, disputed, PaymentStatus.REFUNDED)
    line(rt, agreed, "refunded")
    line(rt, disputed)  # the provider still says paid: finance must look, we must not settle it again
    run_id = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))
    assert classes(rt, run_id) == {agreed: "matched", disputed: "status_mismatch"}
    with rt.sessions() as session:
        statuses = dict(session.execute(select(Payment.reference, Payment.status)).all())
    assert statuses == {agreed: PaymentStatus.REFUNDED, disputed: PaymentStatus.REFUNDED}


def test_the_classification_s_planner_settings_end_with_its_statement(rt: Runtime) -> None:
    """``enable_sort`` off and a large ``work_mem`` are for the classifying statement only, not for what the run
    does next in the same transaction (payouts, healing)."""
    run_id = runs.start(rt.sessions, "cinetpay", DAY, policy(rt), "manual")
    window = matching.Window(provider="cinetpay", start=START, end=END, sla_cutoff=NOON)
    with transaction(rt.sessions) as session:
        before = [session.execute(text(f"SHOW {name}")).scalar() for name in ("enable_sort", "work_mem")]
        matching.classify(session, run_id, window, DAY)
        assert [session.execute(text(f"SHOW {name}")).scalar() for name in ("enable_sort", "work_mem")] == before


def _add_payments(session: Any, provider: str, n: int, step: str) -> None:
    """``n`` succeeded payments of ``provider``, one every ``step`` back from noon of the day."""
    session.execute(
        text(
            "INSERT INTO payments (provider, reference, status, amount, currency, periods, provider_data, "
            "settled, check_count, created_at, updated_at, paid_at) "
            "SELECT :provider, :provider || '-' || :step || '-' || n, 'succeeded', 5000, 'XOF', 1, '{}', true, 0, "
            "at, at, at FROM generate_series(1, :n) AS n, LATERAL (SELECT :day - n * CAST(:step AS interval) AS at) t"
        ),
        {"provider": provider, "n": n, "step": step, "day": NOON},
    )
    session.execute(text("ANALYZE payments"))


def _plans(session: Any, run: Callable[[], object]) -> list[Any]:
    """EXPLAIN (FORMAT JSON) of each SELECT on payments that ``run`` makes."""
    asked: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "payments" in statement:
            asked.append((statement, parameters))

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", record)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    cursor = session.connection().connection.cursor()
    plans = []
    for statement, parameters in asked:
        cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
        plans.append(cursor.fetchone()[0])
    return plans


def _through_the_index(plans: list[Any]) -> None:
    assert plans
    for plan in plans:
        nodes = plan_nodes(plan[0]["Plan"])
        assert not [n for n in nodes if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "payments"], plan
        assert "ix_payments_business_time" in {n.get("Index Name") for n in nodes}, plan


def test_a_day_s_payments_are_found_by_index_not_by_reading_every_payment_ever(rt: Runtime) -> None:
    """Classification, the status-API run's question list and the day-at-a-glance report reach the day's payments
    through ``ix_payments_business_time``, never by a sequential scan: a merchant's nightly run must not grow with
    its history (60 days of two providers' payments here), nor with another provider's busy day (Wave's, the same
    day as CinetPay's). Rolled back; without the index, or with the time before the provider in it, the plans read
    more."""
    from reconciliation.payments import to_confirm
    from reconciliation.reports import glance

    tz = ZoneInfo("Africa/Abidjan")
    with transaction(rt.sessions) as session:
        _add_payments(session, "cinetpay", 20_000, "259 seconds")  # 60 days
        _add_payments(session, "wave", 20_000, "251 seconds")
        _through_the_index(
            _plans(
                session,
                lambda: (
                    glance._payments_of_day(session, DAY, tz),
                    glance._daily_payments(session, START - timedelta(days=2), END, tz),
                ),
            )
        )
        _add_payments(session, "wave", 40_000, "1 second")  # Wave's busy day
        plans = _plans(session, lambda: to_confirm(session, "cinetpay", START, END))
        session.execute(text("SET LOCAL enable_sort = off"))  # as classify sets them
        session.execute(text("SET LOCAL work_mem = '256MB'"))
        params = {"run_id": 0, "provider": "cinetpay", "start": START, "end": END, "sla_cutoff": NOON,
                  "tolerance": 0, "fee_bps": None, "day": DAY}  # fmt: skip
        for part in (None, (1, 2)):
            explain = matching.classification(part, prefix="EXPLAIN (FORMAT JSON) ")
            plans.append(session.execute(explain, params).scalar())
        _through_the_index(plans)
        session.rollback()


def test_a_fee_chunk_looks_up_its_own_payments_not_every_payment_ever(rt: Runtime) -> None:
    """A chunk of a run's fees (``runs._FEES_POST``) checks that each of its items' payments is still paid by the
    payment's key: a hash of the whole payments table for each chunk would make a month-end's fees grow with the
    merchant's history (here 80,000 payments, 20,000 of them the run's). Rolled back."""
    with transaction(rt.sessions) as session:
        _add_payments(session, "cinetpay", 60_000, "43 seconds")
        _add_payments(session, "cinetpay", 20_000, "1 second")
        session.execute(
            text(
                "INSERT INTO recon_items (run_id, cls, reference, payment_id, provider_lines, healed, detail, fee, "
                "provider_currency) SELECT 0, 'matched', reference, id, 1, false, '', 50, 'XOF' FROM payments "
                "WHERE reference LIKE 'cinetpay-1 second-%'"
            )
        )
        session.execute(text("ANALYZE recon_items"))
        low = session.scalar(select(ReconItem.id).where(ReconItem.run_id == 0).order_by(ReconItem.id).limit(1))
        params = {"run_id": 0, "low": low, "high": low + runs.FEE_CHUNK_SQL, "matched": "matched",
                  "fee_variance": "fee_variance", "succeeded": "succeeded", "kind": "fee", "memo_head": "",
                  "memo_tail": "", "currencies": ["XOF"], "journal_ids": [1], "fee_accounts": [1],
                  "clearing_accounts": [2]}  # fmt: skip
        explain = "EXPLAIN (FORMAT JSON) " + runs._fees_post(skip_posted=False)  # planned, not run
        nodes = plan_nodes(session.execute(text(explain), params).scalar()[0]["Plan"])
        assert not [n for n in nodes if n.get("Relation Name") == "payments" and n["Node Type"] == "Seq Scan"], nodes
        assert "pk_payments" in {n.get("Index Name") for n in nodes}, nodes
        session.rollback()


def test_healing_finds_its_exception_by_the_exceptions_index_not_by_reading_the_run(rt: Runtime) -> None:
    """PostgreSQL keeps no B-tree over every item's id (migration 0020): healing and refunds update an exception
    through ``runs.exception_item``, which the partial index over the exceptions serves, even for a run just written
    (its pages not summarized in the BRIN index yet, the table not analyzed). Rolled back."""
    from sqlalchemy import update
    from sqlalchemy.dialects import postgresql

    from reconciliation.models import ReconItem

    with transaction(rt.sessions) as session:
        session.execute(
            text(
                "INSERT INTO recon_items (run_id, cls, reference, provider_lines, healed, detail) "
                "SELECT 0, CASE WHEN n % 100 = 0 THEN 'missing_in_ledger' ELSE 'matched' END, 'R' || n, 1, false, '' "
                "FROM generate_series(1, 50000) AS n"
            )
        )
        item = session.scalar(text("SELECT max(id) FROM recon_items WHERE run_id = 0 AND cls = 'missing_in_ledger'"))
        statement = update(ReconItem).where(runs.exception_item(0, item)).values(healed=True, detail="healed")
        sql = statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
        nodes = plan_nodes(session.execute(text(f"EXPLAIN (FORMAT JSON) {sql}")).scalar()[0]["Plan"])
        assert "ix_recon_items_exception_id" in {n.get("Index Name") for n in nodes}, nodes
        assert session.execute(statement).rowcount == 1
        session.rollback()


def test_a_run_s_payouts_start_from_its_day_s_payout_lines_not_from_every_line_of_the_day(rt: Runtime) -> None:
    """A run's payouts start from the payout ids its day's lines name (``matching._DAY_PAYOUTS``): on PostgreSQL the
    partial index over the lines that name one (migration 0021) finds them, where the key read every line of the day,
    a million for a large day of a provider that names no payout at all; even with the lines just imported (not
    analyzed). Rolled back."""
    with transaction(rt.sessions) as session:
        session.execute(
            text(
                "INSERT INTO statement_lines (provider, business_date, source, reference, status, amount, currency, "
                "occurred_at, payout_id, raw) SELECT 'wave', :day, 'file', 'R' || n, 'succeeded', 100, 'XOF', :at, "
                "CASE WHEN n % 1000 = 0 THEN 'PO-' || n END, '' FROM generate_series(1, 50000) AS n"
            ),
            {"day": DAY, "at": NOON},
        )
        sql = (matching._DAY_PAYOUTS + "SELECT payout_id FROM day_payouts").replace("{visible}", VISIBLE_SQL)  # noqa: S608
        params = {"provider": "wave", "day": DAY}
        nodes = plan_nodes(session.execute(text("EXPLAIN (FORMAT JSON) " + sql), params).scalar()[0]["Plan"])
        assert "ix_statement_lines_payout_day" in {n.get("Index Name") for n in nodes}, nodes
        assert len(session.execute(text(sql), params).all()) == 50
        session.rollback()


def test_a_fee_chunk_reads_only_its_pages_once_the_items_index_is_summarized(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The items' BRIN index (migration 0020) gives a range of a run's ids every page written since its last
    summary; ``recon_items_summarize()`` (0022), which a run's fees call before their chunks, narrows a chunk to its
    own pages. Rolled back."""
    with transaction(rt.sessions) as session:
        session.execute(
            text(
                "INSERT INTO recon_items (run_id, cls, reference, payment_id, provider_lines, healed, detail, fee, "
                "provider_currency) SELECT 0, 'matched', 'R' || n, n, 1, false, '', 50, 'XOF' "
                "FROM generate_series(1, 60000) AS n"
            )
        )
        low = session.scalar(text("SELECT min(id) FROM recon_items WHERE run_id = 0"))
        session.execute(text("SET LOCAL enable_seqscan = off"))  # as for a run of a million items
        chunk = text(
            "EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM recon_items "
            "WHERE run_id = 0 AND id >= :low AND id < :low + 6000"
        )

        def heap_blocks() -> int:
            nodes = plan_nodes(session.execute(chunk, {"low": low}).scalar()[0]["Plan"])
            scans = [n for n in nodes if n["Node Type"] == "Bitmap Heap Scan"]
            assert scans, nodes
            return sum(n.get("Lossy Heap Blocks", 0) + n.get("Exact Heap Blocks", 0) for n in scans)

        pages = session.scalar(text("SELECT pg_relation_size('recon_items') / current_setting('block_size')::int"))
        before = heap_blocks()
        assert session.scalar(text("SELECT recon_items_summarize()")) > 0
        after = heap_blocks()
        session.rollback()
    assert before >= pages // 2  # every page of the run (and of what else is not summarized yet)
    assert after < before // 3  # the chunk's tenth of the run, give or take a range either side
    calls: list[str] = []
    summarize = runs._summarize_items
    monkeypatch.setattr(runs, "_summarize_items", lambda sessions: calls.append("summarize") or summarize(sessions))
    plans: list[Any] = []

    def explain(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if "INSERT INTO fee_postings" in statement:  # a chunk's statement
            cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)  # in the chunk's session and settings
            plans.append(cursor.fetchone()[0][0]["Plan"])
            calls.append("chunk")

    ref = new_reference()
    payment(rt, ref, PaymentStatus.SUCCEEDED)
    line(rt, ref, fee=25)
    engine = rt.sessions.kw["bind"]
    event.listen(engine, "before_cursor_execute", explain)
    try:
        run_id = runs.reconcile_stored(rt.sessions, "cinetpay", DAY, policy(rt))
    finally:
        event.remove(engine, "before_cursor_execute", explain)
    assert calls == ["summarize", "chunk"]  # before the run's chunks
    assert plans  # each chunk's items through the index, in its own session (no parallel workers)
    for plan in plans:
        nodes = plan_nodes(plan)
        items = [n for n in nodes if n.get("Relation Name") == "recon_items"]
        assert [n["Node Type"] for n in items] == ["Bitmap Heap Scan"], nodes
        assert "ix_recon_items_run_id" in {n.get("Index Name") for n in nodes}, nodes
        assert "Gather" not in {n["Node Type"] for n in nodes}, nodes
    with rt.sessions() as session:
        assert session.scalar(text("SELECT count(*) FROM ledger_journals WHERE kind = 'fee' AND memo LIKE :m"),
                              {"m": f"% (run {run_id})"}) == 1  # fmt: skip


def test_a_day_s_lines_are_read_through_the_brin_index_even_after_replaced_days_leave_holes(rt: Runtime) -> None:
    """PostgreSQL keeps no B-tree over every statement line (migration 0023): the classification finds its day's
    lines among a month of them through the BRIN index by provider and day, once the table has statistics
    (autovacuum's). Days replaced by a listing leave holes that later days fill once vacuumed: each block range
    keeps several days (``date_minmax_multi_ops``), so the day's scan reads its own ranges, not every range whose
    holes a later day filled."""
    insert_days = text(
        "INSERT INTO statement_lines (provider, business_date, source, reference, status, amount, currency, "
        "occurred_at, raw) SELECT 'cinetpay', CAST(:day AS date) + d, 'file', 'R' || d || '-' || n, 'succeeded', "
        "100, 'XOF', :at, '' FROM generate_series(:first, :last) AS d, generate_series(1, 4000) AS n ORDER BY d"
    )  # a day at a time, as imports write them
    with transaction(rt.sessions) as session:
        session.execute(insert_days, {"day": DAY, "at": NOON, "first": -20, "last": 9})
    with transaction(rt.sessions) as session:  # a listing's days replaced: deleted here, written again below
        session.execute(text("DELETE FROM statement_lines WHERE (CAST(:day AS date) - business_date) % 3 = 1"),
                        {"day": DAY})  # fmt: skip
    engine = rt.sessions.kw["bind"]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM statement_lines"))  # the holes are free space now
    with transaction(rt.sessions) as session:
        session.execute(insert_days, {"day": DAY, "at": NOON, "first": 10, "last": 19})  # later days fill them
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("SELECT brin_summarize_new_values('ix_statement_lines_day_range')"))
        conn.execute(text("ANALYZE statement_lines"))
        pages = conn.scalar(text("SELECT pg_relation_size('statement_lines') / current_setting('block_size')::int"))
    with transaction(rt.sessions) as session:
        params = {"run_id": 0, "provider": "cinetpay", "start": START, "end": END, "sla_cutoff": NOON,
                  "tolerance": 0, "fee_bps": None, "day": DAY}  # fmt: skip
        explain = matching.classification((0, 2), prefix="EXPLAIN (ANALYZE, FORMAT JSON) ")
        nodes = plan_nodes(session.execute(explain, params).scalar()[0]["Plan"])
        session.rollback()
    lines = [n for n in nodes if n.get("Relation Name") == "statement_lines"]
    assert [n["Node Type"] for n in lines] == ["Bitmap Heap Scan"], nodes
    assert "ix_statement_lines_day_range" in {n.get("Index Name") for n in nodes}, nodes
    read = lines[0].get("Lossy Heap Blocks", 0) + lines[0].get("Exact Heap Blocks", 0)
    assert pages > 1500 and read <= 3 * 128, (read, pages)  # the day's own block ranges (128 pages each)
