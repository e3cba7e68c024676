#!/usr/bin/env python3
"""bench/bench_sse.py -- SSE fan-out: CLIENTS readers of
GET /api/events/stream?stream=sse:* while events are appended at RATE/s
for SECONDS; prints per-client counts and delivery latency p50/p99/max.

  bench_sse.py BASE_URL DATABASE_URL SCHEMA CLIENTS RATE SECONDS

Latency: the time a client read the event minus the event's data.t, the
clock_timestamp() of its append (the appends of one tenth of a second are
one transaction, so the figure includes up to that transaction's commit).
Same machine, so one clock. HTTP/1.0, so the stream comes without
chunked framing.

The readers are one thread on epoll (a thread per client made the client
itself the bottleneck at 100 clients), and the appends are sent to one psql
on a fixed schedule of one transaction every 0.1 s, so that a slow append
does not lower the rate asked. Each client checks that it got every event
exactly once (ids distinct, as many as appended). Used by
bench/bench_sse.sh."""
import re, selectors, socket, subprocess, sys, threading, time, urllib.parse

base, dburl, schema = sys.argv[1], sys.argv[2], sys.argv[3]
clients, rate, seconds = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
u = urllib.parse.urlparse(base)
T = re.compile(rb'"t": ([0-9.e+]+)')
ID = re.compile(rb'(?m)^id: (\d+)')


class Client:
    def __init__(self):
        self.sock = socket.create_connection((u.hostname, u.port))
        self.sock.sendall(b"GET /api/events/stream?stream=sse:* HTTP/1.0\r\n"
                          b"Host: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        self.sock.setblocking(False)
        self.rest = b""
        self.ready = False
        self.ids = []
        self.lat = []
        self.cut = False


sel = selectors.DefaultSelector()
cs = [Client() for _ in range(clients)]
for c in cs:
    sel.register(c.sock, selectors.EVENT_READ, c)


def pump(timeout):
    for key, _ in sel.select(timeout):
        c = key.data
        try:
            data = c.sock.recv(1 << 18)
        except BlockingIOError:
            continue
        now = time.time()
        if not data:
            sel.unregister(c.sock)
            continue
        buf = c.rest + data
        end = buf.rfind(b"\n\n")
        if end < 0:
            c.rest = buf
            continue
        done, c.rest = buf[:end + 2], buf[end + 2:]
        if not c.ready and b": subscribed" in done:
            c.ready = True
        if b"moonq.overflow" in done:
            c.cut = True
        c.ids.extend(ID.findall(done))
        c.lat.extend(now - float(t) for t in T.findall(done))


deadline = time.time() + 30
while not all(c.ready for c in cs):
    if time.time() > deadline:
        sys.exit("a client did not subscribe within 30 s")
    pump(0.1)

per = max(1, rate // 10)  # one transaction every 0.1 s
batches = int(seconds * 10)
psql = subprocess.Popen(["psql", dburl, "-qAtX", "-v", "ON_ERROR_STOP=1"],
                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def append():
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
    psql.wait()


t0 = time.time()
appender = threading.Thread(target=append, daemon=True)
appender.start()
sent = per * batches
deadline = t0 + seconds + 30
while time.time() < deadline and (appender.is_alive() or
                                  min(len(c.ids) for c in cs) < sent):
    pump(0.05)
appended = time.time() - t0
if psql.returncode:
    sys.exit("the appends failed")
alll = sorted(v for c in cs for v in c.lat)
got = [len(c.ids) for c in cs]
once = sum(1 for c in cs if len(set(c.ids)) == len(c.ids) == sent)
def pct(p):
    return alll[min(len(alll) - 1, int(p * len(alll)))] * 1000 if alll else float("nan")
print(f"clients={clients} events={sent} asked {rate}/s over {seconds:.0f} s; "
      f"each client got min {min(got)} max {max(got)}; {once} of {clients} got "
      f"every event exactly once; {sum(c.cut for c in cs)} cut off; "
      f"latency p50 {pct(0.5):.1f} ms p99 {pct(0.99):.1f} ms "
      f"max {alll[-1] * 1000 if alll else 0:.1f} ms")
