#!/usr/bin/env bash
# cli_http_stream.sh -- event streams of one pattern share one reader
# (src/events.c, mq_events_follow) and still each get every event exactly
# once, in order: 20 clients following from the end, one from the start
# (1,200 events of history, more than two reads, then live while events
# keep coming: it joins the shared reader on the way), one from a plain id,
# and one that disconnects in the middle and reconnects with its
# Last-Event-ID, while 3,000 events are appended in 30 transactions and one
# transaction that took its id early commits late, and empty transactions
# commit all along (so that a stream catching up finds the reader's
# snapshot ahead of its own and reads up to it before sharing it, the
# debug log says). Each client's events are compared with the table; a
# server allowed 300 descriptors answers once 250 streams that filled it
# close. Run by ctest as sh_cli_http_stream.
set -u

source "$(dirname "$0")/lib.sh"
mq_test_setup cli_http_stream
mkdir -p "$dir/handlers"
mq_serve_http debug

sql "SELECT count(*) FROM (SELECT $schema.append('fan:' || (i % 7), 'old',
       jsonb_build_object('n', i)) FROM generate_series(1, 1200) i) x" >/dev/null
from_id=$(sql "SELECT max(id) - 100 FROM $schema.queue_events")

python3 - "$port" "$url" "$schema" "$from_id" >"$dir/check" 2>&1 <<'PY' || fail "streams: $(cat "$dir/check")"
import re, socket, subprocess, sys, threading, time
port, url, schema, from_id = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
ID = re.compile(r'(?m)^id: ((\d+)[^\n]*)$')

class Client(threading.Thread):
    """Reads GET /api/events/stream; keeps (id, token) of each event."""
    def __init__(self, query, last=None, stop_after=None):
        super().__init__(daemon=True)
        self.query, self.last, self.stop_after = query, last, stop_after
        self.events, self.subscribed, self.text = [], threading.Event(), ""
        self.done = threading.Event()
    def run(self):
        s = socket.create_connection(("127.0.0.1", port))
        head = f"GET /api/events/stream?{self.query} HTTP/1.0\r\nHost: 127.0.0.1\r\n"
        if self.last:
            head += f"Last-Event-ID: {self.last}\r\n"
        s.sendall((head + "\r\n").encode())
        rest = ""
        while not self.done.is_set():
            data = s.recv(65536)
            if not data:
                break
            rest += data.decode()
            *blocks, rest = rest.split("\n\n")
            for b in blocks:
                self.text += b + "\n\n"
                if ": subscribed" in b:
                    self.subscribed.set()
                m = ID.search(b)
                if m:
                    self.events.append((int(m.group(2)), m.group(1)))
                    if self.stop_after and len(self.events) >= self.stop_after:
                        s.close()
                        return
        s.close()

def psql(stmt):
    return subprocess.run(["psql", url, "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", stmt],
                          capture_output=True, text=True, check=True).stdout

live = [Client("stream=fan:*") for _ in range(20)]
first = Client("stream=fan:*", stop_after=500)
for c in live + [first]:
    c.start()
for c in live + [first]:
    if not c.subscribed.wait(20):
        sys.exit("a live client was not subscribed")
start = psql(f"SELECT coalesce(max(id), 0) FROM {schema}.queue_events").strip()

def append():
    for b in range(30):
        psql(f"SELECT count(*) FROM (SELECT {schema}.append('fan:' || (g % 7), 'tick', "
             f"jsonb_build_object('b', {b}, 'g', g)) FROM generate_series(1, 100) g) x")
        time.sleep(0.1)
# Transactions of nothing, committing all along: the snapshots of a stream
# catching up and of the shared reader differ, so that a stream joins by
# reading up to the reader's snapshot rather than finding it equal.
churn = subprocess.Popen(["psql", url, "-qAtX", "-c",
                          "DO $$ BEGIN FOR i IN 1..3000 LOOP PERFORM pg_current_xact_id(); "
                          "COMMIT; PERFORM pg_sleep(0.001); END LOOP; END $$"],
                         stdout=subprocess.DEVNULL)
late = subprocess.Popen(["psql", url, "-qAtX", "-c",
                         f"BEGIN; SELECT {schema}.append('fan:late', 'late', '{{}}'); "
                         "SELECT pg_sleep(1.5); COMMIT;"], stdout=subprocess.DEVNULL)
appender = threading.Thread(target=append)
appender.start()
time.sleep(0.3)
history = Client("stream=fan:*&from=start")
history.start()
by_id = Client(f"stream=fan:*&from={from_id}")
by_id.start()
first.join(30)
if not first.events:
    sys.exit("the reconnecting client got nothing")
again = Client("stream=fan:*", last=first.events[-1][1])
again.start()
appender.join()
late.wait()
churn.wait()
live_ids = [int(x) for x in psql(f"SELECT id FROM {schema}.queue_events WHERE id > {start} "
                                  "AND stream LIKE 'fan:%' ORDER BY id").split()]
all_ids = [int(x) for x in psql(f"SELECT id FROM {schema}.queue_events "
                                 "WHERE stream LIKE 'fan:%' ORDER BY id").split()]
late_id = int(psql(f"SELECT id FROM {schema}.queue_events WHERE type = 'late'"))
want = {c: live_ids for c in live}
want[history] = all_ids
want[by_id] = [i for i in all_ids if i > from_id]
deadline = time.time() + 30
def got(c):
    return [e[0] for e in (first.events + again.events if c is again else c.events)]
while time.time() < deadline and any(len(got(c)) < len(w) for c, w in want.items()):
    time.sleep(0.1)
want[again] = live_ids
bad = 0
for name, c in [("live", x) for x in live] + [("from=start", history),
                                               ("from=id", by_id), ("reconnected", again)]:
    ids, w = got(c), want[c]
    # In order: ascending ids, but for the late commit, which comes when
    # it commits; exactly once: as many as in the table, none twice.
    if sorted(ids) != w or [i for i in ids if i != late_id] != [i for i in w if i != late_id]:
        missing = sorted(set(w) - set(ids))[:5]
        twice = len(ids) - len(set(ids))
        print(f"{name}: got {len(ids)} of {len(w)} events; missing {missing}; "
              f"{twice} twice; in order: {ids == sorted(ids)}")
        bad += 1
for c in live + [history, by_id, again]:
    c.done.set()
sys.exit(1 if bad else 0)
PY
# At the connection limit: a server allowed 300 descriptors takes 172
# connections (src/http.c keeps 128 for itself); 250 event streams fill it
# (the rest wait to be accepted), then all close. MHD watches no waiting
# stream, so it learnt of a close only at the next heartbeat (15 s) and
# took no new connection meanwhile: a request must now be answered at once.
cap_port=$((port + 1))
(ulimit -n 300 && exec "$bin" --config "$dir/config.lua" web --http "127.0.0.1:$cap_port") \
  >"$dir/cap.log" 2>&1 &
cap_pid=$!
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$cap_port/api/queues" && break; sleep 0.1; done
python3 - "$cap_port" <<'PY' || fail "at the connection limit: $(tail -3 "$dir/cap.log")"
import socket, subprocess, sys, time
port = int(sys.argv[1])
socks = []
for i in range(250):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /api/events/stream?stream=cap HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    socks.append(s)
time.sleep(1)
held = 0
for s in socks:
    s.settimeout(0.2)
    try:
        held += b"subscribed" in s.recv(4096)
    except OSError:
        pass
if held < 100 or held == 250:
    sys.exit(f"{held} of 250 streams were served: the limit was not reached")
for s in socks:
    s.close()
t0 = time.time()
r = subprocess.run(["curl", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}",
                    f"http://127.0.0.1:{port}/api/queues"], capture_output=True, text=True)
if r.stdout != "200" or time.time() - t0 > 5:
    sys.exit(f"after the streams closed: {r.stdout} in {time.time() - t0:.1f} s")
PY
kill -INT "$cap_pid"; wait "$cap_pid"
grep -A20 -m1 Sanitizer "$dir/cap.log" && fail "the server at its connection limit reported the above"

# They shared one reader: the live ones from the start, the others once
# they had caught up (the debug log says when).
equal=$(grep -c 'a follower of fan:\* caught up: it shares the reader' "$dir/run.log")
behind=$(grep -c 'a follower of fan:\* caught up: it read up to the reader and shares it' "$dir/run.log")
[ $((equal + behind)) = 3 ] || fail "3 streams should have caught up and shared the reader, $((equal + behind)) did"
[ "$behind" -ge 1 ] || fail "no stream joined by reading up to the reader's snapshot ($equal at the same one)"
exit $failed
