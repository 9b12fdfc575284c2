#!/bin/bash
for i in 1 2 3; do for v in plain cached; do
  psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS rc_t" -c "CREATE DATABASE rc_t TEMPLATE rc_tpl"
  if [ $v = cached ]; then psql -h 127.0.0.1 -U postgres -d rc_t -qc "ALTER SEQUENCE ledger_journals_id_seq CACHE 200000" -c "ALTER SEQUENCE ledger_entries_id_seq CACHE 400000"; fi
  psql -h 127.0.0.1 -U postgres -d rc_t -qc "CHECKPOINT"
  echo "$v $(PYTHONPATH=/work/main /work/main/.venv/bin/python /tmp/b/fee_one.py rc_t)"
done; done
