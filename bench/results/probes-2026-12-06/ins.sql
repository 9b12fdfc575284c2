\timing on
SET work_mem='256MB';
CREATE TEMP TABLE src AS SELECT * FROM recon_items WHERE run_id=1;
CREATE TABLE t_all (LIKE recon_items INCLUDING ALL);
CREATE TABLE t_noidx (LIKE recon_items INCLUDING DEFAULTS);
CREATE TABLE t_bare (LIKE recon_items);
CHECKPOINT;
INSERT INTO t_all (run_id, cls, reference, payment_id, provider_txn_id, internal_status, internal_amount, internal_currency, provider_status, provider_amount, provider_currency, provider_lines, fee, expected_fee, difference, healed, detail) SELECT run_id, cls, reference, payment_id, provider_txn_id, internal_status, internal_amount, internal_currency, provider_status, provider_amount, provider_currency, provider_lines, fee, expected_fee, difference, healed, detail FROM src;
INSERT INTO t_noidx (run_id, cls, reference, payment_id, provider_txn_id, internal_status, internal_amount, internal_currency, provider_status, provider_amount, provider_currency, provider_lines, fee, expected_fee, difference, healed, detail) SELECT run_id, cls, reference, payment_id, provider_txn_id, internal_status, internal_amount, internal_currency, provider_status, provider_amount, provider_currency, provider_lines, fee, expected_fee, difference, healed, detail FROM src;
INSERT INTO t_bare SELECT * FROM src;
CREATE TABLE t_ctas AS SELECT * FROM src;
SELECT pg_size_pretty(pg_total_relation_size('t_bare'));
DROP TABLE t_all, t_noidx, t_bare, t_ctas;
