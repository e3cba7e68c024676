-- Helpers of bench/bench_worker.sh, in schema bench_wutil.
CREATE SCHEMA IF NOT EXISTS bench_wutil;

-- Waits until queue q of schema s has no job left (polls every 50 ms) or
-- timeout seconds pass; returns the epoch of that moment and whether empty.
-- A procedure that commits between polls: a function would keep its
-- calling statement's snapshot for the whole drain, hold back the xmin
-- horizon, and so stop PostgreSQL from killing dead index entries and
-- pruning pages (every fetch then walks all jobs claimed since the start).
DROP FUNCTION IF EXISTS bench_wutil.wait_empty(text, text, float8);
CREATE OR REPLACE PROCEDURE bench_wutil.wait_empty(s text, q text, timeout float8,
                                                    INOUT at float8 DEFAULT NULL,
                                                    INOUT empty boolean DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
  deadline timestamptz := clock_timestamp() + make_interval(secs => timeout);
BEGIN
  LOOP
    EXECUTE format('SELECT NOT EXISTS (SELECT 1 FROM %I.job WHERE queue = $1)', s)
      INTO empty USING q;
    EXIT WHEN empty OR clock_timestamp() > deadline;
    COMMIT;
    PERFORM pg_sleep(0.05);
    COMMIT;
  END LOOP;
  at := extract(epoch FROM clock_timestamp());
END $$;

-- Sends n jobs to queue "lat" of schema s from SQL (each its own transaction,
-- so each commit sends its own NOTIFY), one every gap seconds; each job's
-- data carries its send time t (epoch, taken just before the send).
CREATE OR REPLACE PROCEDURE bench_wutil.send_lat(s text, n int, gap float8)
LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1..n LOOP
    EXECUTE format('SELECT %I.send(''lat'', jsonb_build_object(''t'', extract(epoch FROM clock_timestamp())::float8, ''i'', $1))', s)
      USING i;
    COMMIT;
    PERFORM pg_sleep(gap);
    COMMIT;
  END LOOP;
END $$;
