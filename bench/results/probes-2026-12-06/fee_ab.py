# The run's fees on a fresh copy of rc_tpl (built by rc_setup.py on a checkout of 0cf89da, schema 0017), with the
# ledger entries as 0017 has them ("base") or keyed by (journal_id, id) as 0018 makes them ("pk2"); WAL written.
# python fee_ab.py NAME SESSIONS base|pk2   (alternate the two by hand: base pk2 base pk2 ...)
import sys, time
from sqlalchemy import text, create_engine
from reconciliation.db import make_engine, session_factory
from reconciliation.nightly import runs
runs.FEE_SESSIONS = int(sys.argv[2])
admin = create_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
with admin.connect() as c:
    c.execute(text("DROP DATABASE IF EXISTS rc_t")); c.execute(text("CREATE DATABASE rc_t TEMPLATE rc_tpl"))
if sys.argv[3] == "pk2":
    e2 = create_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/rc_t", isolation_level="AUTOCOMMIT")
    with e2.connect() as c:
        c.execute(text("ALTER TABLE ledger_entries DROP CONSTRAINT pk_ledger_entries, ADD CONSTRAINT pk_ledger_entries PRIMARY KEY (journal_id, id)"))
        c.execute(text("DROP INDEX ix_ledger_entries_journal_id"))
    e2.dispose()
with admin.connect() as c:
    c.execute(text("CHECKPOINT"))
    w0 = c.scalar(text("select pg_current_wal_lsn()"))
S = session_factory(make_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/rc_t", pool_size=2))
t = time.perf_counter(); n = runs.post_fees(S, 1); el = time.perf_counter() - t
with admin.connect() as c:
    w = c.scalar(text("select pg_wal_lsn_diff(pg_current_wal_lsn(), :w)"), {"w": w0})
print(f"{sys.argv[1]} fees {el:.2f} s journals={n} wal {w / 2**20:.0f} MiB")
