import time, sys, psycopg2
conn = psycopg2.connect("host=127.0.0.1 user=postgres dbname=postgres"); conn.autocommit=True
cur = conn.cursor()
def cpu():
    with open("/proc/stat") as f: v = list(map(int, f.readline().split()[1:]))
    return v[3]+v[4], sum(v), v[4]
end = time.time() + float(sys.argv[1]); t0=time.time(); out=[]; last=cpu()
while time.time() < end:
    cur.execute("SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 18), coalesce(wait_event,'') FROM pg_stat_activity WHERE datname='pf_run' AND state='active' AND pid<>pg_backend_pid() ORDER BY pid")
    rows = cur.fetchall()
    time.sleep(0.1)
    c = cpu(); d = c[1]-last[1]
    util = 1-(c[0]-last[0])/d if d else 0; iow = (c[2]-last[2])/d if d else 0
    last = c
    out.append(f"{time.time()-t0:5.2f} u={util:.2f} io={iow:.2f} " + " | ".join(f"{q.strip()}:{w}" for q,w in rows))
print("\n".join(out))
