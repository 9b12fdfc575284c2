\timing on
SET work_mem = '64MB'; SET enable_seqscan = off;
SELECT min(id) AS lo FROM recon_items \gset
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT p.id AS payment_id, i.fee, i.provider_currency AS currency, i.reference
  FROM recon_items i JOIN LATERAL (SELECT id FROM payments WHERE id = i.payment_id AND status = 'succeeded' OFFSET 0) AS p ON true
 WHERE i.run_id = 1 AND i.id >= :lo AND i.id < :lo + 100000 AND i.fee > 0 AND i.provider_currency IS NOT NULL
   AND (i.cls IN ('matched', 'fee_variance') OR i.healed) ORDER BY p.id;
