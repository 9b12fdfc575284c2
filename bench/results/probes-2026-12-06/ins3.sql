\timing on
CREATE TEMP TABLE src AS SELECT * FROM recon_items WHERE run_id=1;
CREATE UNLOGGED TABLE u_bare (LIKE recon_items);
CREATE TABLE l_bare (LIKE recon_items);
CHECKPOINT;
SELECT pg_current_wal_lsn() AS a \gset
INSERT INTO l_bare SELECT * FROM src;
SELECT pg_size_pretty(pg_current_wal_lsn() - :'a'::pg_lsn);
INSERT INTO u_bare SELECT * FROM src;
INSERT INTO l_bare SELECT * FROM src;
INSERT INTO u_bare SELECT * FROM src;
DROP TABLE u_bare, l_bare;
