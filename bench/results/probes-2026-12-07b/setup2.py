import sys
ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
from pathlib import Path
from datetime import date
from zoneinfo import ZoneInfo
from sqlalchemy import create_engine, text
from reconciliation import migrate
from reconciliation.db import make_engine, session_factory, transaction
from reconciliation.statements.files import import_file
from reconciliation.nightly import runs
import reconcile_scale
base = "postgresql+psycopg2://postgres@127.0.0.1:5432"
e = create_engine(base + "/postgres", isolation_level="AUTOCOMMIT")
with e.connect() as c:
    c.execute(text('DROP DATABASE IF EXISTS pf2_tpl WITH (FORCE)'))
    c.execute(text('CREATE DATABASE pf2_tpl'))
url = base + "/pf2_tpl"
migrate.upgrade(url)
reconcile_scale.seed_payments(url, 1000000, False)
reconcile_scale.write_statement(Path("/tmp/pf/stmt50.csv"), 1000000, False, 50)
engine = make_engine(url, pool_size=2); sessions = session_factory(engine)
TZ = ZoneInfo("Africa/Abidjan")
with transaction(sessions) as s:
    import_file(s, "cinetpay", Path("/tmp/pf/stmt50.csv"), business_tz=TZ)
policy = runs.Policy(tz=TZ, sla=3600)
run_id = runs.start(sessions, "cinetpay", date(2026, 11, 20), policy, "manual")
print(runs.classify_run(sessions, run_id, policy), run_id)
