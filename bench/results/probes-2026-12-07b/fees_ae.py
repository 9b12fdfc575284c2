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
    for s in ("session_preload_libraries = 'auto_explain'", "auto_explain.log_min_duration = 30",
              "auto_explain.log_nested_statements = on", "auto_explain.log_analyze = on", "auto_explain.log_timing = off"):
        c.execute(text("ALTER DATABASE pf2_run SET " + s))
    c.execute(text('CHECKPOINT'))
engine = make_engine(base + "/pf2_run", pool_size=2); sessions = session_factory(engine)
t = time.perf_counter(); n = runs.post_fees(sessions, 1); print(code, n, round(time.perf_counter() - t, 2))
