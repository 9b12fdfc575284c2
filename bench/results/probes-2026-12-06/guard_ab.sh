#!/bin/bash
for i in 1 2 3; do for v in old new; do
  [ $i = 2 ] && order="new old" 
  psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS rc_t" -c "CREATE DATABASE rc_t TEMPLATE rc_tpl" 2>/dev/null
  if [ $v = new ]; then psql -h 127.0.0.1 -U postgres -d rc_t -q -f /tmp/b/guard_new.sql; fi
  psql -h 127.0.0.1 -U postgres -d rc_t -qc "CHECKPOINT"
  echo "$v $(PYTHONPATH=/work/main /work/main/.venv/bin/python /tmp/b/fee_one.py rc_t)"
done; done
