\timing on
CREATE TEMP TABLE src AS SELECT id + 100000000 AS id, payment_id, 'feex'::text AS kind, memo FROM ledger_journals ORDER BY id LIMIT 98406;
BEGIN;
ALTER TABLE ledger_journals DISABLE TRIGGER ledger_journals_balanced;
\echo plain
INSERT INTO ledger_journals (id, payment_id, kind, memo) SELECT id, payment_id, kind, memo FROM src;
ROLLBACK;
BEGIN;
ALTER TABLE ledger_journals DISABLE TRIGGER ledger_journals_balanced;
\echo onconflict
INSERT INTO ledger_journals (id, payment_id, kind, memo) SELECT id, payment_id, kind, memo FROM src ON CONFLICT (payment_id, kind) DO NOTHING;
ROLLBACK;
BEGIN;
ALTER TABLE ledger_journals DISABLE TRIGGER ledger_journals_balanced;
\echo plain
INSERT INTO ledger_journals (id, payment_id, kind, memo) SELECT id, payment_id, kind, memo FROM src;
ROLLBACK;
BEGIN;
ALTER TABLE ledger_journals DISABLE TRIGGER ledger_journals_balanced;
\echo onconflict
INSERT INTO ledger_journals (id, payment_id, kind, memo) SELECT id, payment_id, kind, memo FROM src ON CONFLICT (payment_id, kind) DO NOTHING;
ROLLBACK;
