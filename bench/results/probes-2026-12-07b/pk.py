import sys, time, os, subprocess
ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from pathlib import Path
from zoneinfo import ZoneInfo
from sqlalchemy import create_engine, text
from reconciliation.db import make_engine, session_factory, transaction
from reconciliation.statements.files import import_file
base = "postgresql+psycopg2://postgres@127.0.0.1:5432"
def cpu():
    out = subprocess.run(["bash","-c","for p in $(pgrep -u postgres); do cat /proc/$p/stat 2>/dev/null; done"], capture_output=True, text=True).stdout
    t = 0
    for line in out.splitlines():
        v = line.split(")")[1].split(); t += int(v[11]) + int(v[12])
    return t / os.sysconf("SC_CLK_TCK")
res = {}
for r in range(int(sys.argv[1])):
    for variant in (["pk", "nopk"] if r % 2 == 0 else ["nopk", "pk"]):
        e = create_engine(base + "/postgres", isolation_level="AUTOCOMMIT")
        with e.connect() as c:
            c.execute(text('DROP DATABASE IF EXISTS pf_run WITH (FORCE)'))
            c.execute(text('CREATE DATABASE pf_run TEMPLATE pf_tpl'))
        e.dispose()
        e = create_engine(base + "/pf_run", isolation_level="AUTOCOMMIT")
        with e.connect() as c:
            if variant == "nopk":
                c.execute(text("ALTER TABLE statement_lines DROP CONSTRAINT pk_statement_lines"))
            c.execute(text("CHECKPOINT"))
        e.dispose()
        engine = make_engine(base + "/pf_run", pool_size=2); sessions = session_factory(engine)
        c0 = cpu(); t = time.perf_counter()
        with transaction(sessions) as session:
            import_file(session, "cinetpay", Path("/tmp/pf/stmt.csv"), business_tz=ZoneInfo("Africa/Abidjan"))
        res.setdefault(variant, []).append((round(time.perf_counter() - t, 2), round(cpu() - c0, 2)))
        engine.dispose()
for k, v in res.items(): print(k, v)
