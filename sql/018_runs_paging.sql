-- 018_runs_paging: runs of a flow are paged by (started_at, run_id).
--
-- list_flows paged by started_at alone: runs that started in the same
-- microsecond (a batch of starts in one transaction shares now()) fell
-- between two pages, the next page starting strictly before the last
-- row's started_at. With before_run the page starts after the row
-- (before, before_run) in the order started_at DESC, run_id DESC; without
-- it, before keeps its meaning (runs that started before it).

DROP FUNCTION @schema@.list_flows(text, text, integer, timestamptz);
CREATE FUNCTION @schema@.list_flows(name text, status text DEFAULT NULL,
                                    n integer DEFAULT 100,
                                    before timestamptz DEFAULT NULL,
                                    before_run text DEFAULT NULL)
RETURNS SETOF @schema@.queue_flow_index
LANGUAGE sql STABLE AS $$
  SELECT * FROM @schema@.queue_flow_index f
   WHERE f.flow_name = name AND (list_flows.status IS NULL OR f.status = list_flows.status)
     AND (before IS NULL OR f.started_at < before
          OR (before_run IS NOT NULL AND f.started_at = before AND f.run_id < before_run))
   ORDER BY f.started_at DESC, f.run_id DESC
   LIMIT n
$$;
