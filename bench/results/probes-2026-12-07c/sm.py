import sys, time
sys.path.insert(0, sys.argv[1])
from reconciliation.db import make_engine, session_factory
from reconciliation.reports import run as reports
engine = make_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/pf2_run", pool_size=3); sessions = session_factory(engine)
with sessions() as s:
    t = time.perf_counter(); reports._groups(s, 1); print(sys.argv[1], round(time.perf_counter() - t, 2))
