-- Repeatable (applied by `gpuqueue migrate` after the numbered files whenever this file changed
-- or a numbered one was applied): the queue's state machine and its helpers, each defined here
-- only, with CREATE OR REPLACE. Each transition is one function, called as one statement, so it
-- is one round trip and one transaction: the state change, its event row, the message metadata
-- and the NOTIFY commit together or not at all. Illegal transitions raise; fenced ones (a
-- worker's stale claim) return no row and write nothing. A signature change (a parameter's name
-- or type, the result type) is a DROP in a new numbered migration, then the new one here.
--
-- Advisory lock keys (two-int form, so they read clearly in pg_locks):
--   (26449, 0)            gpuqueue migrate
--   (26449, 1)            the event lock: held from a transition's event insert to its commit,
--                         taken as late as the transition can (gq_event_lock)
--   (26450, hashtext(gq_gpu_lock_name(host, device)))   a GPU's lock, session level, held by
--                         its worker while a job runs; p_release_device names it
--   (26451, hashtext(user_id::text))   a user's enqueues and moves to the front, one at a time
--                         (xact; gq_user_queue_lock)
--   (26452, pg_backend_pid())   the start-up check for a transaction pooler, session level,
--                         taken and released at once (queueing/session_check.py)
--
-- Errors raised here carry SQLSTATEs the Python side maps: GQ404 not found, GQ409 illegal
-- transition, GQ413 metadata too large, GQ429 queue limit reached.

-- Every UPDATE stamps updated_at, whoever writes it (R7.4).
CREATE OR REPLACE FUNCTION gq_touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END
$$;

-- A new job's or message's id: UUIDv7 (RFC 9562), 48 bits of Unix milliseconds, then the
-- version, the variant and 74 random bits (gen_random_uuid's, whose version nibble 4 becomes 7).
-- Keys that rise with time land at the right edge of their indexes (migration 017 says why).
CREATE OR REPLACE FUNCTION gq_new_id() RETURNS uuid LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(set_bit(set_bit(overlay(
        uuid_send(gen_random_uuid())
        PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint)
                          FROM 3)
        FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
$$;

-- Deep merge in one pass per level: objects merge key by key at every depth; any other pair
-- (arrays, scalars, or an object meeting a non-object) is replaced by the patch's value. A JSON
-- null in the patch is a value like any other: it is stored as null and deletes nothing. An SQL
-- NULL patch changes nothing. Each level is one aggregate (jsonb_set on the whole object once
-- per nested key was quadratic: 2,000 nested keys took ~590 ms). A call costs
-- far more than an expression, so a patch value whose objects hold no object (no object two
-- levels down; lax also counts objects in arrays, which only sends more values the long way)
-- is merged inline, two levels at once, and only deeper ones recurse.
CREATE OR REPLACE FUNCTION gq_jsonb_deep_merge(base jsonb, patch jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF patch IS NULL THEN
        RETURN base;
    END IF;
    IF base IS NULL OR jsonb_typeof(base) <> 'object' OR jsonb_typeof(patch) <> 'object' THEN
        RETURN patch;
    END IF;
    IF NOT jsonb_path_exists(patch, 'strict $.* ? (@.type() == "object")') THEN
        RETURN base || patch;  -- a flat patch (every transition's): nothing to recurse into
    END IF;
    -- A stored object arrives TOASTed: detoast it once, not at every `base -> key` below.
    base := base || '{}';
    RETURN base || (patch || coalesce(
        (SELECT jsonb_object_agg(p.key, CASE
                    WHEN NOT jsonb_path_exists(p.value, 'strict $.* ? (@.type() == "object")')
                        THEN b.value || p.value
                    WHEN NOT jsonb_path_exists(p.value, 'lax $.*.* ? (@.type() == "object")')
                        THEN b.value || (p.value || coalesce(
                            (SELECT jsonb_object_agg(q.key, (b.value -> q.key) || q.value)
                             FROM jsonb_each(p.value) AS q
                             WHERE jsonb_typeof(q.value) = 'object'
                               AND jsonb_typeof(b.value -> q.key) = 'object'),
                            '{}'))
                    ELSE gq_jsonb_deep_merge(b.value, p.value) END)
         FROM jsonb_each(patch) AS p
         CROSS JOIN LATERAL (SELECT base -> p.key AS value) AS b
         WHERE jsonb_typeof(p.value) = 'object' AND jsonb_typeof(b.value) = 'object'),
        '{}'));
END
$$;

-- The size of a JSON value as compact JSON text (no spaces), UTF-8 bytes: the measure of the
-- metadata limit (contract: Input limits). PostgreSQL writes jsonb with a space after every ':'
-- and ',' between items, an upper bound that is returned as is while it is within p_limit.
-- Else the exact size: json_strip_nulls re-writes JSON text compactly (escaping strings as jsonb
-- does), once every member null has become a number of the same length, so it strips nothing
-- (`": null` only occurs at a member, or inside a string, where the swap keeps the length too).
CREATE OR REPLACE FUNCTION gq_jsonb_compact_size(doc jsonb, p_limit integer) RETURNS integer
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_spaced text := doc::text;
BEGIN
    IF octet_length(v_spaced) <= p_limit THEN
        RETURN octet_length(v_spaced);
    END IF;
    RETURN octet_length(json_strip_nulls(replace(v_spaced, '": null', '": 1e99')::json)::text);
END
$$;

-- A job's size for the cost model: megapixel-steps (steps x width x height / 1e6), stored in
-- jobs.work at enqueue.
CREATE OR REPLACE FUNCTION gq_job_work(p_params jsonb) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce((p_params ->> 'steps')::double precision, 0)
         * coalesce((p_params ->> 'width')::double precision, 0)
         * coalesce((p_params ->> 'height')::double precision, 0) / 1e6
$$;

-- A queued job's place among the queued jobs of its model, in claim order: its 1-based position
-- and the work (megapixel-steps) of the jobs ahead, which the ETA reads. Two range passes over
-- jobs_queued_idx, index-only (work is included): cheaper than one OR'd predicate, and bounded
-- by the number of jobs ahead. A one-row table function (not OUT parameters), so PostgreSQL
-- inlines it into its caller's query instead of planning it again at every call.
CREATE OR REPLACE FUNCTION gq_queue_place(
    p_model text, p_priority integer, p_start_tag double precision, p_queue_seq bigint
) RETURNS TABLE (queue_position integer, work_ahead double precision)
LANGUAGE sql STABLE ROWS 1 AS $$
    SELECT 1 + higher.n + level.n, higher.work + level.work
    FROM (SELECT count(*)::integer AS n, coalesce(sum(work), 0) AS work FROM jobs
          WHERE status = 'queued' AND model = p_model AND priority > p_priority) AS higher,
         (SELECT count(*)::integer AS n, coalesce(sum(work), 0) AS work FROM jobs
          WHERE status = 'queued' AND model = p_model AND priority = p_priority
            AND (start_tag, queue_seq) < (p_start_tag, p_queue_seq)) AS level
$$;

CREATE OR REPLACE FUNCTION gq_queue_position(
    p_model text, p_priority integer, p_start_tag double precision, p_queue_seq bigint
) RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT queue_position FROM gq_queue_place(p_model, p_priority, p_start_tag, p_queue_seq)
$$;

-- The final states, those a job never leaves (Python: queueing.states.FINAL), each one of
-- gq_job_statuses(). jobs_finished_at_matches_status names the same list as literals (013: a
-- call there ran at every statement writing jobs); tests/integration/test_job_status.py holds
-- the three equal, so a change is a numbered migration re-adding that constraint too.
CREATE OR REPLACE FUNCTION gq_final_job_statuses() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY['complete', 'error', 'canceled']
$$;

-- The one definition of a GPU lock's name; its key is (26450, hashtext(name)).
CREATE OR REPLACE FUNCTION gq_gpu_lock_name(p_host text, p_device text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_host || '/' || p_device
$$;

-- A user's queue changes (enqueues: the per-user limit and fair-share tags; moves to the front)
-- one at a time, until commit; other users' never wait for it.
CREATE OR REPLACE FUNCTION gq_user_queue_lock(p_user_id bigint) RETURNS void LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(26451, hashtext(p_user_id::text))
$$;

-- Serialises event writers from here to commit, so seq order is commit order (a reader that
-- follows seq never skips a row committed late). Enqueue takes it first, which also makes the
-- position it returns unique under concurrent enqueues.
CREATE OR REPLACE FUNCTION gq_event_lock() RETURNS void LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(26449, 1)
$$;

-- Writes one transition's side effects: the message metadata (deep merge, R3), the event row and
-- the NOTIFY (ids only). p_at defaults to the transaction's time (now()).
-- A queued job's position is counted here, after the event lock is granted (p_position is then
-- ignored): every transition that committed before is seen, so two concurrent re-queues never
-- both record the place one of them took. The message row is locked first, as on every path
-- (row, then event lock), so the event lock is never held waiting for a user's merge. Other
-- statuses record p_position (0) and take the lock only for the event row.
CREATE OR REPLACE FUNCTION gq_record_transition(
    j jobs, p_position integer, p_detail jsonb DEFAULT '{}', p_at timestamptz DEFAULT NULL
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
    v_position integer := p_position;
BEGIN
    IF j.status = 'queued' THEN
        PERFORM 1 FROM messages WHERE id = j.message_id FOR UPDATE;
        PERFORM gq_event_lock();
        v_position := gq_queue_position(j.model, j.priority, j.start_tag, j.queue_seq);
    END IF;
    UPDATE messages
    SET extra_metadata = gq_jsonb_deep_merge(extra_metadata, jsonb_build_object(
        'job_id', j.id, 'status', j.status, 'queue_position', v_position, 'error', j.error))
    WHERE id = j.message_id;
    PERFORM gq_event_lock();
    INSERT INTO job_events (job_id, message_id, conversation_id, model, status, queue_position, at,
                            detail)
    VALUES (j.id, j.message_id, j.conversation_id, j.model, j.status, v_position,
            coalesce(p_at, now()), p_detail)
    RETURNING seq INTO v_seq;
    PERFORM pg_notify('gq_event', j.id::text);
    IF j.status = 'queued' THEN
        PERFORM pg_notify('gq_queued', j.model);
    END IF;
    RETURN v_seq;
END
$$;

-- gq_record_transition for a set of jobs that each just left the queue's order or entered a
-- final state (a claim's processing rows, a completion's complete ones: queue_position 0):
-- every job's message metadata, its own event row and its own NOTIFY, the events in one INSERT
-- for the whole set. The same order as there: the message rows first, then the event lock, then
-- the events, in array order (their seqs rise along it). Each message is one indexed UPDATE, in
-- message id order (the order gq_record_place locks them in, so the two never deadlock): for a
-- hand-off's few rows that is cheaper than a join, which the planner would have to plan for 10
-- rows when there is one. The patch is flat, so the deep merge is `||` (gq_jsonb_deep_merge).
-- An event's time is its row's: finished_at for an end, started_at for a claim.
CREATE OR REPLACE FUNCTION gq_record_transitions(p_jobs jobs[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_message_id uuid;
    v_patch jsonb;
BEGIN
    FOR v_message_id, v_patch IN
        SELECT j.message_id, jsonb_build_object('job_id', j.id, 'status', j.status,
                                                'queue_position', 0, 'error', j.error)
        FROM unnest(p_jobs) AS j ORDER BY j.message_id
    LOOP
        UPDATE messages SET extra_metadata = extra_metadata || v_patch WHERE id = v_message_id;
    END LOOP;
    PERFORM gq_event_lock();
    INSERT INTO job_events (job_id, message_id, conversation_id, model, status, queue_position, at)
    SELECT j.id, j.message_id, j.conversation_id, j.model, j.status, 0,
           coalesce(j.finished_at, j.started_at)
    FROM unnest(p_jobs) WITH ORDINALITY AS j
    ORDER BY j.ordinality;
    PERFORM pg_notify('gq_event', j.id::text) FROM unnest(p_jobs) AS j;
END
$$;

-- A new job. p_owner is the acting user (NULL for an admin, who may enqueue into any
-- conversation); the job belongs to the conversation's owner. p_model must be one a worker has
-- registered, or p_default_model (the deployment's default, always accepted): else GQ422 naming
-- the known ones. The job's estimate is the cost model's p_cost_intercept_s + p_cost_slope_s *
-- work (queueing/cost_model.py fits them), and its fair-share tags are cut from it (see
-- 007_models_and_fair_share.sql). The per-user limit and the user's latest finish tag are read
-- under the user's lock, so only one user's own enqueues take turns; the job's queue_seq is
-- drawn there too, so one user's jobs keep their submission order.
--
-- Then, by p_mode (issue 14):
-- * 'count': pending -> queued in this transaction. The event lock comes last, just before the
--   two event rows, and the position is counted under it (exact, unique, O(jobs ahead)). The
--   path of a caller without a web process (queueing.jobs.enqueue without a placer).
-- * 'place': the same without the count: the queued event's position is NULL, and the web
--   process that follows the log places the job from its queue order and writes it back
--   (gq_record_place). The web's path for a batch of one (queueing/sequencer.py): one
--   transaction with no subtransaction, no second pass over the job and its message.
-- * 'batch': the job is inserted queued (message and job row) with no event, no lock beyond the
--   user's and no NOTIFY: gq_enqueue_batch writes the batch's events together, under the event
--   lock, in the same transaction. The web's path for a batch of two or more.
-- * 'sequence': as 'batch', but the job is left `pending`, for gq_sequence_pending to queue (a
--   web process of the release before committed such jobs on their own; the tests make them so).
-- The job and its message are written once, in the state they commit in (a queued job's
-- pending event is still written, before its queued one). The result carries the queued
-- event's seq (NULL in 'batch' and 'sequence').
CREATE OR REPLACE FUNCTION gq_enqueue(
    p_conversation_id uuid, p_owner bigint, p_model text, p_default_model text, p_prompt text,
    p_params jsonb, p_priority integer, p_max_attempts integer, p_timeout_s integer,
    p_max_queued integer, p_cost_intercept_s double precision, p_cost_slope_s double precision,
    p_mode text
) RETURNS jsonb LANGUAGE plpgsql
-- Every statement here is a keyed lookup or an insert, planned once a session and never as a
-- scan of the jobs. Left to choose, PostgreSQL kept custom plans, planning the user's lookups
-- again at every call, once one user held most of the queue (the generic plan's estimate, an
-- average over users, looked dearer than the others' custom ones): 0.78x the rate of an empty
-- queue at 100,000 queued (bench scaling). A generic plan alone would then count the user's
-- queued jobs with a scan of the table, as if every user were the crowd.
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off AS $$
DECLARE
    v_user_id bigint;
    v_weight double precision;
    v_virtual_time double precision;
    v_last_finish double precision;
    v_work double precision;
    v_estimate double precision;
    v_start double precision;
    v_queued integer;
    v_job jobs;
    v_message_id uuid := gq_new_id();
    v_job_id uuid := gq_new_id();
    v_queue_seq bigint;
    v_position integer;
    v_work_ahead double precision;
    v_seq bigint;
    v_events job_events[];
BEGIN
    IF p_mode NOT IN ('count', 'place', 'batch', 'sequence') THEN
        RAISE EXCEPTION 'unknown enqueue mode %', quote_literal(p_mode) USING ERRCODE = '22023';
    END IF;
    SELECT c.user_id, u.weight INTO v_user_id, v_weight
    FROM conversations AS c JOIN users AS u ON u.id = c.user_id
    WHERE c.id = p_conversation_id AND (p_owner IS NULL OR c.user_id = p_owner);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'conversation % not found', p_conversation_id USING ERRCODE = 'GQ404';
    END IF;
    SELECT virtual_time INTO v_virtual_time FROM models WHERE name = p_model;
    IF NOT FOUND THEN
        IF p_model IS DISTINCT FROM p_default_model THEN
            RAISE EXCEPTION 'unknown model %; the known models are: %', quote_literal(p_model),
                (SELECT string_agg(name, ', ' ORDER BY name)
                 FROM (SELECT name FROM models UNION SELECT p_default_model) AS known)
                USING ERRCODE = 'GQ422';
        END IF;
        INSERT INTO models (name) VALUES (p_model) ON CONFLICT (name) DO NOTHING;
        v_virtual_time := 0;
    END IF;
    PERFORM gq_user_queue_lock(v_user_id);
    SELECT (SELECT count(*) FROM jobs WHERE user_id = v_user_id AND status = 'queued')
         + (SELECT count(*) FROM jobs WHERE user_id = v_user_id AND status = 'pending')
    INTO v_queued;
    IF v_queued >= p_max_queued THEN
        RAISE EXCEPTION 'you already have % jobs queued and one user may have at most %; wait for some to start',
            v_queued, p_max_queued
            USING ERRCODE = 'GQ429';
    END IF;
    SELECT finish_tag INTO v_last_finish FROM jobs
    WHERE user_id = v_user_id AND model = p_model AND status IN ('pending', 'queued', 'processing')
    ORDER BY finish_tag DESC LIMIT 1;
    v_work := gq_job_work(p_params);
    v_estimate := greatest(p_cost_intercept_s + p_cost_slope_s * v_work, 0.001);
    v_start := greatest(v_virtual_time, coalesce(v_last_finish, 0));
    v_queue_seq := nextval('job_queue_seq');
    IF p_mode = 'count' THEN
        PERFORM gq_event_lock();
        SELECT place.queue_position, place.work_ahead INTO v_position, v_work_ahead
        FROM gq_queue_place(p_model, p_priority, v_start, v_queue_seq) AS place;
    END IF;
    INSERT INTO messages (id, conversation_id, role, content, extra_metadata)
    VALUES (v_message_id, p_conversation_id, 'assistant', '', jsonb_build_object(
        'job_id', v_job_id, 'status', CASE p_mode WHEN 'sequence' THEN 'pending' ELSE 'queued' END,
        'queue_position', v_position, 'error', NULL));
    INSERT INTO jobs (id, message_id, conversation_id, user_id, model, prompt, params, work,
                      status, priority, queue_seq, start_tag, finish_tag, estimate_s,
                      max_attempts, timeout_s, queued_at)
    VALUES (v_job_id, v_message_id, p_conversation_id, v_user_id, p_model, p_prompt, p_params,
            v_work, CASE p_mode WHEN 'sequence' THEN 'pending' ELSE 'queued' END, p_priority,
            v_queue_seq, v_start, v_start + v_estimate / v_weight, v_estimate, p_max_attempts,
            p_timeout_s, CASE WHEN p_mode <> 'sequence' THEN now() END)
    RETURNING * INTO v_job;
    IF p_mode IN ('batch', 'sequence') THEN  -- gq_enqueue_batch answers with the job's JSON
        RETURN jsonb_build_object('job_id', v_job_id, 'status', v_job.status, 'event_seq', NULL);
    ELSE
        -- The stretch NOTIFY serialises anyway: both events (pending first) in one statement.
        PERFORM gq_event_lock();
        WITH written AS (
            INSERT INTO job_events (job_id, message_id, conversation_id, model, status,
                                    queue_position, at)
            VALUES (v_job_id, v_message_id, p_conversation_id, p_model, 'pending', 0, now()),
                   (v_job_id, v_message_id, p_conversation_id, p_model, v_job.status,
                    v_position, now())
            RETURNING job_events AS e)
        SELECT array_agg(e ORDER BY (e).seq), max((e).seq) INTO v_events, v_seq FROM written;
        PERFORM pg_notify('gq_event', v_job_id::text);
        PERFORM pg_notify('gq_queued', p_model);
    END IF;
    -- A place given to gq_job_json keeps it from counting one; an unplaced job shows null.
    RETURN gq_job_json(v_job, coalesce(v_position, 0), coalesce(v_work_ahead, 0), v_events)
        || jsonb_build_object('queue_position', v_position, 'event_seq', v_seq);
END
$$;

-- Every pending job this transaction sees -> queued (any committed pending by a web process of
-- the release before, which committed them on their own), and the jobs of p_queued (queued by
-- this transaction without events: gq_enqueue_batch's), holding the event lock once for all of
-- them, to the commit, so `seq` rises in commit order. Each job gets its pending and queued
-- events (in queue_seq order, the queued event's position NULL: the web process that follows
-- the log places it and writes it back, gq_record_place), a pending one's message says queued,
-- one NOTIFY gq_event wakes the web processes for the whole batch, and one gq_queued per model
-- the idle workers of that model. A pending job another transaction
-- holds (a cancel) is skipped, never waited for under the lock; one this transaction holds is
-- queued with the rest. Returns the events it wrote, in seq order (none: an empty array).
CREATE OR REPLACE FUNCTION gq_sequence_pending(p_queued uuid[] DEFAULT '{}')
RETURNS job_events[] LANGUAGE plpgsql AS $$
DECLARE
    v_events job_events[];
BEGIN
    PERFORM gq_event_lock();
    WITH due AS (
        SELECT id FROM jobs WHERE status = 'pending' ORDER BY queue_seq FOR UPDATE SKIP LOCKED),
    queued AS (
        UPDATE jobs AS j SET status = 'queued', queued_at = now()
        FROM due WHERE j.id = due.id
        RETURNING j.id, j.message_id, j.conversation_id, j.model, j.queue_seq),
    told AS (
        UPDATE messages AS m SET extra_metadata = m.extra_metadata || '{"status": "queued"}'
        FROM queued WHERE m.id = queued.message_id),
    listed AS (
        SELECT id, message_id, conversation_id, model, queue_seq FROM queued
        UNION ALL
        SELECT id, message_id, conversation_id, model, queue_seq FROM jobs
        WHERE id = ANY(p_queued)),
    written AS (
        INSERT INTO job_events (job_id, message_id, conversation_id, model, status,
                                queue_position, at)
        SELECT q.id, q.message_id, q.conversation_id, q.model, e.status, e.position, now()
        FROM listed AS q
        CROSS JOIN (VALUES (1, 'pending'::job_status, 0), (2, 'queued'::job_status, NULL))
            AS e (step, status, position)
        ORDER BY q.queue_seq, e.step
        RETURNING job_events AS e)
    SELECT coalesce(array_agg(e ORDER BY (e).seq), '{}') INTO v_events FROM written;
    IF cardinality(v_events) > 0 THEN
        PERFORM pg_notify('gq_event', '');
        PERFORM pg_notify('gq_queued', m) FROM (SELECT DISTINCT e.model FROM unnest(v_events) AS e)
            AS models (m);
    END IF;
    RETURN v_events;
END
$$;

-- A web process's concurrent enqueues, as one statement and one transaction (issue 14;
-- queueing/sequencer.py): p_items is a JSON array of gq_enqueue's arguments, one object each.
-- Every item is gq_enqueue's 'batch' mode in a subtransaction of its own, so an item that is
-- refused (GQ404, GQ422, GQ429, a CHECK) writes nothing and is answered with its SQLSTATE and
-- message, while the others go on, each job and its message inserted queued; then
-- gq_sequence_pending writes their events (and queues any job an earlier release's web left
-- pending) under the event lock, taken once, last, and held to the commit, so seq still rises
-- in commit order. Lock order: every user's queue lock of the batch first, in key order, before
-- any row is written (gq_enqueue's own take is then a no-op), so two batches, a batch and a
-- single enqueue or a move to the front never wait in a circle, and the event lock only after
-- them (as gq_enqueue takes it). A conversation deleted meanwhile fails only its items (GQ404,
-- or 23503 from its foreign key). Returns one row per item, by its 1-based place in p_items:
-- the job's JSON with the seq of its queued event, or the error.
CREATE OR REPLACE FUNCTION gq_enqueue_batch(p_items jsonb)
RETURNS TABLE (item bigint, job jsonb, seq bigint, error_code text, error_message text)
LANGUAGE plpgsql AS $$
DECLARE
    v_user_id bigint;
    v_item jsonb;
    v_n bigint;
    v_job jsonb;
    v_ids uuid[] := '{}';
    v_ns bigint[] := '{}';
    v_events job_events[];
BEGIN
    FOR v_user_id IN
        SELECT users.id FROM (
            SELECT DISTINCT c.user_id AS id
            FROM jsonb_array_elements(p_items) AS i
            JOIN conversations AS c ON c.id = (i.value ->> 'conversation_id')::uuid
            WHERE i.value ->> 'owner' IS NULL OR c.user_id = (i.value ->> 'owner')::bigint
        ) AS users
        ORDER BY hashtext(users.id::text), users.id
    LOOP
        PERFORM gq_user_queue_lock(v_user_id);
    END LOOP;
    FOR v_item, v_n IN
        SELECT i.value, i.ordinality FROM jsonb_array_elements(p_items) WITH ORDINALITY AS i
    LOOP
        BEGIN
            v_job := gq_enqueue(
                (v_item ->> 'conversation_id')::uuid, (v_item ->> 'owner')::bigint,
                v_item ->> 'model', v_item ->> 'default_model', v_item ->> 'prompt',
                v_item -> 'params', (v_item ->> 'priority')::integer,
                (v_item ->> 'max_attempts')::integer, (v_item ->> 'timeout_s')::integer,
                (v_item ->> 'max_queued')::integer,
                (v_item ->> 'cost_intercept_s')::double precision,
                (v_item ->> 'cost_slope_s')::double precision, 'batch');
            v_ids := v_ids || (v_job ->> 'job_id')::uuid;
            v_ns := v_ns || v_n;
        EXCEPTION WHEN OTHERS THEN
            item := v_n;
            job := NULL;
            seq := NULL;
            error_code := SQLSTATE;
            error_message := SQLERRM;
            RETURN NEXT;
        END;
    END LOOP;
    IF cardinality(v_ids) = 0 THEN
        RETURN;
    END IF;
    v_events := gq_sequence_pending(v_ids);
    RETURN QUERY  -- each job's answer from the events just written, not read back
    SELECT b.n, gq_job_json(j, 0, 0, w.events), w.queued_seq, NULL::text, NULL::text
    FROM unnest(v_ids, v_ns) AS b (id, n)
    JOIN jobs AS j ON j.id = b.id
    JOIN (SELECT e.job_id, array_agg(e ORDER BY e.seq) AS events,
                 min(e.seq) FILTER (WHERE e.status = 'queued') AS queued_seq
          FROM unnest(v_events) AS e GROUP BY e.job_id) AS w ON w.job_id = b.id;
END
$$;

-- The position a web process placed a job at (gq_enqueue 'place', gq_enqueue_batch), written
-- back where those left it NULL: the queued event of that seq, and the message while the job is
-- still queued there (a later transition already wrote its own). Idempotent: several web
-- processes may place the same event, always at the same rank (each applies the log in seq
-- order). Rows are locked in one order (events by seq, then messages by id), so two processes
-- writing the same places never deadlock; it never takes the event lock, so no transition
-- waits on it. Its commit does not wait for the WAL flush (the enqueue that waits on it
-- answers a flush sooner): the places are derived, every web process computes the same, and a
-- place a server crash lost leaves the NULL that readers of the log fill in
-- (web/live/placing.py `fill`).
CREATE OR REPLACE FUNCTION gq_record_place(p_seqs bigint[], p_positions integer[])
RETURNS void LANGUAGE sql AS $$
    SELECT set_config('synchronous_commit', 'off', true);
    WITH placed AS (
        SELECT e.seq, e.message_id, p.position
        FROM job_events AS e JOIN unnest(p_seqs, p_positions) AS p (seq, position) USING (seq)
        WHERE e.queue_position IS NULL
        ORDER BY e.seq
        FOR UPDATE OF e),
    events AS (
        UPDATE job_events AS e SET queue_position = placed.position
        FROM placed WHERE e.seq = placed.seq),
    messages AS (
        SELECT m.id, placed.position
        FROM messages AS m JOIN placed ON placed.message_id = m.id
        WHERE m.extra_metadata ->> 'status' = 'queued'
          AND m.extra_metadata -> 'queue_position' = 'null'::jsonb
        ORDER BY m.id
        FOR UPDATE OF m)
    UPDATE messages AS m
    SET extra_metadata = m.extra_metadata || jsonb_build_object('queue_position', messages.position)
    FROM messages WHERE m.id = messages.id;
$$;

-- A user's "move to the front": the queued job takes the earliest slot (tags and queue_seq)
-- among its owner's queued jobs of its model and priority, and those jobs each take the next
-- one's slot. The set of slots is unchanged, so no other user's job changes position. The move
-- is recorded as a queued event of the moved job (its new position), which also tells the
-- fan-out that the followed positions may have moved. Not queued: GQ409. The result carries the
-- event's seq (event_seq), so a web process can answer once its queue order has followed it.
CREATE OR REPLACE FUNCTION gq_move_to_front(p_job_id uuid, p_owner bigint) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
    v_user_id bigint;
    v_seq bigint;
BEGIN
    SELECT user_id INTO v_user_id FROM jobs
    WHERE id = p_job_id AND (p_owner IS NULL OR user_id = p_owner);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % not found', p_job_id USING ERRCODE = 'GQ404';
    END IF;
    -- Each move locks a range of its owner's queued jobs, in scan order, after the moved one:
    -- two moves of one user whose ranges overlap would deadlock, so they take turns.
    PERFORM gq_user_queue_lock(v_user_id);
    SELECT * INTO v_job FROM jobs WHERE id = p_job_id FOR UPDATE;
    IF NOT FOUND THEN  -- deleted meanwhile, with its conversation
        RAISE EXCEPTION 'job % not found', p_job_id USING ERRCODE = 'GQ404';
    END IF;
    IF v_job.status <> 'queued' THEN
        RAISE EXCEPTION 'job % is %, not queued: only a queued job can move', p_job_id, v_job.status
            USING ERRCODE = 'GQ409';
    END IF;
    WITH locked AS (
        SELECT id, start_tag, finish_tag, queue_seq FROM jobs
        WHERE user_id = v_job.user_id AND model = v_job.model AND priority = v_job.priority
          AND status = 'queued' AND (start_tag, queue_seq) <= (v_job.start_tag, v_job.queue_seq)
        FOR UPDATE),
    mine AS (
        SELECT locked.*, row_number() OVER (ORDER BY start_tag, queue_seq) AS slot FROM locked),
    moved AS (
        SELECT m.id, s.start_tag, s.finish_tag, s.queue_seq
        FROM mine AS m
        JOIN mine AS s ON s.slot = CASE WHEN m.id = p_job_id THEN 1 ELSE m.slot + 1 END)
    UPDATE jobs AS j
    SET start_tag = moved.start_tag, finish_tag = moved.finish_tag, queue_seq = moved.queue_seq
    FROM moved WHERE j.id = moved.id AND j.status = 'queued';
    SELECT * INTO v_job FROM jobs WHERE id = p_job_id;
    v_seq := gq_record_transition(v_job, NULL, '{"reason": "moved to the front"}');
    RETURN gq_job_json(v_job) || jsonb_build_object('event_seq', v_seq);
END
$$;

-- The worker's hand-off (gpu_worker/gpu_lock.py), and both its halves: its completions, then
-- its next claim, as one statement: one round trip and one transaction, committed together or
-- not at all. The rows: the jobs completed (status complete, in the order given), then the jobs
-- claimed (processing, head first).
--
-- Completions: job i of p_job_ids, fenced by claim i of p_claim_ids, gets image i of p_pngs; a
-- stale claim is skipped and returns no row. p_release_device is the GPU lock they held: kept
-- when the claim is for that same GPU and brings a job, released (gq_release_gpu) otherwise.
--
-- The claim (none when p_worker_id is NULL) finds the next runnable job of the worker's model
-- (highest priority, then the earliest start tag (fair share), then first come) and takes the
-- GPU lock of the worker's (host, device) if it is free. Never waits: a worker that finds the
-- GPU busy gets no row and waits outside any statement (so it holds no snapshot, and vacuum is
-- never held back) for a wake-up: an event, the gq_gpu NOTIFY of a release, or its poll
-- interval. With nothing to run no lock is taken or kept, so the GPU lock is held exactly while
-- a job is processing. The GPU is the one its worker registered: host and device are read from
-- the workers row. The model's virtual time follows the start tags of the jobs it runs (never
-- back: a retried job keeps its old, earlier tag), written only when it rises.
--
-- Batches (contract: Batching): with p_max_batch N > 1 the claim also takes up to N-1 jobs
-- compatible with that head job (same model, width, height, steps, guidance scale and negative
-- prompt) among the next 2N runnable jobs in claim order, skipping any another claim holds.
-- Every member gets its own claim_id and its own processing event, all in this one transaction,
-- so the positions of the jobs behind move once. batch_id/batch_size mark a batch of two or more
-- (NULL for one job).
--
-- The claim is chosen first, so that one UPDATE writes every job of the call, completed or
-- claimed, and one INSERT their images: PostgreSQL builds a table's CHECK constraints afresh for
-- each statement that writes it (sixteen on jobs), and a second UPDATE cost a tenth of a
-- hand-off at batch 1. Each job is its own transition; their message metadata, events and
-- NOTIFYs are written in one pass at the end (gq_record_transitions: every message row locked,
-- in message id order, before the event lock is taken), completions first.
CREATE OR REPLACE FUNCTION gq_complete_and_claim(
    p_job_ids uuid[], p_claim_ids bigint[], p_pngs bytea[], p_release_device text,
    p_worker_id uuid, p_max_batch integer
) RETURNS SETOF jobs LANGUAGE plpgsql
-- Its statements are planned once per session (generic plans): left to choose, PostgreSQL kept
-- custom plans, planning the set-based UPDATEs again at every call because their estimates from
-- the array parameters look cheaper, and at batch 1 that planning cost more than the loops it
-- replaced (backend CPU a job 13 % above theirs; generic: 5 % below). Planned once, a plan must
-- also be right for every size the queue will take: planned on a near-empty table (a fresh
-- deployment, a worker started before the first ANALYZE), the head's probe read the model's
-- queued jobs through another index and sorted them all, and the hand-off's UPDATE joined its
-- rows to a scan of the whole table, per job and for as long as the session lived (a loop of
-- hand-offs: 1.8 ms each, 1.0 ms with these). No scan and no sort: the head comes from the
-- queue's order, every other job by its id. JIT off: a plan's cost then carries the planner's
-- penalty for what cannot be done otherwise (the transitions' sort by message id), which
-- crossed jit_above_cost and compiled the statement at every call (~50 ms).
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_sort = off
SET jit = off AS $$
DECLARE
    v_done jobs[];
    v_claimed jobs[];
    v_host text;
    v_device text;
    v_model text;
    v_gpu text;
    v_head_id uuid;
    v_head_params jsonb;
    v_ids uuid[];
    v_tag double precision;
    v_batch_id uuid;
    v_started timestamptz;
BEGIN
    IF p_worker_id IS NOT NULL AND (p_max_batch IS NULL OR p_max_batch NOT BETWEEN 1 AND 64) THEN
        RAISE EXCEPTION 'a batch holds 1 to 64 jobs, not %', p_max_batch USING ERRCODE = 'GQ422';
    END IF;
    <<claim>>
    BEGIN
        EXIT claim WHEN p_worker_id IS NULL;
        SELECT host, device, model INTO v_host, v_device, v_model
        FROM workers WHERE id = p_worker_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'worker % is not registered', p_worker_id USING ERRCODE = 'GQ404';
        END IF;
        -- The head is found (and its row locked) before the GPU lock is tried: with nothing
        -- runnable no lock is taken at all, not even for the moment of this statement. A head
        -- whose GPU turns out busy stays locked only until this transaction ends, skipped by
        -- the others meanwhile. (A NOT EXISTS probe before the lock was planned generically as
        -- a scan of the heap from its start: its cost grew with every finished job ahead of
        -- the first queued one.)
        v_started := clock_timestamp();
        SELECT id, params INTO v_head_id, v_head_params FROM jobs
        WHERE status = 'queued' AND model = v_model AND run_after <= v_started
        ORDER BY priority DESC, start_tag, queue_seq
        LIMIT 1 FOR UPDATE SKIP LOCKED;
        EXIT claim WHEN NOT FOUND;
        v_gpu := gq_gpu_lock_name(v_host, v_device);
        -- The GPU the completions leave is this one: the hand-off keeps its lock.
        EXIT claim WHEN p_release_device IS DISTINCT FROM v_gpu
                        AND NOT pg_try_advisory_lock(26450, hashtext(v_gpu));
        v_ids := ARRAY[v_head_id];
        IF p_max_batch > 1 THEN
            -- The window is read on this statement's snapshot; the row locks re-check each
            -- member's status, so a job another worker claimed meanwhile is skipped, never
            -- claimed twice. Each window row is looked up by its id (LATERAL), in window order,
            -- until the batch is full: joined, the generic plan read the compatible rows with
            -- a scan of the heap from its start (the planner took the params test for one
            -- row), its cost rising with every finished job ahead of the queued ones.
            v_ids := v_ids || ARRAY(
                SELECT m.id
                FROM (SELECT id, priority, start_tag, queue_seq FROM jobs
                      WHERE status = 'queued' AND model = v_model AND run_after <= v_started
                        AND id <> v_head_id
                      ORDER BY priority DESC, start_tag, queue_seq
                      LIMIT 2 * p_max_batch) AS w
                CROSS JOIN LATERAL (
                    SELECT j.id FROM jobs AS j
                    WHERE j.id = w.id AND j.status = 'queued'
                      AND j.params -> 'width' IS NOT DISTINCT FROM v_head_params -> 'width'
                      AND j.params -> 'height' IS NOT DISTINCT FROM v_head_params -> 'height'
                      AND j.params -> 'steps' IS NOT DISTINCT FROM v_head_params -> 'steps'
                      AND j.params -> 'guidance_scale'
                          IS NOT DISTINCT FROM v_head_params -> 'guidance_scale'
                      AND nullif(j.params ->> 'negative_prompt', '')
                          IS NOT DISTINCT FROM nullif(v_head_params ->> 'negative_prompt', '')
                    FOR UPDATE SKIP LOCKED) AS m
                ORDER BY w.priority DESC, w.start_tag, w.queue_seq
                LIMIT p_max_batch - 1);
            IF cardinality(v_ids) > 1 THEN
                v_batch_id := gen_random_uuid();
            END IF;
        END IF;
    END claim;
    -- Every job of the call in one UPDATE: a completion (fenced by its claim_id) gets its end,
    -- a claimed job (locked above) its claim; a claim's columns stay as they are on a
    -- completion. The members are one unnest (the claimed after the completions, with no
    -- claim_id), not a UNION ALL of two: when a completion's row was changed by a transaction
    -- that committed while this one waited for it (its last progress report, a cancel
    -- request), PostgreSQL re-checks the join with the row's new version, and over a UNION ALL
    -- that re-check found no member, so the job was left processing, its image dropped as a
    -- stale claim's.
    WITH member AS (
        SELECT c.id, c.claim_id, c.ord, c.ord > coalesce(cardinality(p_job_ids), 0) AS claimed
        FROM unnest(p_job_ids || v_ids, p_claim_ids) WITH ORDINALITY AS c(id, claim_id, ord)
    ), changed AS (
        UPDATE jobs AS j
        SET status = CASE WHEN m.claimed THEN 'processing' ELSE 'complete' END,
            finished_at = CASE WHEN m.claimed THEN NULL ELSE now() END,
            error = CASE WHEN m.claimed THEN j.error END,
            attempts = j.attempts + m.claimed::integer,
            claim_id = CASE WHEN m.claimed THEN nextval('job_claim_seq') ELSE j.claim_id END,
            worker_id = CASE WHEN m.claimed THEN p_worker_id ELSE j.worker_id END,
            host = CASE WHEN m.claimed THEN v_host ELSE j.host END,
            device = CASE WHEN m.claimed THEN v_device ELSE j.device END,
            started_at = CASE WHEN m.claimed THEN v_started ELSE j.started_at END,
            progress = CASE WHEN m.claimed THEN NULL ELSE j.progress END,
            batch_id = CASE WHEN m.claimed THEN v_batch_id ELSE j.batch_id END,
            batch_size = CASE WHEN NOT m.claimed THEN j.batch_size
                              WHEN v_batch_id IS NOT NULL THEN cardinality(v_ids) END
        FROM member AS m
        WHERE j.id = m.id
          AND (m.claimed OR (j.claim_id = m.claim_id AND j.status = 'processing'))
        RETURNING j AS job, m.ord, m.claimed
    ), images AS (
        INSERT INTO job_images (job_id, png)
        SELECT (c.job).id, p_pngs[c.ord] FROM changed AS c WHERE NOT c.claimed
    )
    SELECT array_agg(c.job ORDER BY c.ord) FILTER (WHERE NOT c.claimed),
           array_agg(c.job ORDER BY c.ord) FILTER (WHERE c.claimed),
           max((c.job).start_tag) FILTER (WHERE c.claimed)
    INTO v_done, v_claimed, v_tag
    FROM changed AS c;
    IF v_claimed IS NOT NULL THEN
        UPDATE models SET virtual_time = v_tag WHERE name = v_model AND virtual_time < v_tag;
    END IF;
    IF v_done IS NOT NULL OR v_claimed IS NOT NULL THEN
        PERFORM gq_record_transitions(coalesce(v_done, '{}') || coalesce(v_claimed, '{}'));
    END IF;
    -- The GPU the completions held, unless the claim keeps it: freed, its waiters woken.
    IF p_release_device IS NOT NULL
       AND (v_claimed IS NULL OR p_release_device <> v_gpu) THEN
        PERFORM gq_release_gpu(p_release_device);
    END IF;
    RETURN QUERY SELECT * FROM unnest(v_done);
    RETURN QUERY SELECT * FROM unnest(v_claimed);
END
$$;

-- The claim alone (no completions): gq_complete_and_claim's second half, under the name a
-- claiming session shows in pg_stat_activity. plpgsql, so its plan is cached per session (a SQL
-- function's body is parsed and planned again at every call).
CREATE OR REPLACE FUNCTION gq_lock_and_claim_batch(p_worker_id uuid, p_max_batch integer)
RETURNS SETOF jobs LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT * FROM gq_complete_and_claim('{}', '{}', '{}', NULL, p_worker_id, p_max_batch);
END
$$;

-- Releases a GPU lock by name and wakes the workers waiting for that GPU (NOTIFY gq_gpu, payload
-- the lock name): a job's end releases it so, and the worker calls it when a claim raised
-- (session locks survive the rollback).
CREATE OR REPLACE FUNCTION gq_release_gpu(p_gpu_lock text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_released boolean := pg_advisory_unlock(26450, hashtext(p_gpu_lock));
BEGIN
    IF v_released THEN
        PERFORM pg_notify('gq_gpu', p_gpu_lock);
    END IF;
    RETURN v_released;
END
$$;

-- processing -> queued (retry after an exponential backoff with equal jitter, so each delay is at
-- least the previous one) while attempts remain and p_retryable; else processing -> error.
-- The position is counted by gq_record_transition, under the event lock.
CREATE OR REPLACE FUNCTION gq_fail(
    p_job_id uuid, p_claim_id bigint, p_error text, p_retryable boolean,
    p_backoff_base_s double precision, p_backoff_cap_s double precision, p_release_device text
) RETURNS SETOF jobs LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
    v_delay double precision;
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
                worker_id = NULL, host = NULL, device = NULL, progress = NULL,
                run_after = now() + v_delay * interval '1 second'
            WHERE id = p_job_id RETURNING * INTO v_job;
            PERFORM gq_record_transition(v_job, NULL, jsonb_build_object(
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
        PERFORM gq_release_gpu(p_release_device);
    END IF;
END
$$;

-- A worker ends a job it was told to cancel: processing -> canceled. Fenced like complete.
CREATE OR REPLACE FUNCTION gq_finish_canceled(p_job_id uuid, p_claim_id bigint, p_release_device text)
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
        PERFORM gq_release_gpu(p_release_device);
    END IF;
END
$$;

-- A worker hands a job back (graceful stop): processing -> queued at its old place, the attempt
-- not counted; a job whose cancel was requested ends canceled instead.
CREATE OR REPLACE FUNCTION gq_requeue(p_job_id uuid, p_claim_id bigint, p_release_device text)
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
        host = CASE WHEN cancel_requested THEN host END,
        device = CASE WHEN cancel_requested THEN device END,
        progress = NULL
    WHERE id = p_job_id AND claim_id = p_claim_id AND status = 'processing'
    RETURNING * INTO v_job;
    IF FOUND THEN
        PERFORM gq_record_transition(v_job, 0, '{"reason": "worker stopped"}');
        RETURN NEXT v_job;
    END IF;
    IF p_release_device IS NOT NULL THEN
        PERFORM gq_release_gpu(p_release_device);
    END IF;
END
$$;

-- Rows of workers that are gone. A worker whose session has ended is marked stopped (stopped_at:
-- when it stopped, or when a sweep first found its session gone), and a row stopped for an hour
-- is removed: long enough to tell which worker (host, pid) ran a job that just went wrong, short
-- enough that sweeps never join a backlog. A session whose start this role cannot see (another
-- role's, without pg_read_all_stats) is never judged gone, and a worker that a processing job
-- still names is never removed before that job has been requeued. SKIP LOCKED: concurrent sweeps
-- share the work and never wait on each other or on a worker marking itself stopped.
-- pg_stat_activity is read once per transaction and kept: the sweep read it before this runs, and
-- a worker registered since would look gone. Clearing it makes the status below newer than the
-- snapshot that shows the workers.
CREATE OR REPLACE FUNCTION gq_remove_gone_workers() RETURNS integer LANGUAGE sql AS $$
    SELECT pg_stat_clear_snapshot();
    UPDATE workers SET stopped_at = now()
    WHERE id IN (
        SELECT w.id FROM workers AS w
        WHERE w.stopped_at IS NULL
          AND NOT EXISTS (SELECT 1 FROM pg_stat_activity AS a
                          WHERE a.pid = w.session_pid
                            AND (a.backend_start = w.session_start OR a.backend_start IS NULL))
        FOR UPDATE OF w SKIP LOCKED);
    WITH gone AS (
        DELETE FROM workers
        WHERE id IN (
            SELECT w.id FROM workers AS w
            WHERE w.stopped_at < now() - interval '1 hour'
              AND NOT EXISTS (SELECT 1 FROM jobs AS j
                              WHERE j.status = 'processing' AND j.worker_id = w.id)
            FOR UPDATE OF w SKIP LOCKED)
        RETURNING 1)
    SELECT count(*)::integer FROM gone
$$;

-- Crash recovery: every processing job whose worker session is gone goes back to its place in the
-- queue (or to error once its attempts are spent, or to canceled if that was asked). The row lock
-- and the re-checked status make it exact: a job that finished meanwhile is never touched, and
-- SKIP LOCKED leaves a job that its worker is finishing right now to that worker. Then workers
-- that are gone are marked stopped, and those stopped for an hour removed (gq_remove_gone_workers).
CREATE OR REPLACE FUNCTION gq_requeue_lost() RETURNS SETOF jobs LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
    v_lost text;
BEGIN
    FOR v_job IN
        SELECT j.* FROM jobs AS j
        WHERE j.status = 'processing'
          AND NOT EXISTS (
              SELECT 1 FROM workers AS w JOIN pg_stat_activity AS a ON a.pid = w.session_pid
              WHERE w.id = j.worker_id AND w.stopped_at IS NULL
                -- backend_start is NULL where this role may not see it: such a session is
                -- taken for alive, so a sweeper without pg_read_all_stats never requeues a
                -- job of another role's live worker (gpu_worker/sweeper.py says so in the log).
                AND (a.backend_start = w.session_start OR a.backend_start IS NULL))
        ORDER BY j.id
        FOR UPDATE OF j SKIP LOCKED
    LOOP
        -- A row locked here is its newest version, but the liveness test above ran on this
        -- statement's snapshot: a job requeued by another sweeper and claimed again since then
        -- names a worker this snapshot cannot see. Leave such a job to the next sweep.
        CONTINUE WHEN v_job.started_at >= now();
        v_lost := format('the worker on %s of host %s was lost during attempt %s of %s',
                         coalesce(v_job.device, 'an unknown device'),
                         coalesce(v_job.host, 'unknown'), v_job.attempts, v_job.max_attempts);
        UPDATE jobs
        SET status = CASE WHEN cancel_requested THEN 'canceled'
                          WHEN attempts >= max_attempts THEN 'error' ELSE 'queued' END,
            finished_at = CASE WHEN cancel_requested OR attempts >= max_attempts THEN now() END,
            error = CASE WHEN cancel_requested THEN error ELSE v_lost END,
            queued_at = now(), run_after = now(), progress = NULL,
            claim_id = CASE WHEN cancel_requested OR attempts >= max_attempts THEN claim_id END,
            worker_id = CASE WHEN cancel_requested OR attempts >= max_attempts THEN worker_id END,
            host = CASE WHEN cancel_requested OR attempts >= max_attempts THEN host END,
            device = CASE WHEN cancel_requested OR attempts >= max_attempts THEN device END
        WHERE id = v_job.id
        RETURNING * INTO v_job;
        PERFORM gq_record_transition(v_job, 0,
            jsonb_build_object('reason', 'worker lost', 'error', v_lost));
        RETURN NEXT v_job;
    END LOOP;
    PERFORM gq_remove_gone_workers();
END
$$;

-- A user's cancel: queued -> canceled at once; processing -> cancel requested (its worker hears
-- the NOTIFY or sees the flag at the next step and ends it canceled); finished -> GQ409. The
-- result carries the canceled event's seq (event_seq; null when only a cancel was requested).
CREATE OR REPLACE FUNCTION gq_cancel(p_job_id uuid, p_owner bigint) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
    v_seq bigint;
BEGIN
    SELECT * INTO v_job FROM jobs
    WHERE id = p_job_id AND (p_owner IS NULL OR user_id = p_owner) FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % not found', p_job_id USING ERRCODE = 'GQ404';
    END IF;
    IF v_job.status = 'pending' THEN  -- accepted, not sequenced yet: queued first, as all are
        PERFORM gq_sequence_pending();
        SELECT * INTO v_job FROM jobs WHERE id = p_job_id;
    END IF;
    IF v_job.status = 'queued' THEN
        UPDATE jobs SET status = 'canceled', finished_at = now()
        WHERE id = p_job_id RETURNING * INTO v_job;
        v_seq := gq_record_transition(v_job, 0, '{"reason": "canceled by user"}');
    ELSIF v_job.status = 'processing' THEN
        UPDATE jobs SET cancel_requested = true WHERE id = p_job_id RETURNING * INTO v_job;
        PERFORM pg_notify('gq_cancel', p_job_id::text);
    ELSE
        RAISE EXCEPTION 'job % is already %', p_job_id, v_job.status USING ERRCODE = 'GQ409';
    END IF;
    RETURN gq_job_json(v_job) || jsonb_build_object('event_seq', v_seq);
END
$$;

-- Progress of a running job (not a transition: no event row, no event lock). Returns whether a
-- cancel was requested, so the worker learns it at every step; NULL when the claim is stale.
CREATE OR REPLACE FUNCTION gq_progress(p_job_id uuid, p_claim_id bigint, p_step integer, p_steps integer)
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

-- A user's PATCH: deep merge into the message's metadata, refused with GQ413 when the merged
-- object would be over p_max_bytes of compact JSON. The row lock is taken first, so the size
-- checked is the size written, and concurrent merges each start from the latest version.
CREATE OR REPLACE FUNCTION gq_merge_metadata(
    p_message_id uuid, p_owner bigint, p_patch jsonb, p_max_bytes integer
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_merged jsonb;
    v_size integer;
    v_message messages;
BEGIN
    SELECT gq_jsonb_deep_merge(m.extra_metadata, p_patch) INTO v_merged
    FROM messages AS m JOIN conversations AS c ON c.id = m.conversation_id
    WHERE m.id = p_message_id AND (p_owner IS NULL OR c.user_id = p_owner)
    FOR UPDATE OF m;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'message % not found', p_message_id USING ERRCODE = 'GQ404';
    END IF;
    v_size := gq_jsonb_compact_size(v_merged, p_max_bytes);
    IF v_size > p_max_bytes THEN
        RAISE EXCEPTION 'the merged metadata would be % bytes as compact JSON; a message''s metadata may hold at most % bytes (% KiB); nothing was changed',
            v_size, p_max_bytes, p_max_bytes / 1024 USING ERRCODE = 'GQ413';
    END IF;
    UPDATE messages SET extra_metadata = v_merged WHERE id = p_message_id
    RETURNING * INTO v_message;
    RETURN gq_message_json(v_message);
END
$$;
