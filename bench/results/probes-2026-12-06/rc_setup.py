import sys, time
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/work/main/bench")
from pathlib import Path
from sqlalchemy import create_engine, text
import reconcile_scale
from reconciliation import migrate
from reconciliation.db import make_engine, session_factory, transaction
from reconciliation.nightly import runs
from reconciliation.statements.files import import_file
n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000000
admin = create_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
with admin.connect() as c:
    c.execute(text("DROP DATABASE IF EXISTS rc_tpl")); c.execute(text("CREATE DATABASE rc_tpl"))
url = "postgresql+psycopg2://postgres@127.0.0.1:5432/rc_tpl"
migrate.upgrade(url, sys.argv[2] if len(sys.argv) > 2 else "head")  # 0017: the schema before 0018-0019
st = Path("/tmp/b/cinetpay-2026-11-20.csv")
reconcile_scale._setup(url, n, st, False, 50)
engine = make_engine(url, pool_size=2); sessions = session_factory(engine)
with transaction(sessions) as s:
    import_file(s, "cinetpay", st, business_tz=reconcile_scale.TZ)
policy = runs.Policy(tz=reconcile_scale.TZ, sla=3600)
rid = runs.start(sessions, "cinetpay", reconcile_scale.DAY, policy, "manual")
t = time.perf_counter(); print("items", runs.classify_run(sessions, rid, policy), time.perf_counter() - t, "run", rid)
