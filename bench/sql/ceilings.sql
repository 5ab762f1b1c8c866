-- The ceilings: each operation of the product as the plainest raw SQL that does the same work on
-- the same tables, with no application code (no plpgsql, no Python layer, no GPU lock, no
-- metadata merge, no event lock). Our figure divided by its ceiling is what our extra
-- guarantees and code cost.

-- name: position_one
-- One job's position from its sort keys: two range counts over jobs_queued_idx (the faster form
-- of count(*) over the partial index; the OR'd predicate is about twice as slow at 100,000).
-- Counts only: the work ahead that the ETA also needs is what ours adds to the same passes.
SELECT 1
    + (SELECT count(*) FROM jobs
       WHERE status = 'queued' AND model = %(model)s AND priority > %(priority)s)
    + (SELECT count(*) FROM jobs
       WHERE status = 'queued' AND model = %(model)s AND priority = %(priority)s
         AND (start_tag, queue_seq) < (%(start_tag)s, %(queue_seq)s))
    AS queue_position

-- name: position_all
-- Every queued job's position within its model: row_number() over the partial index, every row
-- fetched.
SELECT id AS job_id,
       row_number() OVER (PARTITION BY model ORDER BY priority DESC, start_tag, queue_seq)
           AS queue_position
FROM jobs WHERE status = 'queued'

-- name: enqueue_one
-- A job, its message and its event: one statement, no queue lock, no checks, no NOTIFY (the
-- issue's ceiling: a one-row INSERT ... RETURNING with an event in a CTE).
WITH m AS (
    INSERT INTO messages (conversation_id, role, extra_metadata)
    VALUES (%(conversation_id)s, 'assistant', '{}')
    RETURNING id
), j AS (
    INSERT INTO jobs (message_id, conversation_id, user_id, model, prompt, params, work, status,
                      priority, queue_seq, start_tag, finish_tag, estimate_s, timeout_s,
                      queued_at)
    SELECT m.id, %(conversation_id)s, %(user_id)s, 'tiny', %(prompt)s, %(params)s,
           gq_job_work(%(params)s), 'queued', 0, nextval('job_queue_seq'), 0, 1, 1, 300, now()
    FROM m
    RETURNING id, message_id, conversation_id, model
), e AS (
    INSERT INTO job_events (job_id, message_id, conversation_id, model, status, at)
    SELECT id, message_id, conversation_id, model, 'queued', now() FROM j
)
SELECT j.id AS job_id FROM j

-- name: enqueue_one_notify
-- The same with the NOTIFY every enqueue needs (live pages): at commit, NOTIFY takes a
-- database-wide lock, so concurrent commits that notify are serialised.
WITH m AS (
    INSERT INTO messages (conversation_id, role, extra_metadata)
    VALUES (%(conversation_id)s, 'assistant', '{}')
    RETURNING id
), j AS (
    INSERT INTO jobs (message_id, conversation_id, user_id, model, prompt, params, work, status,
                      priority, queue_seq, start_tag, finish_tag, estimate_s, timeout_s,
                      queued_at)
    SELECT m.id, %(conversation_id)s, %(user_id)s, 'tiny', %(prompt)s, %(params)s,
           gq_job_work(%(params)s), 'queued', 0, nextval('job_queue_seq'), 0, 1, 1, 300, now()
    FROM m
    RETURNING id, message_id, conversation_id, model
), e AS (
    INSERT INTO job_events (job_id, message_id, conversation_id, model, status, at)
    SELECT id, message_id, conversation_id, model, 'queued', now() FROM j
)
SELECT j.id AS job_id, pg_notify('gq_event', j.id::text) AS notified FROM j

-- name: claim_one
-- The next job of the model in claim order (priority, start tag, age), claimed with its event and
-- NOTIFY in one statement (the model's virtual time is not advanced: no fair-share bookkeeping).
WITH next AS (
    SELECT id FROM jobs
    WHERE status = 'queued' AND model = %(model)s AND run_after <= now()
    ORDER BY priority DESC, start_tag, queue_seq
    LIMIT 1 FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE jobs AS j
    SET status = 'processing', attempts = j.attempts + 1, claim_id = nextval('job_claim_seq'),
        worker_id = %(worker_id)s, device = %(device)s, started_at = now(), progress = NULL
    FROM next WHERE j.id = next.id
    RETURNING j.id, j.claim_id, j.message_id, j.conversation_id, j.model, j.prompt, j.params
), e AS (
    INSERT INTO job_events (job_id, message_id, conversation_id, model, status, at)
    SELECT id, message_id, conversation_id, model, 'processing', now() FROM claimed
)
SELECT c.id AS job_id, c.claim_id, c.prompt, c.params, pg_notify('gq_event', c.id::text)
FROM claimed AS c

-- name: complete_one
-- The job complete with its image, its event and NOTIFY in one statement (fenced by claim_id).
WITH done AS (
    UPDATE jobs SET status = 'complete', finished_at = now(), error = NULL
    WHERE id = %(job_id)s AND claim_id = %(claim_id)s AND status = 'processing'
    RETURNING id, message_id, conversation_id, model
), image AS (
    INSERT INTO job_images (job_id, png) SELECT id, %(png)s FROM done
), e AS (
    INSERT INTO job_events (job_id, message_id, conversation_id, model, status, at)
    SELECT id, message_id, conversation_id, model, 'complete', now() FROM done
)
SELECT d.id AS job_id, pg_notify('gq_event', d.id::text) FROM done AS d

-- name: gpu_lock
-- The raw loop takes the GPU's lock once and holds it across jobs: the very lock a worker of
-- that host and device claims under, so no worker there can take the raw loop's jobs.
SELECT pg_advisory_lock(26450, hashtext(gq_gpu_lock_name(%(host)s, %(device)s)))

-- name: gpu_unlock
SELECT pg_advisory_unlock(26450, hashtext(gq_gpu_lock_name(%(host)s, %(device)s)))
