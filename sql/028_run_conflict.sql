-- 028_run_conflict: starting a run whose id exists already raises
-- unique_violation (23505), as a taken singleton_key does (014), instead of
-- invalid_parameter_value (22023): the input is well formed, it conflicts
-- with a run. The HTTP API answers it with 409 Conflict, not 400; SQL and
-- Lua callers get the same message as before.
SELECT @schema@.patch_function('@schema@.start_flow(text,jsonb,jsonb)',
  'exists already'', rid USING ERRCODE = ''22023''',
  'exists already'', rid USING ERRCODE = ''23505''');
