# One fee chunk after another in one session, each statement timed; "explain" prints EXPLAIN ANALYZE of the
# drafts and the posting (with the guard triggers' times). Database rc_tpl as for fee_ab.py; copies it to rc_t.
import sys, time
from sqlalchemy import text, create_engine
from reconciliation.db import make_engine, session_factory, transaction
from reconciliation.nightly import runs
from reconciliation import ledger
admin = create_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
with admin.connect() as c:
    c.execute(text("DROP DATABASE IF EXISTS rc_t")); c.execute(text("CREATE DATABASE rc_t TEMPLATE rc_tpl"))
url = "postgresql+psycopg2://postgres@127.0.0.1:5432/rc_t"
S = session_factory(make_engine(url, pool_size=2))
with S() as s:
    s.execute(text("CHECKPOINT"))
    lo = s.scalar(text("select min(id) from recon_items where run_id=1"))
params = dict(run_id=1, matched="matched", fee_variance="fee_variance", succeeded="succeeded", kind="fee",
              memo_head="cinetpay fee on ", memo_tail=" (run 1)", currencies=["XOF"])
with transaction(S) as s:
    acc = ledger.account_ids(s, [(ledger.fees("cinetpay"), "XOF"), (ledger.clearing("cinetpay"), "XOF")])
params["fee_accounts"] = [acc[ledger.fees("cinetpay"), "XOF"]]; params["clearing_accounts"] = [acc[ledger.clearing("cinetpay"), "XOF"]]
explain = sys.argv[1] == "explain" if len(sys.argv) > 1 else False
for k in range(3):
    start = lo + k * runs.FEE_CHUNK_SQL
    with transaction(S) as s:
        t0 = time.perf_counter()
        ledger.hold_fees(s, "cinetpay", posting=True)
        s.execute(text("SET LOCAL work_mem = '64MB'"))
        d = "payrecon_fee_draft_x"
        pre = "EXPLAIN (ANALYZE, BUFFERS, TIMING ON) " if explain else ""
        t1 = time.perf_counter()
        if explain:
            for r in s.execute(text(pre + runs._FEES_DUE.format(draft=d).replace("CREATE UNLOGGED TABLE {d} AS".format(d=d), "")), params | {"low": start, "high": start + runs.FEE_CHUNK_SQL}): print(r[0])
        s.execute(text(runs._FEES_DUE.format(draft=d)), params | {"low": start, "high": start + runs.FEE_CHUNK_SQL})
        t2 = time.perf_counter()
        if explain:
            for r in s.execute(text(pre + runs._fees_post(d, skip_posted=False)), params): print(r[0])
        else:
            n = s.scalar(text(runs._fees_post(d, skip_posted=False)), params)
        t3 = time.perf_counter()
        s.execute(text(f"DROP TABLE {d}"))
    t4 = time.perf_counter()
    print(f"chunk {k}: lock {t1-t0:.3f} due {t2-t1:.3f} post {t3-t2:.3f} commit {t4-t3:.3f}")
