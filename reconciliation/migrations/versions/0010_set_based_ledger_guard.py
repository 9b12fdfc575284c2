"""Set-based ledger guard: the balance of journals is checked once per statement, not once per row.

The guard of 0001 was a deferrable constraint trigger FOR EACH ROW on ``ledger_entries`` and on
``ledger_journals``: three queries of PostgreSQL's per row, queued until COMMIT, three times per
two-entry journal (~1.3 ms of the server's CPU per journal). It dominated bulk posting (a day's
fee journals) and the webhook hot path. Now each table has an AFTER INSERT trigger FOR EACH
STATEMENT that reads the statement's new rows (its transition table) as one set:

- ``ledger_entries``: the new entries of each journal sum to zero per currency, and each entry is
  in its account's currency. Journals balance after every statement, so a journal whose new
  entries balance still balances (and one whose new entries do not, does not);
- ``ledger_journals``: every new journal has entries at the end of the statement.

Statement-level triggers cannot be deferred, so a journal and its entries must be written by one
SQL statement: a data-modifying CTE (``WITH j AS (INSERT INTO ledger_journals ... RETURNING id)
INSERT INTO ledger_entries ...``), as ``reconciliation.ledger`` does. PostgreSQL fires the AFTER
STATEMENT triggers of every sub-statement of a query at the end of the whole query, so the
journals' trigger sees their entries. A journal inserted by one statement and its entries by a
later one is refused at the end of the first.

The errors, their wording and their ERRCODE (check_violation) are the old guard's, each naming one
offending journal. The append-only triggers (``ledger_refuse_change``) stay as they are. SQLite
(the embedded demo) never had the balance guard and is left alone.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The balance is summed over the statement's new entries only: no index probe per journal. The
# currency check joins the accounts (a small table). The has-entries check is one index probe on
# ledger_entries(journal_id) per new journal, whatever the table's size was when PL/pgSQL planned
# it: the plan is cached for the connection's life, and one made while the table was nearly empty
# (a fresh database, or just after a TRUNCATE) is a sequential scan per journal, quadratic in the
# batch until the table is next analyzed (measured: 2,000 journals took 0.4, 0.8, 1.2 s, then 0.1 s
# after ANALYZE). Hence a scalar subquery (a per-row probe, never turned into a hashed anti-join)
# and enable_seqscan off for this function only (restored when it returns).
SET_BASED_GUARD = """
CREATE FUNCTION ledger_check_new_entries() RETURNS trigger LANGUAGE plpgsql AS $$
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
      FROM new_entries n JOIN ledger_accounts a ON a.id = n.account_id
     WHERE a.currency <> n.currency
     ORDER BY n.journal_id
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal % posts to an account of another currency', bad.journal_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION ledger_check_new_journals() RETURNS trigger LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    jid bigint;
BEGIN
    SELECT n.id INTO jid
      FROM new_journals n
     WHERE (SELECT e.id FROM ledger_entries e WHERE e.journal_id = n.id LIMIT 1) IS NULL
     ORDER BY n.id
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal % has no entries', jid USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

-- Checked at the end of each statement (of the whole query, for a data-modifying CTE).
CREATE TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_new_entries();
CREATE TRIGGER ledger_journals_balanced AFTER INSERT ON ledger_journals
    REFERENCING NEW TABLE AS new_journals
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_new_journals();
"""

# 0001's guard, as it was, for the downgrade.
ROW_LEVEL_GUARD = """
CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    jid bigint;
    bad record;
BEGIN
    IF TG_TABLE_NAME = 'ledger_entries' THEN jid := NEW.journal_id; ELSE jid := NEW.id; END IF;
    IF NOT EXISTS (SELECT 1 FROM ledger_entries WHERE journal_id = jid) THEN
        RAISE EXCEPTION 'journal % has no entries', jid USING ERRCODE = 'check_violation';
    END IF;
    SELECT currency, sum(CASE side WHEN 'debit' THEN amount ELSE -amount END) AS diff INTO bad
      FROM ledger_entries WHERE journal_id = jid
     GROUP BY currency HAVING sum(CASE side WHEN 'debit' THEN amount ELSE -amount END) <> 0
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal % does not balance in %: debit - credit = %', jid, bad.currency, bad.diff
            USING ERRCODE = 'check_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM ledger_entries e JOIN ledger_accounts a ON a.id = e.account_id
                WHERE e.journal_id = jid AND a.currency <> e.currency) THEN
        RAISE EXCEPTION 'journal % posts to an account of another currency', jid
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

-- Checked at COMMIT, once all entries of the journal are in.
CREATE CONSTRAINT TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced();
CREATE CONSTRAINT TRIGGER ledger_journals_balanced AFTER INSERT ON ledger_journals
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced();
"""


def _drop_balance_triggers() -> None:
    op.execute("DROP TRIGGER IF EXISTS ledger_entries_balanced ON ledger_entries")
    op.execute("DROP TRIGGER IF EXISTS ledger_journals_balanced ON ledger_journals")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _drop_balance_triggers()
    op.execute("DROP FUNCTION IF EXISTS ledger_check_balanced()")
    op.execute(SET_BASED_GUARD)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _drop_balance_triggers()
    op.execute("DROP FUNCTION IF EXISTS ledger_check_new_entries()")
    op.execute("DROP FUNCTION IF EXISTS ledger_check_new_journals()")
    op.execute(ROW_LEVEL_GUARD)
