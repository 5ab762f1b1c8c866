-- The queue's state machine. Each transition is one function, called as one statement, so it is
-- one round trip and one transaction: the state change, its event row, the message metadata and
-- the NOTIFY commit together or not at all. Illegal transitions raise; fenced ones (a worker's
-- stale claim) return no row and write nothing.
--
-- Advisory lock keys (two-int form, so they read clearly in pg_locks):
--   (26449, 0)            gpuqueue migrate
--   (26449, 1)            the event lock: held from a transition's event insert to its commit
--   (26450, hashtext(d))  the GPU lock of device d, session level, held by that device's worker
--
-- Errors raised here carry SQLSTATEs the Python side maps: GQ404 not found, GQ409 illegal
-- transition, GQ429 queue limit reached.

-- Deep merge: objects merge key by key at every depth; any other pair (arrays, scalars, or an
-- object meeting a non-object) is replaced by the patch's value. A JSON null in the patch is a
-- value like any other: it is stored as null and deletes nothing. An SQL NULL patch changes nothing.
CREATE FUNCTION gq_jsonb_deep_merge(base jsonb, patch jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
-- plpgsql, not SQL: its plans are cached across calls, and most patches (every transition's)
-- are flat, so the shallow || is the whole answer and the loop below runs zero times.
DECLARE
    k text;
    v jsonb;
    merged jsonb;
BEGIN
    IF patch IS NULL THEN
        RETURN base;
    END IF;
    IF base IS NULL OR jsonb_typeof(base) <> 'object' OR jsonb_typeof(patch) <> 'object' THEN
        RETURN patch;
    END IF;
    merged := base || patch;  -- right for every key except where two objects meet
    FOR k, v IN
        SELECT e.key, e.value FROM jsonb_each(patch) AS e
        WHERE jsonb_typeof(e.value) = 'object' AND jsonb_typeof(base -> e.key) = 'object'
    LOOP
        merged := jsonb_set(merged, ARRAY[k], gq_jsonb_deep_merge(base -> k, v));
    END LOOP;
    RETURN merged;
END
$$;

-- 1-based rank among queued jobs in claim order. Two range counts over jobs_queued_idx: cheaper
-- than one OR'd predicate, and bounded by the number of jobs ahead.
CREATE FUNCTION gq_queue_position(p_priority integer, p_queue_seq bigint) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT 1
        + (SELECT count(*) FROM jobs WHERE status = 'queued' AND priority > p_priority)::integer
        + (SELECT count(*) FROM jobs
           WHERE status = 'queued' AND priority = p_priority AND queue_seq < p_queue_seq)::integer
$$;

-- Workers whose database session is alive right now: the database's own knowledge, no lease.
CREATE VIEW live_workers AS
    SELECT w.*
    FROM workers AS w
    JOIN pg_stat_activity AS a ON a.pid = w.session_pid AND a.backend_start = w.session_start
    WHERE w.stopped_at IS NULL;

-- The job as the HTTP API shows it (all but eta_s, which needs the ETA model).
CREATE FUNCTION gq_job_json(j jobs, p_position integer DEFAULT NULL) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'job_id', j.id,
        'message_id', j.message_id,
        'conversation_id', j.conversation_id,
        'status', j.status,
        'queue_position', CASE WHEN j.status = 'queued'
            THEN coalesce(p_position, gq_queue_position(j.priority, j.queue_seq)) ELSE 0 END,
        'prompt', j.prompt,
        'params', j.params,
        'priority', j.priority,
        'attempts', j.attempts,
        'max_attempts', j.max_attempts,
        'timeout_s', j.timeout_s,
        'cancel_requested', j.cancel_requested,
        'progress', j.progress,
        'error', j.error,
        'image_url', CASE WHEN j.status = 'complete' THEN '/api/jobs/' || j.id || '/image' END,
        'device', j.device,
        'run_after', j.run_after,
        'created_at', j.created_at,
        'queued_at', j.queued_at,
        'started_at', j.started_at,
        'finished_at', j.finished_at,
        'updated_at', j.updated_at,
        'transitions', (
            SELECT coalesce(jsonb_agg(jsonb_build_object('status', e.status, 'at', e.at)
                                      ORDER BY e.seq), '[]'::jsonb)
            FROM job_events AS e WHERE e.job_id = j.id))
$$;

-- Serialises event writers from here to commit, so seq order is commit order (a reader that
-- follows seq never skips a row committed late). Enqueue takes it first, which also makes the
-- position it returns unique under concurrent enqueues.
CREATE FUNCTION gq_event_lock() RETURNS void LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(26449, 1)
$$;

-- Writes one transition's side effects: the message metadata (deep merge, R3), the event row and
-- the NOTIFY (ids only). p_at defaults to the transaction's time (now()).
CREATE FUNCTION gq_record_transition(
    j jobs, p_position integer, p_detail jsonb DEFAULT '{}', p_at timestamptz DEFAULT NULL
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
BEGIN
    UPDATE messages
    SET extra_metadata = gq_jsonb_deep_merge(extra_metadata, jsonb_build_object(
        'job_id', j.id, 'status', j.status, 'queue_position', p_position, 'error', j.error))
    WHERE id = j.message_id;
    PERFORM gq_event_lock();
    INSERT INTO job_events (job_id, message_id, conversation_id, status, queue_position, at, detail)
    VALUES (j.id, j.message_id, j.conversation_id, j.status, p_position, coalesce(p_at, now()),
            p_detail)
    RETURNING seq INTO v_seq;
    PERFORM pg_notify('gq_event', j.id::text);
    RETURN v_seq;
END
$$;

CREATE SEQUENCE job_queue_seq;

-- pending -> queued, in one transaction. p_owner is the acting user (NULL for an admin, who may
-- enqueue into any conversation); the job belongs to the conversation's owner.
CREATE FUNCTION gq_enqueue(
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
    v_position := gq_queue_position(p_priority, v_queue_seq);
    INSERT INTO messages (id, conversation_id, role, content, extra_metadata)
    VALUES (v_message_id, p_conversation_id, 'assistant', '', jsonb_build_object(
        'job_id', v_job_id, 'status', 'queued', 'queue_position', v_position, 'error', NULL));
    INSERT INTO jobs (id, message_id, conversation_id, user_id, prompt, params, status, priority,
                      queue_seq, max_attempts, timeout_s, queued_at)
    VALUES (v_job_id, v_message_id, p_conversation_id, v_user_id, p_prompt, p_params, 'queued',
            p_priority, v_queue_seq, p_max_attempts, p_timeout_s, now())
    RETURNING * INTO v_job;
    INSERT INTO job_events (job_id, message_id, conversation_id, status, queue_position, at)
    VALUES (v_job_id, v_message_id, p_conversation_id, 'pending', 0, now()),
           (v_job_id, v_message_id, p_conversation_id, 'queued', v_position, now());
    PERFORM pg_notify('gq_event', v_job_id::text);
    RETURN gq_job_json(v_job, v_position);
END
$$;

-- Takes the device's GPU lock (waiting while another worker holds it, R2.4), then claims the next
-- runnable job: highest priority, then first come. With nothing to run the lock is released again,
-- so the GPU lock is held exactly while a job is processing (R2.1).
-- The job starts when the lock is granted, not when this transaction began (now()): the wait for
-- another worker's lock may have been long, and its job ended in between (R2.4).
CREATE FUNCTION gq_lock_and_claim(p_worker_id uuid, p_device text) RETURNS SETOF jobs
LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
    v_started timestamptz;
BEGIN
    PERFORM pg_advisory_lock(26450, hashtext(p_device));
    v_started := clock_timestamp();
    UPDATE jobs AS j
    SET status = 'processing', attempts = j.attempts + 1, claim_id = nextval('job_claim_seq'),
        worker_id = p_worker_id, device = p_device, started_at = v_started, progress = NULL
    FROM (SELECT id FROM jobs
          WHERE status = 'queued' AND run_after <= v_started
          ORDER BY priority DESC, queue_seq
          LIMIT 1 FOR UPDATE SKIP LOCKED) AS next
    WHERE j.id = next.id
    RETURNING j.* INTO v_job;
    IF NOT FOUND THEN
        PERFORM pg_advisory_unlock(26450, hashtext(p_device));
        RETURN;
    END IF;
    PERFORM gq_record_transition(v_job, 0, '{}', v_started);
    RETURN NEXT v_job;
END
$$;

CREATE FUNCTION gq_release_gpu(p_device text) RETURNS boolean LANGUAGE sql AS $$
    SELECT pg_advisory_unlock(26450, hashtext(p_device))
$$;

-- processing -> complete, with the image in the same transaction (a complete job always has one).
-- Fenced: a stale claim returns no row. p_release_device releases that GPU lock in the same trip.
CREATE FUNCTION gq_complete(p_job_id uuid, p_claim_id bigint, p_png bytea, p_release_device text)
RETURNS SETOF jobs LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
BEGIN
    UPDATE jobs SET status = 'complete', finished_at = now(), error = NULL
    WHERE id = p_job_id AND claim_id = p_claim_id AND status = 'processing'
    RETURNING * INTO v_job;
    IF FOUND THEN
        INSERT INTO job_images (job_id, png) VALUES (p_job_id, p_png);
        PERFORM gq_record_transition(v_job, 0);
        RETURN NEXT v_job;
    END IF;
    IF p_release_device IS NOT NULL THEN
        PERFORM pg_advisory_unlock(26450, hashtext(p_release_device));
    END IF;
END
$$;

-- processing -> queued (retry after an exponential backoff with equal jitter, so each delay is at
-- least the previous one) while attempts remain and p_retryable; else processing -> error.
CREATE FUNCTION gq_fail(
    p_job_id uuid, p_claim_id bigint, p_error text, p_retryable boolean,
    p_backoff_base_s double precision, p_backoff_cap_s double precision, p_release_device text
) RETURNS SETOF jobs LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
    v_delay double precision;
    v_position integer;
    v_error text := left(p_error, 4000);
BEGIN
    SELECT * INTO v_job FROM jobs
    WHERE id = p_job_id AND claim_id = p_claim_id AND status = 'processing' FOR UPDATE;
    IF FOUND THEN
        IF p_retryable AND v_job.attempts < v_job.max_attempts AND NOT v_job.cancel_requested THEN
            v_delay := least(p_backoff_cap_s, p_backoff_base_s * 2 ^ (v_job.attempts - 1));
            v_delay := v_delay / 2 + random() * v_delay / 2;
            UPDATE jobs
            SET status = 'queued', queued_at = now(), error = v_error, claim_id = NULL,
                worker_id = NULL, device = NULL, progress = NULL,
                run_after = now() + v_delay * interval '1 second'
            WHERE id = p_job_id RETURNING * INTO v_job;
            v_position := gq_queue_position(v_job.priority, v_job.queue_seq);
            PERFORM gq_record_transition(v_job, v_position, jsonb_build_object(
                'error', v_error, 'attempt', v_job.attempts, 'retry_in_s', round(v_delay::numeric, 3)));
        ELSE
            UPDATE jobs SET status = 'error', finished_at = now(), error = v_error
            WHERE id = p_job_id RETURNING * INTO v_job;
            PERFORM gq_record_transition(v_job, 0, jsonb_build_object(
                'error', v_error, 'attempt', v_job.attempts));
        END IF;
        RETURN NEXT v_job;
    END IF;
    IF p_release_device IS NOT NULL THEN
        PERFORM pg_advisory_unlock(26450, hashtext(p_release_device));
    END IF;
END
$$;

-- A worker ends a job it was told to cancel: processing -> canceled. Fenced like complete.
CREATE FUNCTION gq_finish_canceled(p_job_id uuid, p_claim_id bigint, p_release_device text)
RETURNS SETOF jobs LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
BEGIN
    UPDATE jobs SET status = 'canceled', finished_at = now()
    WHERE id = p_job_id AND claim_id = p_claim_id AND status = 'processing'
    RETURNING * INTO v_job;
    IF FOUND THEN
        PERFORM gq_record_transition(v_job, 0, '{"reason": "canceled by user"}');
        RETURN NEXT v_job;
    END IF;
    IF p_release_device IS NOT NULL THEN
        PERFORM pg_advisory_unlock(26450, hashtext(p_release_device));
    END IF;
END
$$;

-- A worker hands a job back (graceful stop): processing -> queued at its old place, the attempt
-- not counted; a job whose cancel was requested ends canceled instead.
CREATE FUNCTION gq_requeue(p_job_id uuid, p_claim_id bigint, p_release_device text)
RETURNS SETOF jobs LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
BEGIN
    UPDATE jobs
    SET status = CASE WHEN cancel_requested THEN 'canceled' ELSE 'queued' END,
        finished_at = CASE WHEN cancel_requested THEN now() END,
        queued_at = now(), attempts = greatest(attempts - 1, 0), run_after = now(),
        claim_id = CASE WHEN cancel_requested THEN claim_id END,
        worker_id = CASE WHEN cancel_requested THEN worker_id END,
        device = CASE WHEN cancel_requested THEN device END,
        progress = NULL
    WHERE id = p_job_id AND claim_id = p_claim_id AND status = 'processing'
    RETURNING * INTO v_job;
    IF FOUND THEN
        PERFORM gq_record_transition(v_job,
            CASE WHEN v_job.status = 'queued'
                 THEN gq_queue_position(v_job.priority, v_job.queue_seq) ELSE 0 END,
            '{"reason": "worker stopped"}');
        RETURN NEXT v_job;
    END IF;
    IF p_release_device IS NOT NULL THEN
        PERFORM pg_advisory_unlock(26450, hashtext(p_release_device));
    END IF;
END
$$;

-- Crash recovery: every processing job whose worker session is gone goes back to its place in the
-- queue (or to error once its attempts are spent, or to canceled if that was asked). The row lock
-- and the re-checked status make it exact: a job that finished meanwhile is never touched, and
-- SKIP LOCKED leaves a job that its worker is finishing right now to that worker.
CREATE FUNCTION gq_requeue_lost() RETURNS SETOF jobs LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
    v_lost text;
BEGIN
    FOR v_job IN
        SELECT j.* FROM jobs AS j
        WHERE j.status = 'processing'
          AND NOT EXISTS (SELECT 1 FROM live_workers AS w WHERE w.id = j.worker_id)
        ORDER BY j.id
        FOR UPDATE OF j SKIP LOCKED
    LOOP
        v_lost := format('the worker on %s was lost during attempt %s of %s',
                         coalesce(v_job.device, 'an unknown device'), v_job.attempts, v_job.max_attempts);
        UPDATE jobs
        SET status = CASE WHEN cancel_requested THEN 'canceled'
                          WHEN attempts >= max_attempts THEN 'error' ELSE 'queued' END,
            finished_at = CASE WHEN cancel_requested OR attempts >= max_attempts THEN now() END,
            error = CASE WHEN cancel_requested THEN error ELSE v_lost END,
            queued_at = now(), run_after = now(), progress = NULL,
            claim_id = CASE WHEN cancel_requested OR attempts >= max_attempts THEN claim_id END,
            worker_id = CASE WHEN cancel_requested OR attempts >= max_attempts THEN worker_id END,
            device = CASE WHEN cancel_requested OR attempts >= max_attempts THEN device END
        WHERE id = v_job.id
        RETURNING * INTO v_job;
        PERFORM gq_record_transition(v_job,
            CASE WHEN v_job.status = 'queued'
                 THEN gq_queue_position(v_job.priority, v_job.queue_seq) ELSE 0 END,
            jsonb_build_object('reason', 'worker lost', 'error', v_lost));
        RETURN NEXT v_job;
    END LOOP;
END
$$;

-- A user's cancel: queued -> canceled at once; processing -> cancel requested (its worker hears
-- the NOTIFY or sees the flag at the next step and ends it canceled); finished -> GQ409.
CREATE FUNCTION gq_cancel(p_job_id uuid, p_owner bigint) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
BEGIN
    SELECT * INTO v_job FROM jobs
    WHERE id = p_job_id AND (p_owner IS NULL OR user_id = p_owner) FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % not found', p_job_id USING ERRCODE = 'GQ404';
    END IF;
    IF v_job.status IN ('pending', 'queued') THEN
        UPDATE jobs SET status = 'canceled', finished_at = now()
        WHERE id = p_job_id RETURNING * INTO v_job;
        PERFORM gq_record_transition(v_job, 0, '{"reason": "canceled by user"}');
    ELSIF v_job.status = 'processing' THEN
        UPDATE jobs SET cancel_requested = true WHERE id = p_job_id RETURNING * INTO v_job;
        PERFORM pg_notify('gq_cancel', p_job_id::text);
    ELSE
        RAISE EXCEPTION 'job % is already %', p_job_id, v_job.status USING ERRCODE = 'GQ409';
    END IF;
    RETURN gq_job_json(v_job);
END
$$;

-- Progress of a running job (not a transition: no event row, no event lock). Returns whether a
-- cancel was requested, so the worker learns it at every step; NULL when the claim is stale.
CREATE FUNCTION gq_progress(p_job_id uuid, p_claim_id bigint, p_step integer, p_steps integer)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_cancel boolean;
BEGIN
    UPDATE jobs SET progress = jsonb_build_object('step', p_step, 'steps', p_steps)
    WHERE id = p_job_id AND claim_id = p_claim_id AND status = 'processing'
    RETURNING cancel_requested INTO v_cancel;
    IF FOUND THEN
        PERFORM pg_notify('gq_progress', p_job_id::text);
    END IF;
    RETURN v_cancel;
END
$$;

-- Operator views: read them from psql.
CREATE VIEW queue_positions AS
    SELECT row_number() OVER (ORDER BY priority DESC, queue_seq) AS queue_position,
           id AS job_id, user_id, conversation_id, priority, attempts, max_attempts,
           left(prompt, 60) AS prompt, queued_at, run_after, now() - queued_at AS waiting
    FROM jobs WHERE status = 'queued';

CREATE VIEW queue_overview AS
    SELECT s.status, count(j.id) AS jobs,
           now() - min(j.queued_at) FILTER (WHERE s.status = 'queued') AS oldest_queued_age
    FROM unnest(ARRAY['pending', 'queued', 'processing', 'complete', 'error', 'canceled'])
         WITH ORDINALITY AS s(status, ord)
    LEFT JOIN jobs AS j ON j.status = s.status
    GROUP BY s.status, s.ord ORDER BY s.ord;

CREATE VIEW gpu_locks AS
    SELECT w.device, w.id AS worker_id, w.hostname, w.pid, l.pid AS session_pid,
           j.id AS job_id, now() - j.started_at AS held_for
    FROM pg_locks AS l
    JOIN live_workers AS w ON w.session_pid = l.pid
    LEFT JOIN jobs AS j ON j.worker_id = w.id AND j.status = 'processing'
    WHERE l.locktype = 'advisory' AND l.classid = 26450 AND l.objsubid = 2 AND l.granted;

-- A message as the HTTP API shows it. A queued job's position is read live here, never stored
-- for every job on every claim: extra_metadata keeps the position written at the job's last
-- transition (R3.1), and this overlays the current one.
CREATE FUNCTION gq_message_json(m messages) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', m.id,
        'conversation_id', m.conversation_id,
        'role', m.role,
        'content', m.content,
        'extra_metadata', CASE WHEN j.status = 'queued'
            THEN m.extra_metadata || jsonb_build_object(
                'queue_position', gq_queue_position(j.priority, j.queue_seq))
            ELSE m.extra_metadata END,
        'created_at', m.created_at,
        'updated_at', m.updated_at)
    FROM (SELECT 1) AS one
    LEFT JOIN jobs AS j ON j.message_id = m.id
$$;
