-- The worker's loop at the ceiling (issue 14 item 3): jobs_finished_at_matches_status lists the
-- final states as literals. Its call of gq_final_job_statuses() ran again at the start of every
-- statement that writes jobs (the planner folds an IMMUTABLE call by running it, and a SQL
-- function's body is parsed and planned at each run): ~25 µs per UPDATE, two per job, the
-- largest single cost of the hand-off that bought nothing. The list is still
-- gq_final_job_statuses()'s (tests/integration/test_job_status.py holds them equal); changing it
-- is still a numbered migration that replaces both.
ALTER TABLE jobs
    DROP CONSTRAINT jobs_finished_at_matches_status,
    ADD CONSTRAINT jobs_finished_at_matches_status
        CHECK ((status IN ('complete', 'error', 'canceled')) = (finished_at IS NOT NULL));

-- The hand-off's functions (R__queue_functions.sql): gq_complete_and_claim writes the
-- completions, the claim and all their transitions in one plpgsql body. gq_record_transitions
-- takes the jobs alone (an event's time is its row's: finished_at for an end, started_at for a
-- claim; every caller passed an empty detail). Completions without a claim are
-- gq_complete_and_claim with none (queueing/sql/queries.sql calls it so), and one job's claim is
-- gq_lock_and_claim_batch(worker, 1). IF EXISTS: a database migrated from scratch has none of
-- them yet (the repeatable files run after the numbered ones).
DROP FUNCTION IF EXISTS gq_record_transitions(jobs[], jsonb, timestamptz);
DROP FUNCTION IF EXISTS gq_complete(uuid, bigint, bytea, text);
DROP FUNCTION IF EXISTS gq_complete_batch(uuid[], bigint[], bytea[], text);
DROP FUNCTION IF EXISTS gq_lock_and_claim(uuid);
