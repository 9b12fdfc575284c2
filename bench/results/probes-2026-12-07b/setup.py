import sys, os
ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
from pathlib import Path
from sqlalchemy import create_engine, text
from reconciliation import migrate
import reconcile_scale
base = "postgresql+psycopg2://postgres@127.0.0.1:5432"
e = create_engine(base + "/postgres", isolation_level="AUTOCOMMIT")
with e.connect() as c:
    c.execute(text('DROP DATABASE IF EXISTS pf_tpl WITH (FORCE)'))
    c.execute(text('CREATE DATABASE pf_tpl'))
url = base + "/pf_tpl"
migrate.upgrade(url)
reconcile_scale.seed_payments(url, 1000000, False)
reconcile_scale.write_statement(Path("/tmp/pf/stmt.csv"), 1000000, False)
