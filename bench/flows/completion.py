#!/usr/bin/env python3
"""bench/flows/completion.py -- the time PostgreSQL takes for one completion
(complete_jobs_with, inside its transaction, so without the commit), in two
schemas taking turns: a step of bench/flows/bench.lua's flow (a and b emit
an event that starts the next step, c ends the run) and a plain job.

  python3 bench/flows/completion.py URL ROUNDS SCHEMA...

Each SCHEMA holds the flow "bench" (run bench/flows/bench.lua once against
it, with the build whose migrations it should have). Per round and schema:
one run, each step fetched and completed alone, then one plain job. Prints
the p50 and p90 of each kind, in ms, as psql's \\timing measures them.
"""
import re
import subprocess
import sys
import uuid

url, rounds, schemas = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
process = str(uuid.uuid4())
steps = (("a", "a.done"), ("b", "b.done"), ("c", None), ("plain", None))
lines = ["\\timing on"]
for _ in range(rounds):
    for s in schemas:
        lines.append(f"SELECT {s}.start_flow('bench', '{{}}') \\gset")
        lines.append(f"SELECT {s}.send('plain', '{{}}') \\gset")
        for step, event in steps:
            queue = step if step == "plain" else "bench." + step
            effects = ("'[{\"events\":[{\"type\":\"%s\",\"data\":{}}]}]'::jsonb" % event
                       if event else "NULL")
            lines.append(f"SELECT id AS jid, attempt AS att FROM {s}.fetch_jobs('{queue}', 1, "
                         f"'{process}') \\gset")
            lines.append(f"BEGIN; SELECT '--T {s} {step}'; SELECT count(*) FROM "
                         f"{s}.complete_jobs_with(ARRAY[:jid]::bigint[], '[null]'::jsonb, "
                         f"'{process}'::uuid, {effects}, ARRAY[:att]::integer[]); COMMIT;")
p = subprocess.run(["psql", url, "-qAtX"], input="\n".join(lines), capture_output=True,
                   text=True)
if p.returncode != 0 or p.stderr.strip():
    sys.exit(p.stderr)
times, key, state = {}, None, None
for line in p.stdout.splitlines():
    m = re.match(r"--T (\S+) (\S+)", line)
    if m:
        key, state = m.groups(), "marker"
        continue
    m = re.match(r"Time: ([\d.]+) ms", line)
    if not m:
        continue
    if state == "marker":  # the marker's own SELECT
        state = "complete"
    elif state == "complete":
        times.setdefault(key, []).append(float(m.group(1)))
        state = None
for (s, step), v in sorted(times.items()):
    v.sort()
    print(f"{s} {step} n {len(v)} p50 {v[len(v) // 2]:.3f} p90 {v[int(len(v) * 0.9)]:.3f}")
