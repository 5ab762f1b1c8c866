-- An enqueue answers with the events it has just written instead of reading them back (issue
-- 14): gq_job_json takes them (p_events) and gq_sequence_pending returns them; the new
-- signatures are created by R__api_shapes.sql and R__queue_functions.sql.
DROP FUNCTION IF EXISTS gq_job_json(jobs, integer, double precision);
DROP FUNCTION IF EXISTS gq_sequence_pending(uuid[]);
