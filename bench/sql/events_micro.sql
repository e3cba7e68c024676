-- events_micro.sql: the PostgreSQL time of one append statement, measured
-- inside one backend (no client, no network, no commit in the timing), for
-- batches of 1, 64 and 1000 events. bench/bench_events.sh substitutes
-- @cur@ (moonq's schema) and @base@ (the base build's schema, or the same as
-- @cur@ without BASE_REF), then calls pg_temp.micro(variant, n) several
-- times, interleaved, each call its own transaction, and keeps the median
-- and the fastest. Variants:
--   base   append_events(jsonb) of the base schema (as moonq called it)
--   cur    append_events(text[], text[], jsonb, text[]) of moonq's schema
--   floor  INSERT ... SELECT of n generated rows into floor_events (a copy
--          of queue_events with its indexes, no wake-up)
-- The session is moonq's: moonq.no_wake = on.
SET moonq.no_wake = on;
CREATE TEMP TABLE micro_input AS
SELECT n,
       (SELECT jsonb_agg(jsonb_build_object('stream', 'bench:micro', 'type', 'bench.micro',
                                            'data', jsonb_build_object('n', g, 's', 'some text')))
          FROM generate_series(1, n) g)::text AS events,
       (SELECT array_agg('bench:micro'::text) FROM generate_series(1, n))::text AS streams,
       (SELECT array_agg('bench.micro'::text) FROM generate_series(1, n))::text AS types,
       (SELECT jsonb_agg(jsonb_build_object('n', g, 's', 'some text'))
          FROM generate_series(1, n) g)::text AS data
  FROM (VALUES (1), (64), (1000)) v(n);

CREATE FUNCTION pg_temp.micro(variant text, size integer) RETURNS text
LANGUAGE plpgsql AS $f$
DECLARE
  i micro_input;
  t0 timestamptz;
  got bigint;
BEGIN
  SELECT * INTO i FROM micro_input WHERE n = size;
  t0 := clock_timestamp();
  IF variant = 'base' THEN
    SELECT count(*) INTO got FROM @base@.append_events(i.events::jsonb);
  ELSIF variant = 'cur' THEN
    SELECT cardinality(ids) INTO got
      FROM @cur@.append_events(i.streams::text[], i.types::text[], i.data::jsonb, NULL);
  ELSE
    INSERT INTO @cur@.floor_events (stream, type, data)
    SELECT 'bench:micro', 'bench.micro', jsonb_build_object('n', g, 's', 'some text')
      FROM generate_series(1, size) g;
    got := size;
  END IF;
  IF got IS DISTINCT FROM size THEN
    RAISE 'micro: % appended % of % events', variant, got, size;
  END IF;
  RETURN format('%s|%s|%s', variant, size,
                round((extract(epoch FROM clock_timestamp() - t0) * 1000)::numeric, 3));
END $f$;
