import sys, time; sys.path.insert(0, "/work/main"); sys.path.insert(0, "/work/main/bench")
from datetime import UTC, datetime, timedelta
from sqlalchemy import text
import reconcile_scale
from reconciliation.db import make_engine, session_factory
from reconciliation.nightly import matching
engine = make_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/rc_exp"); S = session_factory(engine)
base = matching._CLASSIFY
AGG_OLD = base[base.index("        SELECT reference,\n               count(*)"):base.index("        FROM statement_lines")]
AGG_NEW = """        SELECT reference,
               count(*) AS n,
               count(*) FILTER (WHERE status = 'succeeded') AS n_success,
               max(provider_txn_id COLLATE "C") AS provider_txn_id,
               (ARRAY['succeeded', 'refunded', 'failed', 'pending'])[min(CASE status WHEN 'succeeded' THEN 1 WHEN 'refunded' THEN 2 WHEN 'failed' THEN 3 ELSE 4 END)] AS status,
               coalesce(max(amount) FILTER (WHERE status = 'succeeded'), max(amount)) AS amount,
               max(currency COLLATE "C") AS currency,
               max(fee) AS fee
"""
variants = {"base": base, "agg": base.replace(AGG_OLD, AGG_NEW),
            "exc": base.replace("WHERE cls IS NOT NULL", "WHERE cls IS NOT NULL AND cls <> 'matched'"),
            "aggexc": base.replace(AGG_OLD, AGG_NEW).replace("WHERE cls IS NOT NULL", "WHERE cls IS NOT NULL AND cls <> 'matched'")}
part = (0, 2) if "--share" in sys.argv else None
for name in [a for a in sys.argv[1:] if not a.startswith("--")]:
    q = variants[name].replace("{part_i}", matching._part("reference", part)).replace("{part_p}", matching._part("reference", part)).replace("{visible}", matching.VISIBLE_SQL)
    ts = []
    for _ in range(3):
        with S() as s:
            ws, we = s.execute(text("SELECT window_start, window_end FROM recon_runs WHERE id=1")).one()
            s.execute(text("SET LOCAL work_mem='256MB'")); s.execute(text("SET LOCAL enable_sort=off"))
            t = time.perf_counter()
            r = s.execute(matching.text(q).bindparams(*[b for k, b in matching.classification()._bindparams.items() if k in ('start','end','sla_cutoff')]), dict(run_id=99, provider="cinetpay", start=ws, end=we, sla_cutoff=datetime.now(UTC)-timedelta(hours=1), tolerance=0, fee_bps=None, day=reconcile_scale.DAY)).rowcount
            ts.append(time.perf_counter() - t)
            s.rollback()
    print(name, part, ["%.2f" % x for x in ts], r, flush=True)
