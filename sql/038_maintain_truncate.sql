-- 038_maintain_truncate: maintain's retention pass leaves the finished jobs
-- another transaction holds to the next pass instead of waiting; a TRUNCATE
-- of job or job_archive is refused where it would leave counts behind.
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

-- A TRUNCATE of job or job_archive forgets the changes of job_counts that
-- its table's states have, as 036's job_counted deletes them. In a
-- REPEATABLE READ or SERIALIZABLE transaction that DELETE sees the rows of
-- the transaction's snapshot only, taken before the TRUNCATE waited for the
-- jobs being sent, claimed or archived meanwhile: their changes stayed, and
-- counts(q) counted jobs that were gone for good. Under READ COMMITTED the
-- DELETE sees every change committed before the TRUNCATE's lock, which
-- holds off the rest; under the others the TRUNCATE is refused.
SELECT @schema@.patch_function('@schema@.job_counted()',
  $old$  ELSIF TG_TABLE_NAME = 'job' THEN
$old$,
  $new$  ELSIF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION 'TRUNCATE of % needs READ COMMITTED isolation, not %',
      TG_TABLE_NAME, current_setting('transaction_isolation')
      USING ERRCODE = '0A000',
      HINT = 'its snapshot would miss the jobs written meanwhile, and counts() would keep them';
  ELSIF TG_TABLE_NAME = 'job' THEN
$new$);
