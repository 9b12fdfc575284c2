CREATE OR REPLACE FUNCTION ledger_check_new_entries() RETURNS trigger LANGUAGE plpgsql
    SET enable_seqscan = off SET jit = off SET work_mem = '64MB' AS $$
DECLARE
    bad record;
    journals bigint[];
    unbalanced text[];
    present bigint;
BEGIN
    -- One pass over the entries: each (journal, currency)'s balance, and from those the journals named.
    WITH balances AS (
        SELECT journal_id, currency, sum(CASE side WHEN 'debit' THEN amount ELSE -amount END) AS diff
          FROM new_entries
         GROUP BY journal_id, currency
    )
    SELECT ARRAY(SELECT DISTINCT journal_id FROM balances),
           (SELECT ARRAY[b.journal_id::text, b.currency::text, b.diff::text]
              FROM balances b WHERE b.diff <> 0 ORDER BY b.journal_id, b.currency LIMIT 1)
      INTO journals, unbalanced;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'journal % does not balance in %: debit - credit = %', unbalanced[1], unbalanced[2], unbalanced[3]
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT count(*) INTO present FROM ledger_journals j WHERE j.id = ANY (journals);
    IF present < cardinality(journals) THEN
        SELECT n.journal_id INTO bad
          FROM unnest(journals) AS n (journal_id)
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
    paid bigint[];
BEGIN
    SELECT count(*) INTO wanted FROM new_journals;
    SELECT count(*) INTO locked FROM new_journals n
     WHERE EXISTS (SELECT 1 FROM ledger_entries e WHERE e.journal_id = n.id);
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
    IF current_setting('transaction_isolation') = 'read committed' THEN
        paid := ARRAY(SELECT DISTINCT payment_id FROM new_journals WHERE payment_id IS NOT NULL);
        wanted := cardinality(paid);
        SELECT count(*) INTO locked FROM payments p WHERE p.id = ANY (paid);
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
