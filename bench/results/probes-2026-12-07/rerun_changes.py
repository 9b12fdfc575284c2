import sys, time, tempfile
sys.path.insert(0, "."); sys.path.insert(0, "bench")
from pathlib import Path
import reconcile_scale
from reconciliation.db import make_engine, session_factory
from reconciliation.nightly import runs
from reconciliation.reports import run as reports
url = "postgresql+psycopg2://postgres@127.0.0.1:5432/rc_tpl"
engine = make_engine(url, pool_size=4); sessions = session_factory(engine)
policy = runs.Policy(tz=reconcile_scale.TZ, sla=3600)
rid = runs.start(sessions, "cinetpay", reconcile_scale.DAY, policy, "rerun")
t = time.perf_counter(); runs.classify_run(sessions, rid, policy); print("classify", round(time.perf_counter() - t, 2))
with sessions() as s:
    for f in (reports.count_changes, reports.changes):
        t = time.perf_counter(); r = f(s, rid); print(f.__name__, r if isinstance(r, int) else len(r), round(time.perf_counter() - t, 2))
orig = reports.changes
def timed(*a, **k):
    t = time.perf_counter(); r = orig(*a, **k); print("  changes call", round(time.perf_counter() - t, 2)); return r
reports.changes = timed
with tempfile.TemporaryDirectory() as out, sessions() as s:
    t = time.perf_counter(); reports.export_all(s, rid, Path(out)); print("export_all", round(time.perf_counter() - t, 2))
