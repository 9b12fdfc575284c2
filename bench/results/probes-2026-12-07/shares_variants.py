"""Prototype: classify share via COPY (SELECT) TO STDOUT binary piped into COPY recon_items FROM STDIN binary."""
import os, sys, time, threading; sys.path.insert(0, "."); sys.path.insert(0, "bench")
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
if True:
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
TARGET = os.environ.get("TARGET", "recon_items")
def share_insert(k):
    conn = psycopg2.connect(DSN); cur = conn.cursor()
    cur.execute("SET work_mem='256MB'; SET enable_sort=off; SET synchronous_commit=off")
    t = time.perf_counter()
    if TARGET == "v2":
        sel = sql_for((k, 2))
        q = (f"WITH c AS MATERIALIZED ({sel}), e AS (INSERT INTO recon_items ({cols}) SELECT * FROM c WHERE cls <> 'matched' RETURNING 1) "
             f"INSERT INTO ri_unl ({cols}) SELECT * FROM c WHERE cls = 'matched'")
        cur.execute(q, params)
    elif TARGET == "v4":
        sel = sql_for((k, 2))
        q = (f"WITH c AS MATERIALIZED ({sel}), e AS (INSERT INTO recon_items ({cols}) SELECT * FROM c WHERE cls <> 'matched' RETURNING 1) "
             f"SELECT internal_currency, provider_currency, count(*), sum(internal_amount), sum(provider_amount), sum(fee), (SELECT count(*) FROM e) FROM c WHERE cls = 'matched' GROUP BY 1, 2")
        cur.execute(q, params); cur.fetchall()
    elif TARGET == "v6":
        sel = sql_for((k, 2))
        c = [x.strip() for x in cols.split(",")]
        aggs = ", ".join(f"min({x}) AS {x}" if x not in ("healed",) else f"bool_or({x}) AS {x}" for x in c if x not in ("cls", "internal_currency", "provider_currency", "run_id"))
        q = (f"WITH g AS (SELECT cls, internal_currency, provider_currency, min(run_id) AS run_id, count(*) AS n, sum(internal_amount) AS si, sum(provider_amount) AS sp, sum(fee) AS sf, {aggs} "
             f"FROM ({sel}) c({cols}) GROUP BY cls, internal_currency, provider_currency, CASE WHEN cls = 'matched' THEN NULL ELSE reference END), "
             f"e AS (INSERT INTO recon_items ({cols}) SELECT {cols} FROM g WHERE cls <> 'matched' RETURNING 1) "
             f"SELECT internal_currency, provider_currency, n, si, sp, sf, (SELECT count(*) FROM e) FROM g WHERE cls = 'matched'")
        cur.execute(q, params); cur.fetchall()
    elif TARGET == "v5":
        sel = sql_for((k, 2))
        q = (f"INSERT INTO recon_items ({cols}) SELECT * FROM ({sel}) c WHERE cls <> 'matched'")
        cur.execute(q, params)
    elif TARGET == "rownum":
        sel = sql_for((k, 2))
        q = f"INSERT INTO ri_copy (id, {cols}) SELECT {k} * 10000000000 + row_number() over (), * FROM ({sel}) s"
        cur.execute(q, params)
    elif TARGET == "v3":
        sel = sql_for((k, 2))
        q = (f"WITH ins AS (INSERT INTO ri_unl ({cols}) {sel} RETURNING id, {cols}) "
             f"INSERT INTO recon_items (id, {cols}) SELECT * FROM ins WHERE cls <> 'matched'")
        cur.execute(q, params)
    else:
        cur.execute(f"INSERT INTO {TARGET} ({cols}) " + sql_for((k, 2)), params)
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
def whole_pipe():
    src = psycopg2.connect(DSN); dst = psycopg2.connect(DSN)
    sc, dc = src.cursor(), dst.cursor()
    sc.execute("SET work_mem='256MB'; SET enable_sort=off")
    dc.execute("SET synchronous_commit=off")
    r, w = os.pipe()
    rf, wf = os.fdopen(r, "rb", buffering=1 << 20), os.fdopen(w, "wb", buffering=1 << 20)
    t = time.perf_counter()
    q = sc.mogrify("COPY (" + sql_for(None) + ") TO STDOUT (FORMAT binary)", params).decode()
    def out():
        try: sc.copy_expert(q, wf, size=1<<20)
        finally: wf.close()
    th = threading.Thread(target=out); th.start()
    dc.copy_expert(f"COPY recon_items ({cols}) FROM STDIN (FORMAT binary)", rf, size=1<<20)
    th.join(); n = dc.rowcount
    d = time.perf_counter() - t
    dst.rollback(); src.rollback(); src.close(); dst.close(); rf.close(); return d, n
def whole_insert():
    conn = psycopg2.connect(DSN); cur = conn.cursor()
    cur.execute("SET work_mem='256MB'; SET enable_sort=off; SET synchronous_commit=off")
    t = time.perf_counter()
    cur.execute(f"INSERT INTO recon_items ({cols}) " + sql_for(None), params)
    n = cur.rowcount; conn.rollback(); conn.close(); return time.perf_counter() - t, n
for r in range(3):
    for m in sys.argv[2:]:
        t = time.perf_counter()
        if m in ("insert", "pipe"):
            fn = share_insert if m == "insert" else share_pipe
            with ThreadPoolExecutor(2) as pool: res = list(pool.map(fn, [0, 1]))
        else:
            res = [whole_pipe() if m == "pipe1" else whole_insert()]
        print(m, "%.2f" % (time.perf_counter() - t), [("%.2f" % d, n) for d, n in res], flush=True)
