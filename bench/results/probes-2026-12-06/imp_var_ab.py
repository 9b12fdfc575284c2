import sys, time, subprocess
from sqlalchemy import create_engine, text
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/work/main/bench")
import reconcile_scale
from reconciliation import migrate
admin = create_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
VARIANTS = {
    "base": [],
    "nobrin": ["DROP INDEX ix_statement_lines_import"],
    "nopayout": ["DROP INDEX ix_statement_lines_payout"],
    "pkday": ["ALTER TABLE statement_lines DROP CONSTRAINT pk_statement_lines, ADD CONSTRAINT pk_statement_lines PRIMARY KEY (provider, business_date, id)", "DROP INDEX ix_statement_lines_day"],
    "seqcache": ["ALTER SEQUENCE statement_lines_id_seq CACHE 100000"],
    "dayline": ["DROP INDEX ix_statement_lines_day", "CREATE INDEX ix_statement_lines_day ON statement_lines (provider, business_date, line_no)"],
    "both": ["ALTER SEQUENCE statement_lines_id_seq CACHE 100000", "DROP INDEX ix_statement_lines_day", "CREATE INDEX ix_statement_lines_day ON statement_lines (provider, business_date, line_no)"],
}
if sys.argv[1] == "setup":
    with admin.connect() as c:
        c.execute(text("DROP DATABASE IF EXISTS rc_ia")); c.execute(text("CREATE DATABASE rc_ia"))
    url = "postgresql+psycopg2://postgres@127.0.0.1:5432/rc_ia"
    migrate.upgrade(url, sys.argv[2] if len(sys.argv) > 2 else "head"); reconcile_scale.seed_payments(url, 1000000, False); sys.exit()
CHILD = """
import sys, time
from pathlib import Path
from zoneinfo import ZoneInfo
from reconciliation.db import make_engine, session_factory, transaction
from reconciliation.statements.files import import_file
engine = make_engine(sys.argv[1], pool_size=2); sessions = session_factory(engine)
t = time.perf_counter()
with transaction(sessions) as session:
    import_file(session, "cinetpay", Path("/tmp/b/cinetpay-2026-11-20.csv"), business_tz=ZoneInfo("Africa/Abidjan"))
print("%.2f" % (time.perf_counter() - t))
"""
names = sys.argv[2:]
for r in range(int(sys.argv[1])):
    for v in (names if r % 2 == 0 else names[::-1]):
        with admin.connect() as c:
            c.execute(text("DROP DATABASE IF EXISTS rc_ib")); c.execute(text("CREATE DATABASE rc_ib TEMPLATE rc_ia"))
        e = create_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/rc_ib", isolation_level="AUTOCOMMIT")
        with e.connect() as c:
            for ddl in VARIANTS[v]: c.execute(text(ddl))
            c.execute(text("CHECKPOINT"))
        e.dispose()
        out = subprocess.run([sys.executable, "-c", CHILD, "postgresql+psycopg2://postgres@127.0.0.1:5432/rc_ib"], capture_output=True, text=True, cwd="/work/main")
        print(r + 1, v, out.stdout.strip() or out.stderr[-500:], flush=True)
with admin.connect() as c:
    c.execute(text("DROP DATABASE IF EXISTS rc_ib"))
