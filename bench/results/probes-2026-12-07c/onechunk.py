import sys, time
code = sys.argv[1]
sys.path.insert(0, code)
from sqlalchemy import create_engine, text
from reconciliation.db import make_engine, session_factory
from reconciliation.nightly import runs
base = "postgresql+psycopg2://postgres@127.0.0.1:5432"
e = create_engine(base + "/postgres", isolation_level="AUTOCOMMIT")
with e.connect() as c:
    c.execute(text('DROP DATABASE IF EXISTS pf2_run WITH (FORCE)'))
    c.execute(text('CREATE DATABASE pf2_run TEMPLATE pf2_tpl'))
    c.execute(text("ALTER DATABASE pf2_run SET log_min_duration_statement = 20"))
    if 'notrig' in sys.argv:
        pass
    c.execute(text('CHECKPOINT'))
if 'notrig' in sys.argv:
    e2 = create_engine(base + '/pf2_run', isolation_level='AUTOCOMMIT')
    with e2.connect() as c2:
        c2.execute(text('ALTER TABLE ledger_journals DISABLE TRIGGER USER')); c2.execute(text('ALTER TABLE ledger_entries DISABLE TRIGGER USER'))
    e2.dispose()
if 'new' in sys.argv:
    import subprocess; subprocess.run(['psql','-q','-h','127.0.0.1','-U','postgres','pf2_run','-f',str(__import__('pathlib').Path(__file__).with_name('newguard.sql'))], check=True)
engine = make_engine(base + "/pf2_run", pool_size=2); sessions = session_factory(engine)
orig = runs._fee_ranges
runs._fee_ranges = lambda low, end, s: orig(low, end, 1)[:int(sys.argv[2])]
with e.connect() as c:
    start = c.execute(text("select pg_current_wal_insert_lsn()")).scalar()
import subprocess, os, signal
perf = subprocess.Popen(['perf','record','-a','-g','-o','/tmp/pf/fee.data']) if 'perf' in sys.argv else None
time.sleep(0.5)
t = time.perf_counter(); n = runs.post_fees(sessions, 1); print(code, n, round(time.perf_counter() - t, 2))
with e.connect() as c:
    end = c.execute(text("select pg_current_wal_insert_lsn()")).scalar()
print(start, end)
if perf: perf.send_signal(signal.SIGINT); perf.wait()
