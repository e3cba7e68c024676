-- pg_temp.send_micro(stmts, n, rounds): the CPU of single statements inside
-- one backend, without the client and the commit. Each statement gets a
-- function that runs it n times (plans cached, as in a prepared session);
-- the rounds run the statements in turn, so that this machine's swings hit
-- each alike. Returns the backend's CPU time per call in microseconds (from
-- /proc/self/schedstat, so time the backend waited for the CPU does not
-- count; needs a superuser): the fastest round and the median. A statement
-- starting with SELECT runs as PERFORM. Wakes are off (moonq.no_wake), as
-- on moonq's own connections.
CREATE FUNCTION pg_temp.send_micro(stmts text[], n integer, rounds integer)
RETURNS TABLE (stmt text, best_us numeric, median_us numeric)
LANGUAGE plpgsql AS $$
DECLARE
  t bigint;
  times float8[] := array_fill(NULL::float8, ARRAY[cardinality(stmts), rounds]);
BEGIN
  PERFORM set_config('moonq.no_wake', 'on', true);
  FOR s IN 1..cardinality(stmts) LOOP
    EXECUTE format('CREATE OR REPLACE FUNCTION pg_temp.send_micro_%s(n integer) RETURNS void'
                   ' LANGUAGE plpgsql AS %L', s,
                   'BEGIN FOR i IN 1..n LOOP '
                   || regexp_replace(stmts[s], '^SELECT', 'PERFORM') || '; END LOOP; END');
    EXECUTE format('SELECT pg_temp.send_micro_%s(20)', s); -- plans made
  END LOOP;
  FOR r IN 1..rounds LOOP
    FOR s IN 1..cardinality(stmts) LOOP
      t := split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint;
      EXECUTE format('SELECT pg_temp.send_micro_%s(%s)', s, n);
      times[s][r] := (split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint - t)
                     / 1e3 / n;
    END LOOP;
  END LOOP;
  FOR s IN 1..cardinality(stmts) LOOP
    stmt := stmts[s];
    SELECT round(min(x)::numeric, 1),
           round((percentile_cont(0.5) WITHIN GROUP (ORDER BY x))::numeric, 1)
      INTO best_us, median_us
      FROM unnest(times[s:s][1:rounds]) x;
    RETURN NEXT;
  END LOOP;
END $$;
