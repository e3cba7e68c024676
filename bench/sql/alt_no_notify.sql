-- alt_no_notify.sql: drops the NOTIFY trigger on job (an upper bound for
-- what a cheaper wake-up could give; not a proposal as is: workers would
-- only poll).
DROP TRIGGER job_notify ON @schema@.job;
