#!/usr/bin/env python3
"""bench/bench_sse.py -- SSE fan-out: CLIENTS readers of
GET /api/events/stream?stream=sse:* while events are appended at RATE/s
for SECONDS; prints per-client counts and delivery latency p50/p99/max.

  bench_sse.py BASE_URL DATABASE_URL SCHEMA CLIENTS RATE SECONDS READER

READER is bench/bench_sse_client.c built: the readers, one epoll loop in
C (a Python reader cost several times the server's CPU at 100 clients, and
its own lag was most of the latency measured). Latency: the time a client
read the event minus the event's data.t, the clock_timestamp() of its
append (the appends of one tenth of a second are one transaction, so the
figure includes up to that transaction's commit). Same machine, so one
clock.

The appends go to one psql on a fixed schedule of one transaction every
0.1 s, so that a slow append does not lower the rate asked. Used by
bench/bench_sse.sh."""
import resource, subprocess, sys, time, urllib.parse

base, dburl, schema = sys.argv[1], sys.argv[2], sys.argv[3]
clients, rate, seconds = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
reader_bin = sys.argv[7]
port = urllib.parse.urlparse(base).port
per = max(1, rate // 10)  # one transaction every 0.1 s
batches = int(seconds * 10)
sent = per * batches

reader = subprocess.Popen([reader_bin, str(port), str(clients), str(sent)],
                          stdout=subprocess.PIPE, text=True)
if reader.stdout.readline().strip() != "ready":
    sys.exit("the clients did not subscribe")
psql = subprocess.Popen(["psql", dburl, "-qAtX", "-v", "ON_ERROR_STOP=1"],
                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
t0 = time.time()
for b in range(batches):
    delay = t0 + b * 0.1 - time.time()
    if delay > 0:
        time.sleep(delay)
    psql.stdin.write(
        f"BEGIN; SELECT {schema}.append('sse:' || (g % 10), 'tick', "
        f"jsonb_build_object('t', extract(epoch FROM clock_timestamp()), 'b', {b})) "
        f"FROM generate_series(1, {per}) g; COMMIT;\n")
    psql.stdin.flush()
psql.stdin.close()
if psql.wait() != 0:
    sys.exit("the appends failed")
appended = time.time() - t0
result = reader.stdout.read().strip()
reader.wait()
cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"clients={clients} events={sent} asked {rate}/s, appended in {appended:.1f} s; "
      f"{result}; readers' CPU {cpu.ru_utime + cpu.ru_stime:.2f} s (psql's included)")
