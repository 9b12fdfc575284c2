-- entries_old_total
DO $$ DECLARE bad record; wanted bigint; present bigint; BEGIN
SELECT journal_id, currency, sum(CASE side WHEN 'debit' THEN amount ELSE -amount END) AS diff INTO bad FROM ne GROUP BY journal_id, currency HAVING sum(CASE side WHEN 'debit' THEN amount ELSE -amount END) <> 0 ORDER BY journal_id, currency LIMIT 1;
SELECT count(*) INTO wanted FROM (SELECT DISTINCT journal_id FROM ne) AS n;
SELECT count(*) INTO present FROM ledger_journals j WHERE j.id = ANY (ARRAY(SELECT DISTINCT journal_id FROM ne));
SELECT n.journal_id, n.account_id, a.id IS NULL AS missing INTO bad FROM ne n LEFT JOIN ledger_accounts a ON a.id = n.account_id WHERE a.id IS NULL OR a.currency <> n.currency ORDER BY a.id IS NULL DESC, n.journal_id LIMIT 1;
END $$;
-- entries_new_hash
DO $$ DECLARE ids bigint[]; u boolean; m boolean; b boolean; present bigint; BEGIN
SELECT array_agg(g.journal_id ORDER BY g.journal_id), bool_or(g.diff <> 0), bool_or(g.mixed), bool_or(g.bad) INTO ids, u, m, b FROM (
 SELECT n.journal_id, sum(CASE n.side WHEN 'debit' THEN n.amount ELSE -n.amount END) AS diff,
        min(n.currency COLLATE "C") <> max(n.currency COLLATE "C") AS mixed,
        bool_or(a.id IS NULL OR a.currency <> n.currency) AS bad
   FROM ne n LEFT JOIN ledger_accounts a ON a.id = n.account_id GROUP BY n.journal_id) g;
SELECT count(*) INTO present FROM ledger_journals j WHERE j.id = ANY (ids);
END $$;
-- entries_new_group
DO $$ DECLARE ids bigint[]; u boolean; m boolean; b boolean; present bigint; BEGIN
SET LOCAL enable_hashagg = off;
SELECT array_agg(g.journal_id), bool_or(g.diff <> 0), bool_or(g.mixed), bool_or(g.bad) INTO ids, u, m, b FROM (
 SELECT n.journal_id, sum(CASE n.side WHEN 'debit' THEN n.amount ELSE -n.amount END) AS diff,
        min(n.currency COLLATE "C") <> max(n.currency COLLATE "C") AS mixed,
        bool_or(a.id IS NULL OR a.currency <> n.currency) AS bad
   FROM ne n LEFT JOIN ledger_accounts a ON a.id = n.account_id GROUP BY n.journal_id ORDER BY n.journal_id) g;
SELECT count(*) INTO present FROM ledger_journals j WHERE j.id = ANY (ids);
END $$;
-- entries_new_noacct_hash
DO $$ DECLARE ids bigint[]; u boolean; m boolean; b boolean; present bigint; bad record; BEGIN
SELECT array_agg(g.journal_id ORDER BY g.journal_id), bool_or(g.diff <> 0), bool_or(g.mixed) INTO ids, u, m FROM (
 SELECT n.journal_id, sum(CASE n.side WHEN 'debit' THEN n.amount ELSE -n.amount END) AS diff,
        min(n.currency COLLATE "C") <> max(n.currency COLLATE "C") AS mixed
   FROM ne n GROUP BY n.journal_id) g;
SELECT count(*) INTO present FROM ledger_journals j WHERE j.id = ANY (ids);
SELECT n.journal_id, n.account_id, a.id IS NULL AS missing INTO bad FROM ne n LEFT JOIN ledger_accounts a ON a.id = n.account_id WHERE a.id IS NULL OR a.currency <> n.currency ORDER BY a.id IS NULL DESC, n.journal_id LIMIT 1;
END $$;
-- journals_old_total
DO $$ DECLARE wanted bigint; locked bigint; bad record; BEGIN
SELECT count(*) INTO wanted FROM nj;
SELECT count(DISTINCT e.journal_id) INTO locked FROM ledger_entries e WHERE e.journal_id = ANY (ARRAY(SELECT id FROM nj));
SELECT n.id, n.reverses_id INTO bad FROM nj n WHERE n.reverses_id IS NOT NULL AND (SELECT j.id FROM ledger_journals j WHERE j.id = n.reverses_id) IS NULL ORDER BY n.id LIMIT 1;
SELECT count(DISTINCT payment_id) INTO wanted FROM nj WHERE payment_id IS NOT NULL;
SELECT count(*) INTO locked FROM payments p WHERE p.id = ANY (ARRAY(SELECT DISTINCT payment_id FROM nj WHERE payment_id IS NOT NULL));
END $$;
-- journals_new
DO $$ DECLARE wanted bigint; locked bigint; ids bigint[]; pids bigint[]; pw bigint; rev boolean; BEGIN
SELECT count(*), array_agg(id ORDER BY id), bool_or(reverses_id IS NOT NULL), count(DISTINCT payment_id), array_agg(payment_id ORDER BY payment_id) FILTER (WHERE payment_id IS NOT NULL)
  INTO wanted, ids, rev, pw, pids FROM nj;
SELECT count(DISTINCT e.journal_id) INTO locked FROM ledger_entries e WHERE e.journal_id = ANY (ids);
SELECT count(*) INTO locked FROM payments p WHERE p.id = ANY (pids);
END $$;
