-- 003_queue_settings: a queue's settings are merged, not overwritten.
--
-- Two writers store a queue's row: config.lua at start (every setting) and
-- a handler file's `retry` table (the retry settings only). 002's
-- configure_queue replaced every column, so a handler's retry options erased
-- config.lua's dead_letter, expire_in and retention. store_queue_settings
-- takes its place: a key missing from `settings` keeps the stored value (a
-- new row: the column's default, NULL, i.e. unset), and a key set to JSON
-- null unsets it, so the '' row's value or the built-in default applies
-- (see queue_defaults).

DROP FUNCTION @schema@.configure_queue(text, jsonb);

-- Stores settings of queue q ('' for the defaults of every queue). Keys:
-- retry_limit, retry_delay, retry_backoff, retry_delay_max, expire_in,
-- retention, dead_letter; any other key is an error, so a misspelt one is
-- not silently ignored. The paused flag is left as it is.
CREATE FUNCTION @schema@.store_queue_settings(q text, settings jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  k text;
BEGIN
  IF jsonb_typeof(settings) IS DISTINCT FROM 'object' THEN
    RAISE EXCEPTION 'queue settings must be a JSON object, got %',
      coalesce(jsonb_typeof(settings), 'NULL') USING ERRCODE = '22023';
  END IF;
  FOR k IN SELECT jsonb_object_keys(settings) LOOP
    IF k NOT IN ('retry_limit', 'retry_delay', 'retry_backoff', 'retry_delay_max',
                 'expire_in', 'retention', 'dead_letter') THEN
      RAISE EXCEPTION 'unknown queue setting "%"', k USING ERRCODE = '22023',
        HINT = 'known settings: retry_limit, retry_delay, retry_backoff, '
               'retry_delay_max, expire_in, retention, dead_letter';
    END IF;
  END LOOP;
  -- jsonb_populate_record over the stored row is the merge: a key it
  -- lacks keeps the row's value, a null clears it.
  INSERT INTO @schema@.queue (name) VALUES (q) ON CONFLICT (name) DO NOTHING;
  UPDATE @schema@.queue x
     SET (retry_limit, retry_delay, retry_backoff, retry_delay_max, expire_in,
          retention, dead_letter, updated_at)
       = (SELECT s.retry_limit, s.retry_delay, s.retry_backoff, s.retry_delay_max,
                 s.expire_in, s.retention, s.dead_letter, now()
            FROM jsonb_populate_record(x, settings) s)
   WHERE x.name = q;
END $$;
