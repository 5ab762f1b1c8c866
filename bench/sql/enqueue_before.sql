-- The enqueue as it was before fair share (issue 12), kept here only as the "before" of the
-- enqueue figures: measured in the same run, on the same database, beside today's gq_enqueue
-- (as merge.sql keeps 002's merge).

-- name: enqueue_before_function
-- 011's gq_enqueue, first come first served: no model lookup, no user weight, no latest finish
-- tag, no estimate. The only changes are the columns the schema now requires: its jobs go to a
-- model of their own, 'fifo' (so each variant's position counts only its own queue, as long as
-- the other's), with tags 0 (their order is queue_seq, as before) and no work or estimate; and
-- its position is 011's two range counts (gq_queue_position(priority, queue_seq)) written over
-- today's index, which leads with the model.
CREATE OR REPLACE FUNCTION gq_bench_enqueue_011(
    p_conversation_id uuid, p_owner bigint, p_prompt text, p_params jsonb, p_priority integer,
    p_max_attempts integer, p_timeout_s integer, p_max_queued integer
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_user_id bigint;
    v_queued integer;
    v_job jobs;
    v_message_id uuid := gen_random_uuid();
    v_job_id uuid := gen_random_uuid();
    v_queue_seq bigint;
    v_position integer;
BEGIN
    SELECT user_id INTO v_user_id FROM conversations
    WHERE id = p_conversation_id AND (p_owner IS NULL OR user_id = p_owner);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'conversation % not found', p_conversation_id USING ERRCODE = 'GQ404';
    END IF;
    PERFORM gq_event_lock();
    SELECT count(*) INTO v_queued FROM jobs WHERE user_id = v_user_id AND status = 'queued';
    IF v_queued >= p_max_queued THEN
        RAISE EXCEPTION 'you already have % jobs queued and one user may have at most %; wait for some to start',
            v_queued, p_max_queued
            USING ERRCODE = 'GQ429';
    END IF;
    v_queue_seq := nextval('job_queue_seq');
    v_position := 1
        + (SELECT count(*) FROM jobs
           WHERE status = 'queued' AND model = 'fifo' AND priority > p_priority)::integer
        + (SELECT count(*) FROM jobs
           WHERE status = 'queued' AND model = 'fifo' AND priority = p_priority
             AND (start_tag, queue_seq) < (0, v_queue_seq))::integer;
    INSERT INTO messages (id, conversation_id, role, content, extra_metadata)
    VALUES (v_message_id, p_conversation_id, 'assistant', '', jsonb_build_object(
        'job_id', v_job_id, 'status', 'queued', 'queue_position', v_position, 'error', NULL));
    INSERT INTO jobs (id, message_id, conversation_id, user_id, model, prompt, params, work,
                      status, priority, queue_seq, start_tag, finish_tag, estimate_s,
                      max_attempts, timeout_s)
    VALUES (v_job_id, v_message_id, p_conversation_id, v_user_id, 'fifo', p_prompt, p_params, 0,
            'pending', p_priority, v_queue_seq, 0, 0, 0, p_max_attempts, p_timeout_s)
    RETURNING * INTO v_job;
    INSERT INTO job_events (job_id, message_id, conversation_id, model, status, queue_position, at)
    VALUES (v_job_id, v_message_id, p_conversation_id, 'fifo', v_job.status, 0, now());
    UPDATE jobs SET status = 'queued', queued_at = now() WHERE id = v_job_id
    RETURNING * INTO v_job;
    INSERT INTO job_events (job_id, message_id, conversation_id, model, status, queue_position, at)
    VALUES (v_job_id, v_message_id, p_conversation_id, 'fifo', v_job.status, v_position, now());
    PERFORM pg_notify('gq_event', v_job_id::text);
    RETURN gq_job_json(v_job, v_position);
END
$$

-- name: enqueue_before
-- As 011's job_enqueue query called it.
SELECT gq_bench_enqueue_011(%(conversation_id)s, %(owner)s, %(prompt)s, %(params)s, %(priority)s,
                            %(max_attempts)s, %(timeout_s)s, %(max_queued)s) AS job
