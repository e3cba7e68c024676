-- 038_retention_skip_locked: maintain's retention pass leaves the finished
-- jobs another transaction holds to the next pass instead of waiting.
--
-- maintain deleted up to `batch` expired rows of job_archive and waited
-- for any of them that another transaction held. A purge of the same
-- queue's finished jobs (purge, DELETE /api/queues/{queue}/jobs) deletes
-- the same rows in another order: the two deadlocked, and PostgreSQL
-- failed one of them, the purge ("deadlock detected") or maintain's whole
-- pass. The rows held are gone at the next pass when the other transaction
-- deleted them, and deleted then when it did not.
SELECT @schema@.patch_function('@schema@.maintain(double precision,integer)',
  E'WHERE a.keep_until < now() LIMIT batch);',
  E'WHERE a.keep_until < now() LIMIT batch\n                   FOR UPDATE SKIP LOCKED);');
