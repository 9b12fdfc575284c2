# The run's fees in chunks of payment ids instead of item ids (a sorted table of the due items first, then each
# chunk's payments read as one range of their key): python fee_range.py, alternated with fee_ab.py NAME 2 base;
# rc_tpl at head.
import sys, time
from concurrent.futures import ThreadPoolExecutor
from sqlalchemy import text, create_engine
from reconciliation.db import make_engine, session_factory, transaction
from reconciliation.nightly import runs
from reconciliation import ledger
admin = create_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
with admin.connect() as c:
    c.execute(text("DROP DATABASE IF EXISTS rc_t")); c.execute(text("CREATE DATABASE rc_t TEMPLATE rc_tpl")); c.execute(text("CHECKPOINT"))
S = session_factory(make_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/rc_t", pool_size=2))
params = dict(run_id=1, matched="matched", fee_variance="fee_variance", succeeded="succeeded", kind="fee",
              memo_head="cinetpay fee on ", memo_tail=" (run 1)", currencies=["XOF"])
t0 = time.perf_counter()
with transaction(S) as s:
    acc = ledger.account_ids(s, [(ledger.fees("cinetpay"), "XOF"), (ledger.clearing("cinetpay"), "XOF")])
    s.execute(text("""CREATE UNLOGGED TABLE fee_due_all AS SELECT i.payment_id, i.fee, i.provider_currency AS currency, i.reference
        FROM recon_items i WHERE i.run_id = 1 AND i.fee > 0 AND i.provider_currency IS NOT NULL AND i.payment_id IS NOT NULL
        AND (i.cls IN ('matched', 'fee_variance') OR i.healed)"""))
    s.execute(text("CREATE INDEX ON fee_due_all (payment_id)")); s.execute(text("ANALYZE fee_due_all"))
    bounds = list(s.scalars(text("SELECT payment_id FROM (SELECT payment_id, row_number() OVER (ORDER BY payment_id) AS rn FROM fee_due_all) x WHERE rn % 100000 = 1 ORDER BY 1")))
    last = s.scalar(text("SELECT max(payment_id) FROM fee_due_all"))
t1 = time.perf_counter()
params["fee_accounts"] = [acc[ledger.fees("cinetpay"), "XOF"]]; params["clearing_accounts"] = [acc[ledger.clearing("cinetpay"), "XOF"]]
spans = list(zip(bounds, bounds[1:] + [last + 1]))
DUE = """CREATE UNLOGGED TABLE {draft} AS SELECT nextval('ledger_journals_id_seq') AS id, due.*
  FROM (SELECT p.id AS payment_id, d.fee, d.currency, d.reference FROM fee_due_all d JOIN payments p ON p.id = d.payment_id
         WHERE d.payment_id >= :lo AND d.payment_id < :hi AND p.id >= :lo AND p.id < :hi AND p.status = :succeeded
         ORDER BY p.id) AS due"""
times = []
def chunk(span):
    with transaction(S) as s:
        ledger.hold_fees(s, "cinetpay", posting=True)
        s.execute(text("SET LOCAL work_mem = '64MB'"))
        d = f"payrecon_fee_draft_{int(s.scalar(text('SELECT pg_backend_pid()')))}"
        a = time.perf_counter()
        s.execute(text(DUE.format(draft=d)), params | {"lo": span[0], "hi": span[1]})
        b = time.perf_counter()
        n = int(s.scalar(text(runs._fees_post(d, skip_posted=False)), params) or 0)
        c = time.perf_counter()
        s.execute(text(f"DROP TABLE {d}"))
        times.append((b - a, c - b))
        return n
with ThreadPoolExecutor(2) as pool:
    n = sum(pool.map(chunk, spans))
t2 = time.perf_counter()
print(f"range: setup {t1-t0:.2f} chunks {t2-t1:.2f} total {t2-t0:.2f} n={n} due/chunk {sum(x for x,_ in times)/len(times):.3f} post/chunk {sum(y for _,y in times)/len(times):.3f}")
