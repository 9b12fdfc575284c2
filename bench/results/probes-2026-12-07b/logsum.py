import re, sys, collections
text = open("/var/log/postgresql/postgresql-15-main.log", errors="replace").read().splitlines()[int(sys.argv[1]):]
s = "\n".join(text)
acc = collections.defaultdict(lambda: [0, 0.0])
for m in re.finditer(r"duration: ([0-9.]+) ms\s+statement:\s*(.*?)(?=\n\S|\Z)", s, re.S):
    key = " ".join(m.group(2).split()[:3])[:40]
    acc[key][0] += 1; acc[key][1] += float(m.group(1))
for k, (n, t) in sorted(acc.items(), key=lambda x: -x[1][1]): print(f"{k:42s} {n:3d} {t:8.0f}")
