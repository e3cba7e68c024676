-- alt_archive.sql: cheaper job_archive indexes (applied after
-- alt_queue.sql by bench_queue --patch). Completing a job inserts its row
-- into job_archive, which maintains three btrees: the primary key,
-- (queue, state, id) and (keep_until). keep_until grows with time for a
-- given retention, so a BRIN index serves maintain()'s retention delete
-- for a fraction of the cost; the listing index stays.
DROP INDEX @schema@.job_archive_keep_idx;
CREATE INDEX job_archive_keep_idx ON @schema@.job_archive USING brin (keep_until);
