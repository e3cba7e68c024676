-- 032_batch_plans: the statements of the batch functions other than the
-- job completions (031) look a batch's rows up by key, not by a join whose
-- plan a guess of the batch's size picks.
--
-- A process calls these functions often enough that PostgreSQL plans their
-- statements once, generically, and a generic plan cannot know how many
-- elements an array holds: it assumes about ten. fire_schedules joined the
-- slots it was given (unnest of its arrays) to the schedules it locked and
-- to the slots it won, CTE to CTE; expecting ten rows a side, PostgreSQL
-- made the join of the slots won with the slots given a nested loop over
-- both: 1,000,000 comparisons for 1,000 slots, and the other two joins
-- were a change of statistics away from the same. Now the locked schedules
-- are a jsonb object keyed by id, built once, and each slot finds its
-- schedule, and each slot won its next slot, in it by key.
--
-- flow_steps_archived (the trigger that settles the flow steps a statement
-- archived: a batch of completions or failures of step jobs) joined the
-- runs that may have ended (unnest of its arrays) to their rows of
-- queue_flow_index, found by key: a nested loop over both, 500,000 rows
-- for 1,000 runs ended. Now it updates the rows found by key and reads
-- each run's outcome from the arrays at the run's position, which a jsonb
-- object keyed by run id gives.

-- The locked schedules are found by key (an index condition) rather than
-- by a semi-join with the slots.
SELECT @schema@.patch_function('@schema@.fire_schedules(bigint[],double precision[],double precision[])',
  '     WHERE s.id IN (SELECT w.id FROM want w) AND s.enabled',
  '     WHERE s.id = ANY(ARRAY(SELECT w.id FROM want w)) AND s.enabled');

-- known: the locked schedules by id (to_jsonb of their row). due: the
-- slots to fire, each with its job's id (drawn in slot order, after the
-- sort, as before) and its next slot.
SELECT @schema@.patch_function('@schema@.fire_schedules(bigint[],double precision[],double precision[])',
  E'  ), won AS (\n'
  '    INSERT INTO @schema@.schedule_fire AS f (schedule_id, slot, job_id)\n'
  '    SELECT w.id, w.slot, nextval(''@schema@.job_id_seq'')\n'
  '      FROM want w JOIN locked s ON s.id = w.id\n'
  '     WHERE s.last_slot IS NULL OR w.slot > s.last_slot\n'
  '     ORDER BY w.id, w.slot\n',
  E'  ), known AS MATERIALIZED (\n'
  '    SELECT jsonb_object_agg(l.id::text, to_jsonb(l)) AS m FROM locked l\n'
  '  ), due AS MATERIALIZED (\n'
  '    SELECT w.id, w.slot, w.next, nextval(''@schema@.job_id_seq'') AS job_id\n'
  '      FROM want w, known k\n'
  '     WHERE k.m ? w.id::text\n'
  '       AND (k.m -> w.id::text ->> ''last_slot'' IS NULL\n'
  '            OR w.slot > (k.m -> w.id::text ->> ''last_slot'')::timestamptz)\n'
  '     ORDER BY w.id, w.slot\n'
  '  ), won AS (\n'
  '    INSERT INTO @schema@.schedule_fire AS f (schedule_id, slot, job_id)\n'
  '    SELECT d.id, d.slot, d.job_id FROM due d\n'
  '     ORDER BY d.id, d.slot\n');

SELECT @schema@.patch_function('@schema@.fire_schedules(bigint[],double precision[],double precision[])',
  E'      FROM won JOIN locked s ON s.id = won.schedule_id\n',
  E'      FROM won, known k,\n'
  '           jsonb_to_record(k.m -> won.schedule_id::text)\n'
  '             AS s(name text, job text, data jsonb, options jsonb)\n');

-- A schedule moves to its latest slot won and the latest next slot of the
-- slots won, found by the job id drawn for each in an object built once
-- (an uncorrelated subquery: one evaluation, not one a row).
SELECT @schema@.patch_function('@schema@.fire_schedules(bigint[],double precision[],double precision[])',
  E'      FROM (SELECT w.id, max(w.slot) AS slot, max(w.next) AS next\n'
  '              FROM want w JOIN won ON won.schedule_id = w.id AND won.slot = w.slot\n'
  '             GROUP BY w.id) m\n',
  E'      FROM (SELECT won.schedule_id AS id, max(won.slot) AS slot,\n'
  '                   max(((SELECT jsonb_object_agg(d.job_id::text, d.next) FROM due d)\n'
  '                        ->> won.job_id::text)::timestamptz) AS next\n'
  '              FROM won\n'
  '             GROUP BY won.schedule_id) m\n');

-- flow_steps_archived: the position of each run in r_runs, by run id
SELECT @schema@.patch_function('@schema@.flow_steps_archived()',
  E'  r_errors jsonb[];\n',
  E'  r_errors jsonb[];\n'
  '  pos jsonb;         -- {run id: its 1-based position in r_runs}\n');

SELECT @schema@.patch_function('@schema@.flow_steps_archived()',
  E'  WITH r AS (\n'
  '    SELECT u.* FROM unnest(r_flows, r_runs, r_failed, r_errors) WITH ORDINALITY\n'
  '                    AS u(flow_name, run_id, failed_step, error, n)\n'
  '  ), ended AS (\n'
  '    UPDATE @schema@.queue_flow_index f\n'
  '       SET status = CASE WHEN r.failed_step IS NULL THEN ''completed'' ELSE ''failed'' END,\n'
  '           completed_at = now(), failed_step = r.failed_step, error = r.error\n'
  '      FROM r\n'
  '     WHERE f.run_id = ANY(r_runs) AND f.flow_name = r.flow_name AND f.run_id = r.run_id\n'
  '       AND f.status = ''running''\n'
  '       AND (r.failed_step IS NOT NULL OR NOT EXISTS (\n'
  '              SELECT 1 FROM @schema@.job j\n'
  '                JOIN @schema@.queue_flow_steps s ON s.job_name = j.name\n'
  '               WHERE j.run_id = r.run_id AND s.flow_name = r.flow_name))\n'
  '    RETURNING f.flow_name, f.run_id, f.status, r.failed_step, r.error, r.n\n'
  '  )\n',
  E'  pos := (SELECT jsonb_object_agg(u.run_id, u.n)\n'
  '            FROM unnest(r_runs) WITH ORDINALITY AS u(run_id, n));\n'
  '  WITH ended AS (\n'
  '    UPDATE @schema@.queue_flow_index f\n'
  '       SET status = CASE WHEN r_failed[(pos ->> f.run_id)::integer] IS NULL\n'
  '                         THEN ''completed'' ELSE ''failed'' END,\n'
  '           completed_at = now(), failed_step = r_failed[(pos ->> f.run_id)::integer],\n'
  '           error = r_errors[(pos ->> f.run_id)::integer]\n'
  '     WHERE f.run_id = ANY(r_runs) AND f.flow_name = r_flows[(pos ->> f.run_id)::integer]\n'
  '       AND f.status = ''running''\n'
  '       AND (r_failed[(pos ->> f.run_id)::integer] IS NOT NULL OR NOT EXISTS (\n'
  '              SELECT 1 FROM @schema@.job j\n'
  '                JOIN @schema@.queue_flow_steps s ON s.job_name = j.name\n'
  '               WHERE j.run_id = f.run_id AND s.flow_name = f.flow_name))\n'
  '    RETURNING f.flow_name, f.run_id, f.status, f.failed_step, f.error,\n'
  '              (pos ->> f.run_id)::integer AS n\n'
  '  )\n');
