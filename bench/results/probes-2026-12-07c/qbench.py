import sys, time, statistics, psycopg2
qs = {}
cur_name = None
for line in open(sys.argv[1]):
    if line.startswith('-- '):
        cur_name = line[3:].strip(); qs[cur_name] = ''
    elif cur_name:
        qs[cur_name] += line
c = psycopg2.connect(host='127.0.0.1', user='postgres', dbname='pf2_run'); c.autocommit = True
cur = c.cursor()
cur.execute("SET enable_seqscan = off; SET max_parallel_workers_per_gather = 0; SET jit = off; SET work_mem = '64MB'")
res = {k: [] for k in qs}
for r in range(int(sys.argv[2]) if len(sys.argv) > 2 else 5):
    for k, q in qs.items():
        t = time.perf_counter(); cur.execute(q); res[k].append((time.perf_counter() - t) * 1000)
for k, v in res.items():
    print(f"{k:28s} min {min(v):7.1f}  med {statistics.median(v):7.1f} ms")
