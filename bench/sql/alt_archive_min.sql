-- alt_archive_min.sql: job_archive with its primary key only (an upper
-- bound for what archive index changes can give; not a proposal as is).
DROP INDEX @schema@.job_archive_keep_idx;
DROP INDEX @schema@.job_archive_queue_idx;
