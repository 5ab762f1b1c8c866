-- One status vocabulary (issue 11, item 2): the job_status domain, whose states are listed once,
-- in gq_job_statuses(); CHECKs on jobs and job_events named for the rule they hold, so a violation
-- reads jobs_finished_at_matches_status, not jobs_check. `pending` becomes a real row state in
-- gq_enqueue (R__queue_functions.sql): a new job is inserted pending and moved to queued in the
-- same transaction (R5.1, R5.2), each event written from the row state it records.

-- The states, in lifecycle order (the order queue_overview lists them in). The one SQL list:
-- the domain's constraint and the views read it. Changing it is a new numbered migration that
-- replaces this function and drops and re-adds job_status_known, so every stored row is checked
-- against the new list (a function replaced alone would not re-check them).
CREATE FUNCTION gq_job_statuses() RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY['pending', 'queued', 'processing', 'complete', 'error', 'canceled']
$$;

-- The final states, those a job never leaves (Python: queueing.states.FINAL), each one of
-- gq_job_statuses(). jobs_finished_at_matches_status reads it, so changing it is a numbered
-- migration too, re-adding that constraint.
CREATE FUNCTION gq_final_job_statuses() RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY['complete', 'error', 'canceled']
$$;

-- The domain is created bare and its constraint added once the columns use it: switching a text
-- column to a domain without constraints only relabels it (no table rewrite; the plain indexes are
-- kept, the partial ones WHERE status = ... are rebuilt, as PostgreSQL always does for an index
-- whose predicate names an altered column), and ALTER DOMAIN then checks the rows in one scan per
-- table.
CREATE DOMAIN job_status AS text;

-- Views that read jobs.status block the type change; R__views.sql, applied after the numbered
-- files, creates them again (queue_overview now reads the states from gq_job_statuses()).
DROP VIEW queue_positions;
DROP VIEW queue_overview;
DROP VIEW gpu_locks;

ALTER TABLE jobs RENAME CONSTRAINT jobs_check1 TO jobs_processing_has_claim;
ALTER TABLE jobs RENAME CONSTRAINT jobs_check2 TO jobs_error_has_message;
ALTER TABLE jobs RENAME CONSTRAINT jobs_check3 TO jobs_queued_at_set;
ALTER TABLE jobs RENAME CONSTRAINT jobs_check4 TO jobs_attempts_within_max;
ALTER TABLE jobs RENAME CONSTRAINT jobs_attempts_check TO jobs_attempts_not_negative;
ALTER TABLE jobs RENAME CONSTRAINT jobs_max_attempts_check TO jobs_max_attempts_in_range;
ALTER TABLE jobs RENAME CONSTRAINT jobs_timeout_s_check TO jobs_timeout_s_in_range;
ALTER TABLE jobs RENAME CONSTRAINT jobs_prompt_check TO jobs_prompt_length;
ALTER TABLE jobs RENAME CONSTRAINT jobs_error_check TO jobs_error_length;
ALTER TABLE jobs RENAME CONSTRAINT jobs_params_check TO jobs_params_is_object;
ALTER TABLE job_events RENAME CONSTRAINT job_events_queue_position_check
    TO job_events_queue_position_not_negative;

ALTER TABLE jobs
    DROP CONSTRAINT jobs_status_check,
    DROP CONSTRAINT jobs_check,
    ALTER COLUMN status TYPE job_status,
    ADD CONSTRAINT jobs_finished_at_matches_status
        CHECK ((status = ANY (gq_final_job_statuses())) = (finished_at IS NOT NULL));
ALTER TABLE job_events DROP CONSTRAINT job_events_status_check, ALTER COLUMN status TYPE job_status;
ALTER DOMAIN job_status ADD CONSTRAINT job_status_known CHECK (VALUE = ANY (gq_job_statuses()));
