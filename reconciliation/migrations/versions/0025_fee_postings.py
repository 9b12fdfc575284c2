"""A run's fees posted as one journal per chunk of payments, each payment's fee a row of ``fee_postings``.

Each fee was a journal of its own (Dr ``fees:<provider>`` / Cr provider clearing): a million-payment day wrote a
million journals (two B-trees each) and two million entries (one), 615 MB of WAL, and the ledger's guard probed an
index for each of them: 2.5-2.9 times the import-and-classify floor on every machine measured (BENCHMARKS.md). A
run now posts a chunk's fees (up to 100,000 payments) as one journal per currency, the chunk's total, and a row
per payment here, written by the same statement: which journal carries the payment's fee, how much, which run
found it. Its primary key, the payment, is what makes a fee once per payment (the journals' ``(payment_id,
kind)`` key did), and what a refund reads to reverse the fee (a ``fee_refund`` journal of the payment, as
before, naming the fee's journal in ``reverses_id``). The balances and the provider clearing account's meaning do not
change; the accounting export shows a chunk's journal, two entries, where it showed two a payment (its reference
empty: many payments).

Like the ledger's rows, fee postings are append-only, and refer to their payment and journal without per-row
foreign keys on PostgreSQL (a foreign key's check locked each payment: a row written per fee). A trigger per
statement (``ledger_check_new_fee_postings``) refuses the statement unless each payment exists, each run named
exists, and each journal named is a ``fee`` journal written by the same statement whose debits in each currency
are the statement's fees in it; the DELETE of a payment, and a TRUNCATE of the payments or the journals, are
refused while fee postings refer to them, and a TRUNCATE of the postings while fee journals exist
(``ledger_keep_journaled_payment``, ``ledger_check_truncate``). SQLite (the embedded demo) keeps the references
with row triggers (each posting's payment, run and ``fee`` journal exist), not the amounts; ``payrecon ledger
check`` finds a fee journal whose postings do not add up to its debits on either.

The fees posted before are given their rows here, from their journals (``run_id`` from the memo's ``(run N)``),
so a re-run after the upgrade posts none of them again. That reads every fee journal once, with the journals
locked against writers (every journal is read: none of their indexes leads with the kind). Upgrade with the worker
and beat stopped, as ``payrecon migrate`` is meant to run. A fee journal names no payment from 0025 on (the
ledger's guard of new journals checks it, ``PG_JOURNALS``; a trigger on SQLite): a worker of the code before,
still running, has its fee chunk refused rather than posting fees no posting names, which the new code would post
again. A
downgrade is refused once a chunk's journal was posted: without this table nothing would say which payments'
fees it carries.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# enable_seqscan off, as for the ledger's other guards (0010, 0013): PL/pgSQL keeps a plan for the connection's
# life, and one made while a table was small would read it whole for each statement.
PG_GUARD = """
CREATE FUNCTION ledger_check_new_fee_postings() RETURNS trigger LANGUAGE plpgsql
    SET enable_seqscan = off SET jit = off SET work_mem = '64MB' AS $$
DECLARE
    bad record;
    wanted bigint;
    present bigint;
BEGIN
    -- A journal written by this statement: its row and the postings' have the same inserting transaction and
    -- command (xmin, cmin; the ledger's rows are never updated, so cmin is the inserting command's). So the
    -- postings of a journal are all of one statement, and their sum is its debits: a later statement cannot add
    -- postings to a journal, nor name another payment's fee journal.
    SELECT n.journal_id, n.currency, n.total, j.kind, d.debits, (j.xmin = f.xmin AND j.cmin = f.cmin) AS together
      INTO bad
      FROM (SELECT journal_id, currency, sum(amount) AS total, min(payment_id) AS one
              FROM new_postings GROUP BY journal_id, currency) AS n
      LEFT JOIN ledger_journals j ON j.id = n.journal_id
      LEFT JOIN fee_postings f ON f.payment_id = n.one
      LEFT JOIN LATERAL (SELECT sum(e.amount) AS debits FROM ledger_entries e
                          WHERE e.journal_id = n.journal_id AND e.side = 'debit' AND e.currency = n.currency) AS d
             ON true
     WHERE j.kind IS DISTINCT FROM 'fee' OR d.debits IS DISTINCT FROM n.total
        OR (j.xmin = f.xmin AND j.cmin = f.cmin) IS NOT TRUE
     ORDER BY n.journal_id, n.currency
     LIMIT 1;
    IF FOUND AND bad.kind IS NULL THEN
        RAISE EXCEPTION 'fee postings name journal %, which does not exist', bad.journal_id
            USING ERRCODE = 'foreign_key_violation';
    ELSIF FOUND AND bad.kind <> 'fee' THEN
        RAISE EXCEPTION 'fee postings name journal %, a % journal, not a fee journal', bad.journal_id, bad.kind
            USING ERRCODE = 'check_violation';
    ELSIF FOUND AND NOT bad.together THEN
        RAISE EXCEPTION 'fee postings name journal %, which an earlier statement wrote: a fee journal and its '
            'postings are written by one statement', bad.journal_id USING ERRCODE = 'check_violation';
    ELSIF FOUND THEN
        RAISE EXCEPTION 'fee postings of % % in journal % whose debits in % are %', bad.total, bad.currency,
            bad.journal_id, bad.currency, coalesce(bad.debits, 0) USING ERRCODE = 'check_violation';
    END IF;
    SELECT n.run_id INTO bad
      FROM (SELECT DISTINCT run_id FROM new_postings WHERE run_id IS NOT NULL) AS n
     WHERE (SELECT r.id FROM recon_runs r WHERE r.id = n.run_id) IS NULL
     ORDER BY n.run_id
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'fee postings name run %, which does not exist', bad.run_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    -- The payments exist, as for the journals (0015): under READ COMMITTED this statement's snapshot is enough (a
    -- DELETE of a payment waits for the writers of fee postings, ledger_keep_journaled_payment); under an older
    -- snapshot they are locked FOR KEY SHARE, which fails on a payment deleted since.
    IF current_setting('transaction_isolation') = 'read committed' THEN
        SELECT count(*) INTO wanted FROM new_postings;
        SELECT count(*) INTO present FROM payments p WHERE p.id = ANY (ARRAY(SELECT payment_id FROM new_postings));
    ELSE
        SELECT count(*), count(l.id) INTO wanted, present
          FROM (SELECT payment_id FROM new_postings ORDER BY payment_id) AS n
          LEFT JOIN LATERAL (SELECT p.id FROM payments p WHERE p.id = n.payment_id FOR KEY SHARE OF p) AS l ON true;
    END IF;
    IF present < wanted THEN
        SELECT n.payment_id INTO bad
          FROM new_postings n
         WHERE (SELECT p.id FROM payments p WHERE p.id = n.payment_id) IS NULL
         ORDER BY n.payment_id
         LIMIT 1;
        RAISE EXCEPTION 'a fee posting is of payment %, which does not exist', bad.payment_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

"""

#: After the backfill, whose postings name journals earlier statements wrote (each a payment's fee journal,
#: its posting its debit by construction).
PG_TRIGGERS = """
CREATE TRIGGER fee_postings_checked AFTER INSERT ON fee_postings
    REFERENCING NEW TABLE AS new_postings FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_new_fee_postings();
CREATE TRIGGER fee_postings_append_only BEFORE UPDATE OR DELETE ON fee_postings
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER fee_postings_truncated AFTER TRUNCATE ON fee_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_truncate();
"""

#: 0013's, as they were, for the downgrade.
PG_KEEP_0013 = """
CREATE OR REPLACE FUNCTION ledger_keep_journaled_payment() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
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

CREATE OR REPLACE FUNCTION ledger_check_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
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
"""

#: 0013's functions with the fee postings: a payment they refer to is kept, and so are the journals, and the postings
#: while fee journals exist (without them, a run's fee journal would say nothing of whose fees it carries: each fee
#: would be posted again by a re-run, and a refund would not reverse it).
PG_KEEP = (
    PG_KEEP_0013.replace(
        "        LOCK TABLE ledger_journals IN SHARE MODE;\n",
        "        LOCK TABLE ledger_journals IN SHARE MODE;\n        LOCK TABLE fee_postings IN SHARE MODE;\n",
    )
    .replace(
        """                USING ERRCODE = 'foreign_key_violation';
        END IF;
    END IF;""",
        """                USING ERRCODE = 'foreign_key_violation';
        ELSIF EXISTS (SELECT 1 FROM fee_postings f WHERE f.payment_id = OLD.id) THEN
            RAISE EXCEPTION 'payment % has a fee posted: % refused', OLD.id, TG_OP
                USING ERRCODE = 'foreign_key_violation';
        END IF;
    END IF;""",
    )
    .replace(
        "       OR (TG_TABLE_NAME = 'payments' AND EXISTS (SELECT 1 FROM ledger_journals WHERE payment_id IS NOT NULL)) THEN",
        """       OR (TG_TABLE_NAME = 'ledger_journals' AND EXISTS (SELECT 1 FROM fee_postings))
       OR (TG_TABLE_NAME = 'payments' AND (EXISTS (SELECT 1 FROM ledger_journals WHERE payment_id IS NOT NULL)
                                            OR EXISTS (SELECT 1 FROM fee_postings)))
       OR (TG_TABLE_NAME = 'fee_postings' AND EXISTS (SELECT 1 FROM ledger_journals WHERE kind = 'fee')) THEN""",
    )
)


#: 0015's guard of the new journals, frozen here for the downgrade (a migration does not import another).
PG_JOURNALS_0015 = """
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

#: The same with one check more, first: from 0025 on a fee journal names no payment (its fees are ``fee_postings``
#: rows), so that a worker of the code before, still running during an upgrade, has its fee chunk refused rather than
#: posting fees that no posting names, which the new code would post again. One more look at the statement's new
#: journals, which the guard reads anyway.
PG_JOURNALS = PG_JOURNALS_0015.replace(
    "BEGIN\n",
    """BEGIN
    SELECT n.id, n.payment_id INTO bad
      FROM new_journals n
     WHERE n.kind = 'fee' AND n.payment_id IS NOT NULL
     ORDER BY n.id
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal % is a fee journal of payment %: since 0025 a fee journal names no payment (its fees '
            'are fee_postings rows)', bad.id, bad.payment_id USING ERRCODE = 'check_violation';
    END IF;
""",
    1,
)

_MISSING = "SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed')"
SQLITE_GUARDS = (
    *(
        f"""CREATE TRIGGER fee_postings_no_{op_name.lower()} BEFORE {op_name} ON fee_postings
        BEGIN SELECT RAISE(ABORT, 'ledger rows are append-only: {op_name} on fee_postings refused'); END"""
        for op_name in ("UPDATE", "DELETE")
    ),
    f"""CREATE TRIGGER fee_postings_references BEFORE INSERT ON fee_postings
        WHEN NOT EXISTS (SELECT 1 FROM payments WHERE id = NEW.payment_id)
          OR NOT EXISTS (SELECT 1 FROM ledger_journals WHERE id = NEW.journal_id AND kind = 'fee')
          OR (NEW.run_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM recon_runs WHERE id = NEW.run_id))
        BEGIN {_MISSING}; END""",  # noqa: S608 - constants
    """CREATE TRIGGER ledger_journals_fee_of_no_payment BEFORE INSERT ON ledger_journals
        WHEN NEW.kind = 'fee' AND NEW.payment_id IS NOT NULL
        BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: a fee journal names no payment since 0025'); END""",
    f"""CREATE TRIGGER payments_fee_posted_no_delete BEFORE DELETE ON payments
        WHEN EXISTS (SELECT 1 FROM fee_postings WHERE payment_id = OLD.id)
        BEGIN {_MISSING}; END""",  # noqa: S608 - constants
    f"""CREATE TRIGGER payments_fee_posted_no_rekey BEFORE UPDATE OF id ON payments
        WHEN NEW.id IS NOT OLD.id AND EXISTS (SELECT 1 FROM fee_postings WHERE payment_id = OLD.id)
        BEGIN {_MISSING}; END""",  # noqa: S608 - constants
)
SQLITE_TRIGGERS = (
    "fee_postings_no_update", "fee_postings_no_delete", "fee_postings_references", "ledger_journals_fee_of_no_payment",
    "payments_fee_posted_no_delete", "payments_fee_posted_no_rekey",
)  # fmt: skip

#: The fees posted before 0025, a journal each: the payment, the journal, its debit and the run its memo names
#: (``<provider> fee on <reference> (run N)``), if that run is still there.
_PG_BACKFILL = r"""
INSERT INTO fee_postings (payment_id, journal_id, run_id, amount, currency)
SELECT j.payment_id, j.id, r.id, e.amount, e.currency
  FROM ledger_journals j
  JOIN ledger_entries e ON e.journal_id = j.id AND e.side = 'debit'
  LEFT JOIN recon_runs r ON r.id = CAST(substring(j.memo FROM '\(run ([0-9]{1,18})\)$') AS bigint)
 WHERE j.kind = 'fee' AND j.payment_id IS NOT NULL
 ORDER BY j.payment_id
"""
_RUN_IN_MEMO = re.compile(r"\(run ([0-9]{1,18})\)$")


def _sqlite_backfill() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT j.payment_id, j.id, j.memo, e.amount, e.currency FROM ledger_journals j"
            " JOIN ledger_entries e ON e.journal_id = j.id AND e.side = 'debit'"
            " WHERE j.kind = 'fee' AND j.payment_id IS NOT NULL ORDER BY j.payment_id"
        )
    ).all()
    runs = set(bind.execute(sa.text("SELECT id FROM recon_runs")).scalars())
    postings = []
    for payment_id, journal_id, memo, amount, currency in rows:
        found = _RUN_IN_MEMO.search(memo or "")
        run_id = int(found.group(1)) if found else None
        postings.append({"payment_id": payment_id, "journal_id": journal_id,
                         "run_id": run_id if run_id in runs else None, "amount": amount, "currency": currency})  # fmt: skip
    if postings:
        bind.execute(
            sa.text(
                "INSERT INTO fee_postings (payment_id, journal_id, run_id, amount, currency)"
                " VALUES (:payment_id, :journal_id, :run_id, :amount, :currency)"
            ),
            postings,
        )


def _pin(functions: Sequence[str]) -> None:
    """The guard functions' search_path pinned to the tables' schema, as 0013 does (``CREATE OR REPLACE`` resets
    it)."""
    schema = op.get_bind().execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
    for function in functions:
        op.execute(f"ALTER FUNCTION {function} SET search_path = pg_catalog, {schema}, pg_temp")


_FUNCTIONS = ("ledger_keep_journaled_payment()", "ledger_check_truncate()")


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "fee_postings",
        sa.Column("payment_id", BigId, autoincrement=False, nullable=False),
        sa.Column("journal_id", BigId, nullable=False),
        sa.Column("run_id", BigId, nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_fee_postings_amount_positive")),
        sa.PrimaryKeyConstraint("payment_id", name=op.f("pk_fee_postings")),
    )
    if postgres:
        op.execute(PG_GUARD)
        op.execute(PG_KEEP)
        _pin(("ledger_check_new_fee_postings()", *_FUNCTIONS))
        op.execute("LOCK TABLE ledger_journals IN SHARE MODE")  # a fee journal written meanwhile gets its posting too
        op.execute(_PG_BACKFILL)
        op.execute(PG_TRIGGERS)
        op.execute(PG_JOURNALS)
        _pin(("ledger_check_new_journals()",))
    else:
        for statement in SQLITE_GUARDS:
            op.execute(statement)
        _sqlite_backfill()


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    chunks = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM ledger_journals WHERE kind = 'fee' AND payment_id IS NULL"))
        .scalar_one()
    )
    if chunks:
        raise RuntimeError(
            f"{chunks} fee journal(s) carry the fees of many payments each: without fee_postings nothing would say "
            "whose; a downgrade past 0025 is refused"
        )
    if postgres:
        for trigger in ("fee_postings_checked", "fee_postings_append_only", "fee_postings_truncated"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON fee_postings")
        op.execute("DROP FUNCTION IF EXISTS ledger_check_new_fee_postings()")
        op.execute(PG_KEEP_0013)
        op.execute(PG_JOURNALS_0015)
        _pin((*_FUNCTIONS, "ledger_check_new_journals()"))
    else:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table("fee_postings")
