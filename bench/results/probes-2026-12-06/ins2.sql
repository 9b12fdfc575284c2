\timing on
SET work_mem='256MB';
CREATE TEMP TABLE src AS SELECT * FROM recon_items WHERE run_id=1;
CREATE TABLE t_brin (LIKE recon_items); CREATE INDEX ON t_brin USING brin (run_id);
CREATE TABLE t_part (LIKE recon_items); CREATE INDEX ON t_part (reference) WHERE cls <> 'matched';
CREATE SEQUENCE s_c CACHE 1000; CREATE SEQUENCE s_n;
CREATE TABLE t_seqc (LIKE recon_items); ALTER TABLE t_seqc ALTER id SET DEFAULT nextval('s_c');
CREATE TABLE t_seqn (LIKE recon_items); ALTER TABLE t_seqn ALTER id SET DEFAULT nextval('s_n');
CHECKPOINT;
INSERT INTO t_brin SELECT * FROM src;
INSERT INTO t_part SELECT * FROM src;
INSERT INTO t_seqc (run_id, cls, reference, payment_id, provider_txn_id, internal_status, internal_amount, internal_currency, provider_status, provider_amount, provider_currency, provider_lines, fee, expected_fee, difference, healed, detail) SELECT run_id, cls, reference, payment_id, provider_txn_id, internal_status, internal_amount, internal_currency, provider_status, provider_amount, provider_currency, provider_lines, fee, expected_fee, difference, healed, detail FROM src;
INSERT INTO t_seqn (run_id, cls, reference, payment_id, provider_txn_id, internal_status, internal_amount, internal_currency, provider_status, provider_amount, provider_currency, provider_lines, fee, expected_fee, difference, healed, detail) SELECT run_id, cls, reference, payment_id, provider_txn_id, internal_status, internal_amount, internal_currency, provider_status, provider_amount, provider_currency, provider_lines, fee, expected_fee, difference, healed, detail FROM src;
DROP TABLE t_brin, t_part, t_seqc, t_seqn; DROP SEQUENCE s_c, s_n;
