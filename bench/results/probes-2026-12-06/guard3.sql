\timing on
SET enable_seqscan = off; SET jit = off; SET work_mem = '64MB';
CREATE TEMP TABLE new_journals AS SELECT * FROM ledger_journals ORDER BY id DESC LIMIT 98406;
CREATE TEMP TABLE new_entries AS SELECT * FROM ledger_entries WHERE journal_id IN (SELECT id FROM new_journals);
\echo locked_orig
SELECT count(DISTINCT e.journal_id) FROM ledger_entries e WHERE e.journal_id = ANY (ARRAY(SELECT id FROM new_journals));
\echo locked_exists
SELECT count(*) FROM new_journals n WHERE EXISTS (SELECT 1 FROM ledger_entries e WHERE e.journal_id = n.id);
\echo locked_exists_sorted
SELECT count(*) FROM (SELECT id FROM new_journals ORDER BY id) n WHERE EXISTS (SELECT 1 FROM ledger_entries e WHERE e.journal_id = n.id);
\echo present_orig
SELECT count(*) FROM ledger_journals j WHERE j.id = ANY (ARRAY(SELECT DISTINCT journal_id FROM new_entries));
\echo balance_wanted_orig
SELECT journal_id, currency, sum(CASE side WHEN 'debit' THEN amount ELSE -amount END) AS diff FROM new_entries GROUP BY journal_id, currency HAVING sum(CASE side WHEN 'debit' THEN amount ELSE -amount END) <> 0 ORDER BY journal_id, currency LIMIT 1;
SELECT count(*) FROM (SELECT DISTINCT journal_id FROM new_entries) AS n;
\echo balance_wanted_one
SELECT count(*) FILTER (WHERE diff <> 0), count(DISTINCT journal_id), array_agg(journal_id) FILTER (WHERE diff <> 0) IS NULL FROM (SELECT journal_id, currency, sum(CASE side WHEN 'debit' THEN amount ELSE -amount END) AS diff FROM new_entries GROUP BY journal_id, currency) g;
\echo balance_hash_sorted
SELECT journal_id, currency, diff FROM (SELECT journal_id, currency, sum(CASE side WHEN 'debit' THEN amount ELSE -amount END) AS diff FROM new_entries GROUP BY journal_id, currency) g WHERE diff <> 0 ORDER BY journal_id, currency LIMIT 1;
