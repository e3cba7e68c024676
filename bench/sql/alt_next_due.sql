-- alt_next_due.sql: next_due() returns NULL when the queue has no delayed
-- job. As is, greatest(NULL, 0) is 0 (GREATEST ignores NULLs), so every
-- fetch that comes back short makes the worker fetch again 1 ms later and
-- run next_due (a sequential scan of `job`) again: an idle queue spins at
-- ~1000 fetch + next_due pairs per second. Applied by bench_worker.sh
-- (BENCH_PATCH) over its own schema; sql/ is untouched.
CREATE OR REPLACE FUNCTION @schema@.next_due(q text) RETURNS double precision
LANGUAGE sql STABLE AS $$
  SELECT CASE WHEN m IS NOT NULL
              THEN greatest(extract(epoch FROM m - now()), 0)::double precision END
    FROM (SELECT min(j.start_after) AS m
            FROM @schema@.job j
           WHERE j.queue = q AND j.state < 'active' AND j.start_after > now()) s
$$;
