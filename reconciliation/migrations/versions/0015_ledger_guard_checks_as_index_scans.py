"""The ledger's guard checks a statement's references with one index scan over the set of them.

0013 checked each new journal's entries, payment and each new entry's journal with a scalar subquery per
row: an index probe each, and the executor's cost of a subplan call around it. Each check is now a count
over one index scan with the statement's ids as an array (``= ANY``), compared with how many there
should be; only when they differ does the per-row query run, to name the first offender in the error, as
before. The three checks for 100,000 fee journals, each run alone: 0.9-1.5 -> 0.5-0.6 s of CPU (BENCHMARKS.md).
The refusals and their errors are 0013's; the SQLite triggers are unchanged.

``CREATE OR REPLACE FUNCTION`` resets a function's settings: the search_path is pinned again (0013).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_GUARD = """
CREATE OR REPLACE FUNCTION ledger_check_new_entries() RETURNS trigger LANGUAGE plpgsql
    SET enable_seqscan = off SET jit = off SET work_mem = '64MB' AS $$
DECLARE
    bad record;
    wanted bigint;
    present bigint;
BEGIN
    SELECT journal_id, currency, sum(CASE side WHEN 'debit' THEN amount ELSE -amount END) AS diff INTO bad
      FROM new_entries
     GROUP BY journal_id, currency
    HAVING sum(CASE side WHEN 'debit' THEN amount ELSE -amount END) <> 0
     ORDER BY journal_id, currency
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal % does not balance in %: debit - credit = %', bad.journal_id, bad.currency, bad.diff
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT count(*) INTO wanted FROM (SELECT DISTINCT journal_id FROM new_entries) AS n;
    SELECT count(*) INTO present FROM ledger_journals j
     WHERE j.id = ANY (ARRAY(SELECT DISTINCT journal_id FROM new_entries));
    IF present < wanted THEN
        SELECT n.journal_id INTO bad
          FROM (SELECT DISTINCT journal_id FROM new_entries) AS n
         WHERE (SELECT j.id FROM ledger_journals j WHERE j.id = n.journal_id) IS NULL
         ORDER BY n.journal_id
         LIMIT 1;
        RAISE EXCEPTION 'ledger entries refer to journal %, which does not exist', bad.journal_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT n.journal_id, n.account_id, a.id IS NULL AS missing INTO bad
      FROM new_entries n LEFT JOIN ledger_accounts a ON a.id = n.account_id
     WHERE a.id IS NULL OR a.currency <> n.currency
     ORDER BY a.id IS NULL DESC, n.journal_id
     LIMIT 1;
    IF FOUND AND bad.missing THEN
        RAISE EXCEPTION 'journal % posts to account %, which does not exist', bad.journal_id, bad.account_id
            USING ERRCODE = 'foreign_key_violation';
    ELSIF FOUND THEN
        RAISE EXCEPTION 'journal % posts to an account of another currency', bad.journal_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION ledger_check_new_journals() RETURNS trigger LANGUAGE plpgsql
    SET enable_seqscan = off SET jit = off SET work_mem = '64MB' AS $$
DECLARE
    jid bigint;
    bad record;
    wanted bigint;
    locked bigint;
BEGIN
    SELECT count(*) INTO wanted FROM new_journals;
    SELECT count(DISTINCT e.journal_id) INTO locked FROM ledger_entries e
     WHERE e.journal_id = ANY (ARRAY(SELECT id FROM new_journals));
    IF locked < wanted THEN
        SELECT n.id INTO jid
          FROM new_journals n
         WHERE (SELECT e.id FROM ledger_entries e WHERE e.journal_id = n.id LIMIT 1) IS NULL
         ORDER BY n.id
         LIMIT 1;
        RAISE EXCEPTION 'journal % has no entries', jid USING ERRCODE = 'check_violation';
    END IF;
    SELECT n.id, n.reverses_id INTO bad
      FROM new_journals n
     WHERE n.reverses_id IS NOT NULL AND (SELECT j.id FROM ledger_journals j WHERE j.id = n.reverses_id) IS NULL
     ORDER BY n.id
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal % reverses journal %, which does not exist', bad.id, bad.reverses_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    -- The payments exist. Under READ COMMITTED this statement's snapshot is enough: a DELETE of a
    -- payment first waits for every transaction writing journals (ledger_keep_journaled_payment). A
    -- snapshot older than the statement (REPEATABLE READ, SERIALIZABLE) may still show a payment
    -- deleted since: there they are locked FOR KEY SHARE, as a foreign key locks them, which fails
    -- on a payment deleted after the snapshot.
    IF current_setting('transaction_isolation') = 'read committed' THEN
        SELECT count(DISTINCT payment_id) INTO wanted FROM new_journals WHERE payment_id IS NOT NULL;
        SELECT count(*) INTO locked FROM payments p
         WHERE p.id = ANY (ARRAY(SELECT DISTINCT payment_id FROM new_journals WHERE payment_id IS NOT NULL));
    ELSE
        SELECT count(*), count(l.id) INTO wanted, locked
          FROM (SELECT DISTINCT payment_id FROM new_journals WHERE payment_id IS NOT NULL ORDER BY payment_id) AS n
          LEFT JOIN LATERAL (SELECT p.id FROM payments p WHERE p.id = n.payment_id FOR KEY SHARE OF p) AS l ON true;
    END IF;
    IF locked < wanted THEN
        SELECT n.id, n.payment_id INTO bad
          FROM new_journals n
         WHERE n.payment_id IS NOT NULL AND (SELECT p.id FROM payments p WHERE p.id = n.payment_id) IS NULL
         ORDER BY n.id
         LIMIT 1;
        RAISE EXCEPTION 'journal % is of payment %, which does not exist', bad.id, bad.payment_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
"""

#: 0013's functions, frozen here for the downgrade (a migration does not import another).
PG_GUARD_0013 = """
CREATE OR REPLACE FUNCTION ledger_check_new_entries() RETURNS trigger LANGUAGE plpgsql
    SET enable_seqscan = off SET jit = off SET work_mem = '64MB' AS $$
DECLARE
    bad record;
BEGIN
    SELECT journal_id, currency, sum(CASE side WHEN 'debit' THEN amount ELSE -amount END) AS diff INTO bad
      FROM new_entries
     GROUP BY journal_id, currency
    HAVING sum(CASE side WHEN 'debit' THEN amount ELSE -amount END) <> 0
     ORDER BY journal_id, currency
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal % does not balance in %: debit - credit = %', bad.journal_id, bad.currency, bad.diff
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT n.journal_id INTO bad
      FROM (SELECT DISTINCT journal_id FROM new_entries) AS n
     WHERE (SELECT j.id FROM ledger_journals j WHERE j.id = n.journal_id) IS NULL
     ORDER BY n.journal_id
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger entries refer to journal %, which does not exist', bad.journal_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT n.journal_id, n.account_id, a.id IS NULL AS missing INTO bad
      FROM new_entries n LEFT JOIN ledger_accounts a ON a.id = n.account_id
     WHERE a.id IS NULL OR a.currency <> n.currency
     ORDER BY a.id IS NULL DESC, n.journal_id
     LIMIT 1;
    IF FOUND AND bad.missing THEN
        RAISE EXCEPTION 'journal % posts to account %, which does not exist', bad.journal_id, bad.account_id
            USING ERRCODE = 'foreign_key_violation';
    ELSIF FOUND THEN
        RAISE EXCEPTION 'journal % posts to an account of another currency', bad.journal_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION ledger_check_new_journals() RETURNS trigger LANGUAGE plpgsql
    SET enable_seqscan = off SET jit = off SET work_mem = '64MB' AS $$
DECLARE
    jid bigint;
    bad record;
    wanted bigint;
    locked bigint;
BEGIN
    SELECT n.id INTO jid
      FROM new_journals n
     WHERE (SELECT e.id FROM ledger_entries e WHERE e.journal_id = n.id LIMIT 1) IS NULL
     ORDER BY n.id
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal % has no entries', jid USING ERRCODE = 'check_violation';
    END IF;
    SELECT n.id, n.reverses_id INTO bad
      FROM new_journals n
     WHERE n.reverses_id IS NOT NULL AND (SELECT j.id FROM ledger_journals j WHERE j.id = n.reverses_id) IS NULL
     ORDER BY n.id
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal % reverses journal %, which does not exist', bad.id, bad.reverses_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    -- The payments exist. Under READ COMMITTED this statement's snapshot is enough: a DELETE of a
    -- payment first waits for every transaction writing journals (ledger_keep_journaled_payment). A
    -- snapshot older than the statement (REPEATABLE READ, SERIALIZABLE) may still show a payment
    -- deleted since: there they are locked FOR KEY SHARE, as a foreign key locks them, which fails
    -- on a payment deleted after the snapshot.
    IF current_setting('transaction_isolation') = 'read committed' THEN
        SELECT count(*), count(l.id) INTO wanted, locked
          FROM (SELECT DISTINCT payment_id FROM new_journals WHERE payment_id IS NOT NULL) AS n
          LEFT JOIN LATERAL (SELECT p.id FROM payments p WHERE p.id = n.payment_id) AS l ON true;
    ELSE
        SELECT count(*), count(l.id) INTO wanted, locked
          FROM (SELECT DISTINCT payment_id FROM new_journals WHERE payment_id IS NOT NULL ORDER BY payment_id) AS n
          LEFT JOIN LATERAL (SELECT p.id FROM payments p WHERE p.id = n.payment_id FOR KEY SHARE OF p) AS l ON true;
    END IF;
    IF locked < wanted THEN
        SELECT n.id, n.payment_id INTO bad
          FROM new_journals n
         WHERE n.payment_id IS NOT NULL AND (SELECT p.id FROM payments p WHERE p.id = n.payment_id) IS NULL
         ORDER BY n.id
         LIMIT 1;
        RAISE EXCEPTION 'journal % is of payment %, which does not exist', bad.id, bad.payment_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
"""


def _replace(functions: str) -> None:
    op.execute(functions)
    bind = op.get_bind()
    schema = bind.execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
    for function in ("ledger_check_new_entries()", "ledger_check_new_journals()"):
        op.execute(f"ALTER FUNCTION {function} SET search_path = pg_catalog, {schema}, pg_temp")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _replace(PG_GUARD)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _replace(PG_GUARD_0013)
