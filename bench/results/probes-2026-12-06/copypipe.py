"""Prototype: classify share via COPY (SELECT) TO STDOUT binary piped into COPY recon_items FROM STDIN binary."""
import os, sys, time, threading; sys.path.insert(0, "/work/main"); sys.path.insert(0, "/work/main/bench")
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
import psycopg2
import reconcile_scale
from reconciliation.nightly import matching
db = sys.argv[1]; mode = sys.argv[2]
DSN = f"host=127.0.0.1 user=postgres dbname={db}"
base = matching._CLASSIFY
cols = base[base.index("INSERT INTO recon_items (") + len("INSERT INTO recon_items ("):base.index(")\nSELECT :run_id")]
select = base[base.index("SELECT :run_id"):]
if mode == "pipe":
    old = "SELECT :run_id, cls, reference, payment_id, provider_txn_id, internal_status, internal_amount, internal_currency,\n       provider_status, provider_amount, provider_currency, provider_lines, fee, expected_fee,"
    assert old in select, select[:400]
    select = select.replace(old, "SELECT CAST(:run_id AS bigint), cls, reference, payment_id, provider_txn_id, internal_status, internal_amount, internal_currency,\n       provider_status, provider_amount, provider_currency, provider_lines::int, fee, expected_fee::bigint,")
    select = select.replace("THEN provider_amount - internal_amount END,", "THEN provider_amount - internal_amount END::bigint,")
conn0 = psycopg2.connect(DSN); c0 = conn0.cursor()
c0.execute("SELECT window_start, window_end FROM recon_runs WHERE id=1"); ws, we = c0.fetchone(); conn0.close()
params = dict(run_id=99, provider="cinetpay", start=ws, end=we, sla_cutoff=datetime.now(UTC)-timedelta(hours=1), tolerance=0, fee_bps=None, day=reconcile_scale.DAY)
def sql_for(part):
    s = select.replace("{part_i}", matching._part("reference", part)).replace("{part_p}", matching._part("reference", part)).replace("{visible}", matching.VISIBLE_SQL)
    import re
    return re.sub(r"(?<!:):(\w+)", r"%(\1)s", s)
def share_insert(k):
    conn = psycopg2.connect(DSN); cur = conn.cursor()
    cur.execute("SET work_mem='256MB'; SET enable_sort=off; SET synchronous_commit=off")
    t = time.perf_counter()
    cur.execute(f"INSERT INTO recon_items ({cols}) " + sql_for((k, 2)), params)
    n = cur.rowcount; conn.rollback(); conn.close(); return time.perf_counter() - t, n
def share_pipe(k):
    src = psycopg2.connect(DSN); dst = psycopg2.connect(DSN)
    sc, dc = src.cursor(), dst.cursor()
    sc.execute("SET work_mem='256MB'; SET enable_sort=off")
    dc.execute("SET synchronous_commit=off")
    r, w = os.pipe()
    rf, wf = os.fdopen(r, "rb", buffering=1 << 20), os.fdopen(w, "wb", buffering=1 << 20)
    t = time.perf_counter()
    q = sc.mogrify("COPY (" + sql_for((k, 2)) + ") TO STDOUT (FORMAT binary)", params).decode()
    def out():
        try: sc.copy_expert(q, wf)
        finally: wf.close()
    th = threading.Thread(target=out); th.start()
    dc.copy_expert(f"COPY recon_items ({cols}) FROM STDIN (FORMAT binary)", rf)
    th.join(); n = dc.rowcount
    d = time.perf_counter() - t
    dst.rollback(); src.rollback(); src.close(); dst.close(); rf.close(); return d, n
fn = share_insert if mode == "insert" else share_pipe
for r in range(3):
    t = time.perf_counter()
    with ThreadPoolExecutor(2) as pool: res = list(pool.map(fn, [0, 1]))
    print(mode, "side by side %.2f" % (time.perf_counter() - t), [("%.2f" % d, n) for d, n in res], flush=True)
