-- 037_job_checks: `job` without its two CHECK constraints, whose cost was
-- paid by every statement that writes it.
--
-- PostgreSQL builds a table's CHECK expressions again for each statement
-- that inserts or updates rows (it reads them back from the catalog and
-- plans them): 49,000 of the 401,000 instructions of a single send
-- (bench/send_instructions.sh), the same for each claim, failure and
-- release, however few rows. Both bounds are kept where the rows are
-- written:
-- - job_state_check (state <= 'active'): only moonq's functions move jobs
--   between states, and they write created, retry or active into `job`
--   and the finished states into job_archive, which keeps its own check
--   (one batch per statement there). spec/queue_job_counts_spec.lua
--   checks that no path leaves a finished state in `job`.
-- - job_durations_check (at most 100 years): send, send_many and
--   send_enqueued check every duration option against duration_max()
--   (014), and the queue defaults a job takes come from `queue`, whose
--   own checks and trigger keep (spec/queue_limits_spec.lua).
ALTER TABLE @schema@.job DROP CONSTRAINT job_state_check,
  DROP CONSTRAINT job_durations_check;
