"""The ledger's references checked per statement: the four per-row foreign keys become set-based checks.

A million fee journals of a reconciliation run (``runs.post_fees``) fired five to six million per-row
foreign-key checks (each journal against ``payments`` and for its ``reverses_id``, each of its two
entries against ``ledger_journals`` and ``ledger_accounts``): ~3.2 s of a 6.1 s chunk of 250,000
fees (``EXPLAIN ANALYZE``, BENCHMARKS.md), about half of posting them. The statement-level guard
of 0010 already reads each statement's new rows as one set, so the same properties are checked
there, as one query each (an index probe per new row, no trigger event per row):

- ``ledger_entries.journal_id`` and ``account_id``: each new entry's journal and account exist
  (``ledger_check_new_entries``);
- ``ledger_journals.payment_id`` and ``reverses_id``: each new journal's payment and reversed
  journal exist (``ledger_check_new_journals``). A foreign key also locked each payment ``FOR KEY
  SHARE`` (a concurrent DELETE of it waits, then sees the journal): a row lock per journal, ~8 % of
  a fee chunk. Instead the DELETE of a payment (which payrecon never does) locks ``ledger_journals``
  against writers (SHARE) before it looks for journals, under READ COMMITTED; a journal written
  under REPEATABLE READ or SERIALIZABLE, whose snapshot may predate such a DELETE, still locks its
  payments ``FOR KEY SHARE``.

What the foreign keys also refused, and what refuses it now:

- deleting or editing a journal or an entry: the append-only triggers of 0001, as before;
- deleting or editing an account (its id or currency under posted entries): accounts are
  append-only too now (``ledger_accounts_append_only``; ``payrecon migrate --grant-to`` gives the
  application role no UPDATE or DELETE on them);
- deleting a payment that has journals, or changing its id: ``payments_journaled`` (a row trigger
  on DELETE and on UPDATE OF id only, so the pipeline's updates of payments fire nothing; such a
  statement runs under READ COMMITTED only, see above);
- TRUNCATE of ``ledger_journals``, ``ledger_accounts`` or ``payments`` leaving rows that refer to
  them: an AFTER TRUNCATE trigger on each, under READ COMMITTED only (``TRUNCATE`` of all of them in
  one statement, as the tests' clean-up does, still works).

The guard functions read the tables by name with their ``search_path`` pinned to the tables' schema
(``pin_search_path``): the foreign keys' checks named their tables exactly, and without it a role
could shadow a table with one of its own.

The errors are ``foreign_key_violation`` (SQLSTATE 23503), an ``IntegrityError`` as before.
SQLite (the embedded demo) keeps the same properties with row triggers (it has no TRUNCATE and
needs no speed here): the tables are rebuilt without the foreign keys, their append-only triggers
recreated.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (table, constraint, columns, referred table, referred columns), as 0001 named them.
FOREIGN_KEYS = (
    ("ledger_entries", "fk_ledger_entries_journal_id_ledger_journals", ["journal_id"], "ledger_journals", ["id"]),
    ("ledger_entries", "fk_ledger_entries_account_id_ledger_accounts", ["account_id"], "ledger_accounts", ["id"]),
    ("ledger_journals", "fk_ledger_journals_payment_id_payments", ["payment_id"], "payments", ["id"]),
    ("ledger_journals", "fk_ledger_journals_reverses_id_ledger_journals", ["reverses_id"], "ledger_journals", ["id"]),
)

# Each reference is a scalar subquery, an index probe per new row, and enable_seqscan is off for
# these functions: PL/pgSQL caches a plan for the connection's life, and one made while a table was
# small would otherwise scan it whole for every row (see 0010).
PG_GUARD = """
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

-- A payment with journals keeps its row and its id (what the foreign key's NO ACTION refused). The
-- check waits for every transaction writing journals (a SHARE lock of ledger_journals, which the
-- function's owner may take and the application role may not: SECURITY DEFINER) and holds off new
-- ones until this one ends, so that it sees every journal of the payment, committed before it or
-- still to come; it needs READ COMMITTED (a later snapshot than the transaction's first). Payments
-- are never deleted by payrecon: the cost is this rare statement's, not every journal's.
CREATE FUNCTION ledger_keep_journaled_payment() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF TG_OP = 'DELETE' OR NEW.id IS DISTINCT FROM OLD.id THEN
        IF current_setting('transaction_isolation') <> 'read committed' THEN
            RAISE EXCEPTION 'a payment is deleted or its id changed under READ COMMITTED only (%)',
                current_setting('transaction_isolation') USING ERRCODE = 'feature_not_supported';
        END IF;
        LOCK TABLE ledger_journals IN SHARE MODE;
        IF EXISTS (SELECT 1 FROM ledger_journals j WHERE j.payment_id = OLD.id) THEN
            RAISE EXCEPTION 'payment % has ledger journals: % refused', OLD.id, TG_OP
                USING ERRCODE = 'foreign_key_violation';
        END IF;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $$;

-- TRUNCATE fires no row trigger: the table must not leave ledger rows referring to it behind. Under READ
-- COMMITTED only: an older snapshot (REPEATABLE READ) may miss ledger rows committed since it was taken.
CREATE FUNCTION ledger_check_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'TRUNCATE of % runs under READ COMMITTED only (%)', TG_TABLE_NAME,
            current_setting('transaction_isolation') USING ERRCODE = 'feature_not_supported';
    END IF;
    IF (TG_TABLE_NAME IN ('ledger_journals', 'ledger_accounts') AND EXISTS (SELECT 1 FROM ledger_entries))
       OR (TG_TABLE_NAME = 'payments' AND EXISTS (SELECT 1 FROM ledger_journals WHERE payment_id IS NOT NULL)) THEN
        RAISE EXCEPTION 'TRUNCATE of % refused: ledger rows refer to it', TG_TABLE_NAME
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_accounts_append_only BEFORE UPDATE OR DELETE ON ledger_accounts
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER payments_journaled BEFORE DELETE OR UPDATE OF id ON payments
    FOR EACH ROW EXECUTE FUNCTION ledger_keep_journaled_payment();
CREATE TRIGGER ledger_journals_truncated AFTER TRUNCATE ON ledger_journals
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_truncate();
CREATE TRIGGER ledger_accounts_truncated AFTER TRUNCATE ON ledger_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_truncate();
CREATE TRIGGER payments_truncated AFTER TRUNCATE ON payments
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_truncate();
"""

PG_UNGUARD = """
DROP TRIGGER IF EXISTS ledger_accounts_append_only ON ledger_accounts;
DROP TRIGGER IF EXISTS payments_journaled ON payments;
DROP TRIGGER IF EXISTS ledger_journals_truncated ON ledger_journals;
DROP TRIGGER IF EXISTS ledger_accounts_truncated ON ledger_accounts;
DROP TRIGGER IF EXISTS payments_truncated ON payments;
DROP FUNCTION IF EXISTS ledger_keep_journaled_payment();
DROP FUNCTION IF EXISTS ledger_check_truncate();
"""

# 0010's functions, as they were, for the downgrade.
PG_0010 = """
CREATE OR REPLACE FUNCTION ledger_check_new_entries() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE OR REPLACE FUNCTION ledger_check_new_journals() RETURNS trigger LANGUAGE plpgsql SET enable_seqscan = off AS $$
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
"""

_MISSING = "SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed')"
SQLITE_GUARDS = (
    *(
        f"""CREATE TRIGGER {table}_no_{op_name.lower()} BEFORE {op_name} ON {table}
        BEGIN SELECT RAISE(ABORT, 'ledger rows are append-only: {op_name} on {table} refused'); END"""
        for table in ("ledger_entries", "ledger_journals", "ledger_accounts")
        for op_name in ("UPDATE", "DELETE")
    ),
    f"""CREATE TRIGGER ledger_entries_references BEFORE INSERT ON ledger_entries
        WHEN NOT EXISTS (SELECT 1 FROM ledger_journals WHERE id = NEW.journal_id)
          OR NOT EXISTS (SELECT 1 FROM ledger_accounts WHERE id = NEW.account_id)
        BEGIN {_MISSING}; END""",  # noqa: S608 - constants
    f"""CREATE TRIGGER ledger_journals_references BEFORE INSERT ON ledger_journals
        WHEN (NEW.payment_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM payments WHERE id = NEW.payment_id))
          OR (NEW.reverses_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ledger_journals WHERE id = NEW.reverses_id))
        BEGIN {_MISSING}; END""",  # noqa: S608 - constants
    f"""CREATE TRIGGER payments_journaled_no_delete BEFORE DELETE ON payments
        WHEN EXISTS (SELECT 1 FROM ledger_journals WHERE payment_id = OLD.id)
        BEGIN {_MISSING}; END""",  # noqa: S608 - constants
    f"""CREATE TRIGGER payments_journaled_no_rekey BEFORE UPDATE OF id ON payments
        WHEN NEW.id IS NOT OLD.id AND EXISTS (SELECT 1 FROM ledger_journals WHERE payment_id = OLD.id)
        BEGIN {_MISSING}; END""",  # noqa: S608 - constants
)
SQLITE_TRIGGERS = (
    "ledger_entries_no_update", "ledger_entries_no_delete", "ledger_journals_no_update", "ledger_journals_no_delete",
    "ledger_accounts_no_update", "ledger_accounts_no_delete", "ledger_entries_references",
    "ledger_journals_references", "payments_journaled_no_delete", "payments_journaled_no_rekey",
)  # fmt: skip
#: 0001's append-only triggers, which the rebuilt tables must have again after a downgrade.
SQLITE_0001 = SQLITE_GUARDS[:4]


def pin_search_path() -> None:
    """Every ledger guard function reads tables by name: its search_path is pinned to the schema they live in
    (``pg_temp`` last), so no role can make it read a table or view of its own instead (the application role
    has a schema of its own, first on its path, and may create temporary tables). The function that locks
    ``ledger_journals`` as its owner runs for the payments trigger only: nobody may call it otherwise."""
    bind = op.get_bind()
    schema = bind.execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
    functions = bind.execute(
        sa.text(
            "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = current_schema() AND p.proname LIKE 'ledger\\_%'"
        )
    ).scalars()
    for function in functions:
        op.execute(f"ALTER FUNCTION {function} SET search_path = pg_catalog, {schema}, pg_temp")
    op.execute("REVOKE EXECUTE ON FUNCTION ledger_keep_journaled_payment() FROM PUBLIC")


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if not postgres:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    for table in ("ledger_entries", "ledger_journals"):  # the referring table first
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name in (fk[1] for fk in FOREIGN_KEYS if fk[0] == table):
                batch_op.drop_constraint(name, type_="foreignkey")
    if postgres:
        op.execute(PG_GUARD)
        pin_search_path()
    else:
        for statement in SQLITE_GUARDS:
            op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute(PG_UNGUARD)
        op.execute(PG_0010)
    else:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    for table in ("ledger_journals", "ledger_entries"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for _, name, columns, referred, remote in (fk for fk in FOREIGN_KEYS if fk[0] == table):
                batch_op.create_foreign_key(name, referred, columns, remote)
    if not postgres:
        for statement in SQLITE_0001:
            op.execute(statement)
