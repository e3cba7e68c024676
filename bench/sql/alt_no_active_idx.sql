-- alt_no_active_idx.sql: job without job_active_idx (what the index costs
-- each claim; maintain() and recovery would then scan for active jobs).
DROP INDEX @schema@.job_active_idx;
