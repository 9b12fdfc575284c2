import time, sys, psycopg2
conn = psycopg2.connect("host=127.0.0.1 user=postgres dbname=postgres"); conn.autocommit=True
cur = conn.cursor()
end = time.time() + float(sys.argv[1]); t0=time.time(); prev=None; out=[]
while time.time() < end:
    cur.execute("SELECT pid, left(regexp_replace(query, '\\s+', ' ', 'g'), 50) FROM pg_stat_activity WHERE datname='pf_run' AND state='active' AND pid<>pg_backend_pid() ORDER BY pid")
    rows = tuple(cur.fetchall())
    if rows != prev: out.append((round(time.time()-t0,2), rows)); prev=rows
    time.sleep(0.01)
for t, r in out: print(t, r)
