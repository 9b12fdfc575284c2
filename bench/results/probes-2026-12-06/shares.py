import sys, time; sys.path.insert(0, "/work/main"); sys.path.insert(0, "/work/main/bench")
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from sqlalchemy import text
import reconcile_scale
from reconciliation.db import make_engine, session_factory
from reconciliation.nightly import matching
db = sys.argv[1]
engine = make_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/" + db, pool_size=2); S = session_factory(engine)
with S() as s:
    ws, we = s.execute(text("SELECT window_start, window_end FROM recon_runs WHERE id=1")).one()
w = matching.Window(provider="cinetpay", start=ws, end=we, sla_cutoff=datetime.now(UTC) - timedelta(hours=1))
def share(k):
    with S() as s:
        t = time.perf_counter(); matching.classify(s, 99, w, reconcile_scale.DAY, (k, 2)); d = time.perf_counter() - t; s.rollback(); return d
share(0)
for r in range(int(sys.argv[2]) if len(sys.argv) > 2 else 3):
    t = time.perf_counter()
    with ThreadPoolExecutor(2) as pool: ds = list(pool.map(share, [0, 1]))
    print(db, "side by side %.2f" % (time.perf_counter() - t), ["%.2f" % d for d in ds], flush=True)
if sys.argv[3:] == ["exceptions"]:  # again, inserting only the items that are not matched (storing only exceptions)
    orig = matching._CLASSIFY
    matching._CLASSIFY = orig.replace("WHERE cls IS NOT NULL\n", "WHERE cls IS NOT NULL AND cls <> 'matched'\n")
    assert matching._CLASSIFY != orig
    share(0)
    for r in range(int(sys.argv[2])):
        t = time.perf_counter()
        with ThreadPoolExecutor(2) as pool: ds = list(pool.map(share, [0, 1]))
        print(db, "exceptions only, side by side %.2f" % (time.perf_counter() - t), ["%.2f" % d for d in ds], flush=True)
