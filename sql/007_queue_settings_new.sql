-- 007_queue_settings_new: config.lua's queue settings are stored by the
-- processes that run handlers (moonq run, moonq.start()); any other process
-- (the CLI, a script that only sends) stores them only for a queue that has
-- no row yet, so it never undoes what a running worker's handler files
-- stored (their `retry` options).
CREATE FUNCTION @schema@.store_new_queue_settings(q text, settings jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM @schema@.queue x WHERE x.name = q) THEN
    PERFORM @schema@.store_queue_settings(q, settings);
  END IF;
END $$;
