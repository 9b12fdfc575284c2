import sys, time
code = sys.argv[1]
sys.path.insert(0, code)
from sqlalchemy import create_engine, text
from reconciliation.db import make_engine, session_factory
from reconciliation.nightly import runs
base = "postgresql+psycopg2://postgres@127.0.0.1:5432"
e = create_engine(base + "/postgres", isolation_level="AUTOCOMMIT")
with e.connect() as c:
    c.execute(text('DROP DATABASE IF EXISTS pf2_run WITH (FORCE)'))
    c.execute(text('CREATE DATABASE pf2_run TEMPLATE pf2_tpl'))
    c.execute(text('CHECKPOINT'))
engine = make_engine(base + "/pf2_run", pool_size=2); sessions = session_factory(engine)
with e.connect() as c:
    start = c.execute(text("select pg_current_wal_insert_lsn()")).scalar()
t = time.perf_counter(); n = runs.post_fees(sessions, 1); print(code, n, round(time.perf_counter() - t, 2))
with e.connect() as c:
    end = c.execute(text("select pg_current_wal_insert_lsn()")).scalar()
print(start, end)
