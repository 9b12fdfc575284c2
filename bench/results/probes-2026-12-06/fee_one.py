import sys, time
from reconciliation.db import make_engine, session_factory
from reconciliation.nightly import runs
S = session_factory(make_engine('postgresql+psycopg2://postgres@127.0.0.1:5432/' + sys.argv[1], pool_size=2))
t=time.perf_counter(); n = runs.post_fees(S, 1); print("%.2f" % (time.perf_counter()-t), n)
