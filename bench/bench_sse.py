#!/usr/bin/env python3
"""bench/bench_sse.py -- SSE fan-out: CLIENTS readers of
GET /api/events/stream?stream=sse:* while events are appended at RATE/s
for SECONDS; prints per-client counts and delivery latency p50/p99/max.

  bench_sse.py BASE_URL DATABASE_URL SCHEMA CLIENTS RATE SECONDS

Latency: the time a client read the event minus the event's data.t, the
clock_timestamp() of its append (the appends of one tenth of a second are
one transaction, so the figure includes up to that transaction's commit).
Same machine, so one clock. HTTP/1.0, so the stream comes without
chunked framing. Used by bench/bench_sse.sh."""
import json, socket, subprocess, sys, threading, time, urllib.parse

base, dburl, schema = sys.argv[1], sys.argv[2], sys.argv[3]
clients, rate, seconds = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
u = urllib.parse.urlparse(base)
lat = [[] for _ in range(clients)]
ready = [threading.Event() for _ in range(clients)]
stop = threading.Event()

def reader(i):
    s = socket.create_connection((u.hostname, u.port))
    s.sendall(b"GET /api/events/stream?stream=sse:* HTTP/1.0\r\nHost: 127.0.0.1\r\n"
              b"Accept: text/event-stream\r\n\r\n")
    f = s.makefile("rb")
    while not stop.is_set():
        line = f.readline()
        if not line:
            break
        if line.startswith(b": subscribed"):
            ready[i].set()
        elif line.startswith(b"data: "):
            now = time.time()
            e = json.loads(line[6:])
            lat[i].append(now - e["data"]["t"])
    s.close()

threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(clients)]
for t in threads:
    t.start()
for r in ready:
    if not r.wait(30):
        sys.exit("a client did not subscribe within 30 s")
per = max(1, rate // 10)  # one transaction every 0.1 s
batches = int(seconds * 10)
sql = []
for b in range(batches):
    sql.append("BEGIN;")
    sql.append(f"SELECT {schema}.append('sse:' || (g % 10), 'tick', "
               f"jsonb_build_object('t', extract(epoch FROM clock_timestamp()), 'b', {b})) "
               f"FROM generate_series(1, {per}) g;")
    sql.append("COMMIT;")
    sql.append("SELECT pg_sleep(0.1);")
t0 = time.time()
subprocess.run(["psql", dburl, "-qAtX", "-v", "ON_ERROR_STOP=1"], input="\n".join(sql),
               text=True, check=True, stdout=subprocess.DEVNULL)
sent = per * batches
deadline = time.time() + 30
while time.time() < deadline and min(len(x) for x in lat) < sent:
    time.sleep(0.2)
elapsed = time.time() - t0
stop.set()
alll = sorted(v for x in lat for v in x)
got = [len(x) for x in lat]
def pct(p):
    return alll[min(len(alll) - 1, int(p * len(alll)))] * 1000 if alll else float("nan")
print(f"clients={clients} events={sent} rate={sent / (elapsed if elapsed else 1):.0f}/s appended over "
      f"{seconds:.0f} s; each client got min {min(got)} max {max(got)}; "
      f"latency p50 {pct(0.5):.1f} ms p99 {pct(0.99):.1f} ms max {alll[-1] * 1000 if alll else 0:.1f} ms")
