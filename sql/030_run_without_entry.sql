-- 030_run_without_entry: a flow run whose entry job is not created is not
-- started.
--
-- start_flow (022) stored the run and its flow.started event, then sent
-- the entry job, ignoring what send returned. With a singleton_key that a
-- waiting or running job holds, send creates nothing and returns NULL: the
-- run stayed "running" for good, with no step and no job. It now raises
-- unique_violation (23505), as a taken run id does (028), so the caller's
-- statement rolls back the run and its event; the HTTP API answers 409.
SELECT @schema@.patch_function('@schema@.start_flow(text,jsonb,jsonb)',
  E'  PERFORM @schema@.send(entry_job, coalesce(data, \'{}\'),\n'
  || E'                        jsonb_build_object(\'queue\', entry_queue) || coalesce(options, \'{}\')\n'
  || E'                          || jsonb_build_object(\'run_id\', rid));\n',
  E'  IF @schema@.send(entry_job, coalesce(data, \'{}\'),\n'
  || E'                        jsonb_build_object(\'queue\', entry_queue) || coalesce(options, \'{}\')\n'
  || E'                          || jsonb_build_object(\'run_id\', rid)) IS NULL THEN\n'
  || E'    RAISE EXCEPTION \'the singleton_key is taken: run "%" was not started (no entry job was created)\', rid\n'
  || E'      USING ERRCODE = \'23505\';\n'
  || E'  END IF;\n');
