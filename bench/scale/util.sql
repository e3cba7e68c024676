-- Helpers of bench/bench_scale.sh, in schema bench_sutil. Each takes the
-- schema s of moonq's tables. Procedures commit between steps so that no
-- statement keeps a snapshot (and holds back the xmin horizon) for longer
-- than one step.
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS bench_sutil CASCADE;
CREATE SCHEMA bench_sutil;

-- Adds n jobs named q (queue q), data {"n": i}: one job sent with send (so
-- the queue's defaults apply as for any send, without NOTIFY: moonq.no_wake)
-- and copied n - 1 times by one INSERT ... SELECT generate_series (about
-- three times as fast as send_many).
CREATE OR REPLACE PROCEDURE bench_sutil.fill(s text, q text, n bigint)
LANGUAGE plpgsql AS $$
DECLARE
  tmpl bigint;
BEGIN
  IF n <= 0 THEN
    RETURN;
  END IF;
  PERFORM set_config('moonq.no_wake', 'on', true);
  EXECUTE format('SELECT %I.send($1, ''{"n": 1}'')', s) INTO tmpl USING q;
  EXECUTE format('INSERT INTO %1$I.job (queue, name, data, priority, retry_limit, retry_delay,
                                       retry_backoff, retry_delay_max, expire_in, retention, dead_letter)
                 SELECT t.queue, t.name, jsonb_build_object(''n'', g), t.priority, t.retry_limit,
                        t.retry_delay, t.retry_backoff, t.retry_delay_max, t.expire_in, t.retention,
                        t.dead_letter
                   FROM %1$I.job t, generate_series(2, %2$s) g
                  WHERE t.id = %3$s', s, n, tmpl);
  COMMIT;
END $$;

-- Waits until the boolean query cond (one row, one column) is true,
-- running it every 0.1 s in a transaction of its own, or timeout seconds
-- pass; returns the epoch of that moment and the last answer.
CREATE OR REPLACE PROCEDURE bench_sutil.wait_until(cond text, timeout float8,
                                                  INOUT at float8 DEFAULT NULL,
                                                  INOUT ok boolean DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
  deadline timestamptz := clock_timestamp() + make_interval(secs => timeout);
BEGIN
  LOOP
    EXECUTE cond INTO ok;
    EXIT WHEN ok OR clock_timestamp() > deadline;
    COMMIT;
    PERFORM pg_sleep(0.1);
    COMMIT;
  END LOOP;
  at := extract(epoch FROM clock_timestamp());
END $$;

-- Sends n jobs named q one by one, each send and its commit timed inside
-- the backend (no client round trip); returns p50 and p99 in ms.
CREATE OR REPLACE PROCEDURE bench_sutil.send_timed(s text, q text, n int,
                                                  INOUT p50_ms float8 DEFAULT NULL,
                                                  INOUT p99_ms float8 DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz;
  ms float8[] := '{}';
BEGIN
  FOR i IN 1..n LOOP
    t0 := clock_timestamp();
    EXECUTE format('SELECT %I.send($1, jsonb_build_object(''i'', $2))', s) USING q, i;
    COMMIT;
    ms := ms || (extract(epoch FROM clock_timestamp() - t0) * 1000)::float8;
  END LOOP;
  SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x), percentile_cont(0.99) WITHIN GROUP (ORDER BY x)
    INTO p50_ms, p99_ms FROM unnest(ms) x;
END $$;

-- Sends jobs named q at rate jobs/s for seconds s, each its own transaction
-- (so each sends its NOTIFY), on a fixed schedule: job i at start + i/rate
-- (a late send is followed by the ones due, without sleeping).
CREATE OR REPLACE PROCEDURE bench_sutil.send_paced(s text, q text, rate float8, seconds float8)
LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
  i bigint := 0;
  lag float8;
BEGIN
  WHILE clock_timestamp() < t0 + make_interval(secs => seconds) LOOP
    lag := extract(epoch FROM t0 + make_interval(secs => i / rate) - clock_timestamp());
    IF lag > 0 THEN
      PERFORM pg_sleep(lag);
    END IF;
    EXECUTE format('SELECT %I.send($1, jsonb_build_object(''i'', $2))', s) USING q, i;
    COMMIT;
    i := i + 1;
  END LOOP;
END $$;
