import sys, os, time, signal, subprocess
ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
from pathlib import Path
from zoneinfo import ZoneInfo
from sqlalchemy import create_engine, text
from reconciliation.db import make_engine, session_factory, transaction
from reconciliation.statements.files import import_file
from reconciliation.nightly import runs
from datetime import date
base = "postgresql+psycopg2://postgres@127.0.0.1:5432"
what = sys.argv[1]  # import | classify | both
prof = len(sys.argv) > 2 and sys.argv[2]
e = create_engine(base + "/postgres", isolation_level="AUTOCOMMIT")
with e.connect() as c:
    c.execute(text('DROP DATABASE IF EXISTS pf_run WITH (FORCE)'))
    c.execute(text('CREATE DATABASE pf_run TEMPLATE pf_tpl'))
    c.execute(text('CHECKPOINT'))
url = base + "/pf_run"
engine = make_engine(url, pool_size=2)
sessions = session_factory(engine)
TZ = ZoneInfo("Africa/Abidjan")
def perf(name):
    if not prof: return None
    p = subprocess.Popen(["perf", "record", "-a", "-g", "-q", "-o", f"/tmp/pf/{name}.data"], stderr=subprocess.DEVNULL)
    time.sleep(0.5); return p
def stop(p):
    if p: p.send_signal(signal.SIGINT); p.wait()
p = perf("import") if what in ("import","both") else None
t = time.perf_counter()
with transaction(sessions) as session:
    imp = import_file(session, "cinetpay", Path("/tmp/pf/stmt.csv"), business_tz=TZ)
print(f"import {time.perf_counter()-t:.2f}", flush=True); stop(p)
if what in ("classify", "both"):
    p = perf("classify")
    t = time.perf_counter()
    policy = runs.Policy(tz=TZ, sla=3600)
    run_id = runs.start(sessions, "cinetpay", date(2026, 11, 20), policy, "manual")
    items = runs.classify_run(sessions, run_id, policy)
    print(f"classify {time.perf_counter()-t:.2f} {items}", flush=True); stop(p)
