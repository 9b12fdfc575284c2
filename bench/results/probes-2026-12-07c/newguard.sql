CREATE OR REPLACE FUNCTION ledger_check_new_entries() RETURNS trigger LANGUAGE plpgsql
    SET enable_seqscan = off SET jit = off SET work_mem = '64MB' AS $$
DECLARE
    bad record;
    journals bigint[];
    unbalanced boolean;
    mixed boolean;
    misposted boolean;
    present bigint;
BEGIN
    SELECT array_agg(g.journal_id ORDER BY g.journal_id), coalesce(bool_or(g.diff <> 0), false),
           coalesce(bool_or(g.mixed), false), coalesce(bool_or(g.misposted), false)
      INTO journals, unbalanced, mixed, misposted
      FROM (SELECT n.journal_id, sum(CASE n.side WHEN 'debit' THEN n.amount ELSE -n.amount END) AS diff,
                   min(n.currency COLLATE "C") <> max(n.currency COLLATE "C") AS mixed,
                   bool_or(a.id IS NULL OR a.currency <> n.currency) AS misposted
              FROM new_entries n LEFT JOIN ledger_accounts a ON a.id = n.account_id
             GROUP BY n.journal_id) AS g;
    IF unbalanced OR mixed THEN
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
    END IF;
    SELECT count(*) INTO present FROM ledger_journals j WHERE j.id = ANY (journals);
    IF present < coalesce(cardinality(journals), 0) THEN
        SELECT n.journal_id INTO bad
          FROM unnest(journals) AS n (journal_id)
         WHERE (SELECT j.id FROM ledger_journals j WHERE j.id = n.journal_id) IS NULL
         ORDER BY n.journal_id
         LIMIT 1;
        RAISE EXCEPTION 'ledger entries refer to journal %, which does not exist', bad.journal_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF misposted THEN
        SELECT n.journal_id, n.account_id, a.id IS NULL AS missing INTO bad
          FROM new_entries n LEFT JOIN ledger_accounts a ON a.id = n.account_id
         WHERE a.id IS NULL OR a.currency <> n.currency
         ORDER BY a.id IS NULL DESC, n.journal_id
         LIMIT 1;
        IF bad.missing THEN
            RAISE EXCEPTION 'journal % posts to account %, which does not exist', bad.journal_id, bad.account_id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
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
    journals bigint[];
    paid bigint[];
    wanted bigint;
    found bigint;
    reversing boolean;
BEGIN
    SELECT count(*), array_agg(id ORDER BY id), coalesce(bool_or(reverses_id IS NOT NULL), false),
           array_agg(DISTINCT payment_id ORDER BY payment_id) FILTER (WHERE payment_id IS NOT NULL)
      INTO wanted, journals, reversing, paid
      FROM new_journals;
    SELECT count(DISTINCT e.journal_id) INTO found FROM ledger_entries e WHERE e.journal_id = ANY (journals);
    IF found < wanted THEN
        SELECT n.id INTO jid
          FROM new_journals n
         WHERE (SELECT e.id FROM ledger_entries e WHERE e.journal_id = n.id LIMIT 1) IS NULL
         ORDER BY n.id
         LIMIT 1;
        RAISE EXCEPTION 'journal % has no entries', jid USING ERRCODE = 'check_violation';
    END IF;
    IF reversing THEN
        SELECT n.id, n.reverses_id INTO bad
          FROM new_journals n
         WHERE n.reverses_id IS NOT NULL AND (SELECT j.id FROM ledger_journals j WHERE j.id = n.reverses_id) IS NULL
         ORDER BY n.id
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'journal % reverses journal %, which does not exist', bad.id, bad.reverses_id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
    END IF;
    IF current_setting('transaction_isolation') = 'read committed' THEN
        SELECT count(*) INTO found FROM payments p WHERE p.id = ANY (paid);
    ELSE
        SELECT count(l.id) INTO found
          FROM unnest(paid) AS n (payment_id)
          LEFT JOIN LATERAL (SELECT p.id FROM payments p WHERE p.id = n.payment_id FOR KEY SHARE OF p) AS l ON true;
    END IF;
    IF found < coalesce(cardinality(paid), 0) THEN
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
ALTER FUNCTION ledger_check_new_entries() SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION ledger_check_new_journals() SET search_path = pg_catalog, public, pg_temp;
