-- current
SELECT count(*) FROM (SELECT nextval('ledger_journals_id_seq') AS id, due.* FROM (SELECT p.id AS payment_id, i.fee, i.provider_currency AS currency, i.reference FROM recon_items i JOIN LATERAL (SELECT id FROM payments WHERE id = i.payment_id AND status = 'succeeded' OFFSET 0) AS p ON true WHERE i.run_id = 1 AND i.id >= 200000 AND i.id < 300000 AND i.fee > 0 AND i.provider_currency IS NOT NULL AND (i.cls IN ('matched', 'fee_variance') OR i.healed) ORDER BY p.id) AS due) x;
-- saop_hash
SET enable_nestloop = off;
WITH due AS MATERIALIZED (SELECT i.payment_id, i.fee, i.provider_currency AS currency, i.reference FROM recon_items i WHERE i.run_id = 1 AND i.id >= 200000 AND i.id < 300000 AND i.fee > 0 AND i.provider_currency IS NOT NULL AND (i.cls IN ('matched', 'fee_variance') OR i.healed)),
paid AS (SELECT id FROM payments WHERE id = ANY (ARRAY(SELECT payment_id FROM due ORDER BY payment_id)) AND status = 'succeeded')
SELECT count(*) FROM (SELECT nextval('ledger_journals_id_seq') AS id, d.* FROM (SELECT due.* FROM due JOIN paid ON paid.id = due.payment_id ORDER BY due.payment_id) d) x;
RESET enable_nestloop;
