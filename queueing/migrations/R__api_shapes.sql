-- Repeatable (see R__queue_functions.sql): the JSON shapes the API and the WebSocket show, each
-- defined here only. Routes are the web layer's: has_image says a job has one, and the web turns
-- it into a signed image_url (web/image_links.py).

-- The job as the HTTP API shows it (all but eta_s, which needs the cost model). work_ahead (the
-- work of the jobs ahead of a queued one) and start_tag are for the ETA: queueing/positions.py
-- turns them into eta_s and takes them out. p_position and p_work_ahead: the place the caller already counted.
-- p_events: every event of the job, when the caller has just written them (an enqueue), so they
-- are not read back: a session's plan for that read, made while job_events was small, scanned
-- the whole log ever after.
-- plpgsql, so each session plans its statements once (a SQL function with a FROM is planned
-- again at every call).
CREATE OR REPLACE FUNCTION gq_job_json(
    j jobs, p_position integer DEFAULT NULL, p_work_ahead double precision DEFAULT NULL,
    p_events job_events[] DEFAULT NULL
) RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_position integer := coalesce(p_position, 0);
    v_work_ahead double precision := coalesce(p_work_ahead, 0);
    v_events job_events[] := p_events;
BEGIN
    IF j.status = 'queued' AND p_position IS NULL THEN
        SELECT place.queue_position, place.work_ahead INTO v_position, v_work_ahead
        FROM gq_queue_place(j.model, j.priority, j.start_tag, j.queue_seq) AS place;
    END IF;
    IF v_events IS NULL THEN
        SELECT array_agg(e) INTO v_events FROM job_events AS e WHERE e.job_id = j.id;
    END IF;
    RETURN jsonb_build_object(
        'job_id', j.id,
        'message_id', j.message_id,
        'conversation_id', j.conversation_id,
        'model', j.model,
        'status', j.status,
        'queue_position', v_position,
        'work_ahead', v_work_ahead,
        'start_tag', j.start_tag,
        'prompt', j.prompt,
        'params', j.params,
        'priority', j.priority,
        'attempts', j.attempts,
        'max_attempts', j.max_attempts,
        'timeout_s', j.timeout_s,
        'estimate_s', round(j.estimate_s::numeric, 3),
        'cancel_requested', j.cancel_requested,
        'progress', j.progress,
        'error', j.error,
        'has_image', j.status = 'complete',  -- a complete job always has one
        'host', j.host,
        'device', j.device,
        'batch', CASE WHEN j.batch_size >= 2
                      THEN jsonb_build_object('id', j.batch_id, 'size', j.batch_size) END,
        'run_after', j.run_after,
        'created_at', j.created_at,
        'queued_at', j.queued_at,
        'started_at', j.started_at,
        'finished_at', j.finished_at,
        'updated_at', j.updated_at,
        'transitions', (
            SELECT coalesce(jsonb_agg(jsonb_build_object('status', e.status, 'at', e.at)
                                      ORDER BY e.seq), '[]'::jsonb)
            FROM unnest(v_events) AS e));
END
$$;

-- A message as the HTTP API shows it. A queued job's position is read live here, never stored
-- for every job on every claim: extra_metadata keeps the position written at the job's last
-- transition (R3.1), and this overlays the current one: counted, unless the caller passes
-- p_position (the web process places the job from its queue order: queueing/conversations.py).
CREATE OR REPLACE FUNCTION gq_message_json(m messages, p_position integer DEFAULT NULL)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', m.id,
        'conversation_id', m.conversation_id,
        'role', m.role,
        'content', m.content,
        'extra_metadata', CASE WHEN j.status = 'queued'
            THEN m.extra_metadata || jsonb_build_object('queue_position', coalesce(p_position,
                gq_queue_position(j.model, j.priority, j.start_tag, j.queue_seq)))
            ELSE m.extra_metadata END,
        'created_at', m.created_at,
        'updated_at', m.updated_at)
    FROM (SELECT 1) AS one
    LEFT JOIN jobs AS j ON j.message_id = m.id
$$;

-- A transition event as the WebSocket sends it: the error when it has one, has_image on complete.
CREATE OR REPLACE FUNCTION gq_event_json(e job_events) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
               'type', e.status, 'seq', e.seq, 'job_id', e.job_id, 'message_id', e.message_id,
               'conversation_id', e.conversation_id, 'model', e.model, 'status', e.status,
               'queue_position', e.queue_position, 'at', e.at)
           || CASE WHEN e.detail ? 'error'
                   THEN jsonb_build_object('error', e.detail -> 'error') ELSE '{}' END
           || CASE WHEN e.status = 'complete'
                   THEN jsonb_build_object('has_image', true) ELSE '{}' END
$$;
