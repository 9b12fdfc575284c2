import time, sys, psycopg2, collections
conn = psycopg2.connect("host=127.0.0.1 user=postgres dbname=postgres"); conn.autocommit=True
cur = conn.cursor()
end = time.time() + float(sys.argv[1]); c = collections.Counter(); n = 0
while time.time() < end:
    cur.execute("SELECT coalesce(wait_event_type,'CPU') || ':' || coalesce(wait_event,'') FROM pg_stat_activity WHERE datname='pf2_run' AND state='active' AND backend_type='client backend' AND pid<>pg_backend_pid()")
    for (w,) in cur.fetchall(): c[w] += 1
    n += 1
    time.sleep(0.01)
tot = sum(c.values())
for k, v in c.most_common(): print(f"{v*100/tot:5.1f}% {k}")
