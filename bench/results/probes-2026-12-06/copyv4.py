import time, io, sys
from reconciliation.db import make_engine, session_factory
from reconciliation.reports import pg
S = session_factory(make_engine('postgresql+psycopg2://postgres@127.0.0.1:5432/rc_t', pool_size=2))
class Null(io.RawIOBase):
    def writable(self): return True
    def write(self, b): return len(b)
def run(sql, label):
    ts = []
    for _ in range(3):
        with S() as s:
            t = time.perf_counter(); pg._copy(s, sql, {"run_id": 1, "provider": "cinetpay", "business_date": "2026-11-20"}, pg._BothRows(Null(), Null())); ts.append(time.perf_counter() - t)
    print(label, ["%.2f" % x for x in ts], flush=True)
sql = pg._BOTH_ITEMS
run(sql, "now")
for col, hot in (("cls", "matched"), ("internal_status", "succeeded"), ("provider_status", "succeeded")):
    sql = sql.replace(f"CASE WHEN {col} IN (", f"CASE WHEN {col} = '{hot}' OR {col} IN (")
run(sql, "hot first")
