-- Every statement gpuqueue runs at run time, by name. Transitions are single calls of the
-- functions in queueing/migrations/R__queue_functions.sql; the rest are reads and small writes.

-- name: migrations_lock
-- Serialises concurrent `gpuqueue migrate` runs.
SELECT pg_advisory_lock(26449, 0)

-- name: migrations_unlock
SELECT pg_advisory_unlock(26449, 0)

-- name: migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- name: migrations_applied
SELECT version, checksum FROM schema_migrations ORDER BY version

-- name: migration_record
INSERT INTO schema_migrations (version, checksum) VALUES (%(version)s, %(checksum)s)

-- name: repeatables_table
-- The repeatable files (R__*.sql) as last applied, all together.
CREATE TABLE IF NOT EXISTS schema_repeatables (
    name       text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- name: repeatables_applied
SELECT name, checksum FROM schema_repeatables

-- name: function_bodies_unchecked
SET LOCAL check_function_bodies = off

-- name: repeatables_forget
DELETE FROM schema_repeatables

-- name: repeatable_record
INSERT INTO schema_repeatables (name, checksum) VALUES (%(name)s, %(checksum)s)

-- name: ping
SELECT 1 AS ok

-- name: user_upsert
-- Creates the user, or returns it; --admin promotes, never demotes.
INSERT INTO users (name, is_admin) VALUES (%(name)s, %(is_admin)s)
ON CONFLICT (name) DO UPDATE SET is_admin = users.is_admin OR excluded.is_admin
RETURNING id, name, is_admin

-- name: token_insert
INSERT INTO api_tokens (user_id, token_hash, expires_at)
VALUES (%(user_id)s, %(token_hash)s, %(expires_at)s)
RETURNING id

-- name: tokens_authenticate
-- The valid tokens among these digests, with their users (one, or a round of a web process's
-- requests: queueing/tokens.py TokenLookups).
SELECT u.id AS user_id, u.name, u.is_admin, t.token_hash
FROM api_tokens AS t JOIN users AS u ON u.id = t.user_id
WHERE t.token_hash = ANY(%(token_hashes)s::bytea[])
  AND t.revoked_at IS NULL
  AND (t.expires_at IS NULL OR t.expires_at > now())

-- name: token_revoke
UPDATE api_tokens SET revoked_at = now()
WHERE token_hash = %(token_hash)s AND revoked_at IS NULL
RETURNING id

-- name: token_revoke_user
UPDATE api_tokens SET revoked_at = now()
WHERE user_id = (SELECT id FROM users WHERE name = %(name)s) AND revoked_at IS NULL
RETURNING id

-- name: conversation_create
INSERT INTO conversations (user_id, title) VALUES (%(user_id)s, %(title)s)
RETURNING id, title, created_at

-- name: conversation_list
SELECT c.id, c.title, c.created_at
FROM conversations AS c
WHERE %(owner)s::bigint IS NULL OR c.user_id = %(owner)s
ORDER BY c.created_at DESC
LIMIT %(limit)s

-- name: conversation_get
-- One conversation with its messages; NULL owner means an admin, who sees every conversation.
-- Queued jobs' positions are counted here unless %(count)s is false (as conversation_jobs: the
-- caller places the jobs of `queued` from its queue order; their messages show 0 here).
SELECT c.id, c.title, c.created_at,
       (SELECT coalesce(jsonb_agg(gq_message_json(m, CASE WHEN %(count)s THEN NULL ELSE 0 END)
                                  ORDER BY m.created_at, m.id), '[]'::jsonb)
        FROM messages AS m WHERE m.conversation_id = c.id) AS messages,
       (SELECT coalesce(jsonb_agg(jsonb_build_object('job_id', j.id, 'message_id', j.message_id)),
                        '[]'::jsonb)
        FROM jobs AS j WHERE j.conversation_id = c.id AND j.status = 'queued') AS queued,
       (SELECT coalesce(max(seq), 0) FROM job_events) AS seq
FROM conversations AS c
WHERE c.id = %(conversation_id)s AND (%(owner)s::bigint IS NULL OR c.user_id = %(owner)s)

-- name: conversation_owned
SELECT c.id FROM conversations AS c
WHERE c.id = %(conversation_id)s AND (%(owner)s::bigint IS NULL OR c.user_id = %(owner)s)

-- name: conversation_rename
UPDATE conversations SET title = %(title)s
WHERE id = %(conversation_id)s AND (%(owner)s::bigint IS NULL OR user_id = %(owner)s)
RETURNING id, title, created_at

-- name: conversation_cancel_jobs
-- A delete's first half (R__conversations.sql): its active jobs canceled, each with its event.
SELECT job_id, seq FROM gq_cancel_conversation(%(conversation_id)s, %(owner)s)

-- name: conversation_delete
SELECT gq_delete_conversation(%(conversation_id)s, %(owner)s) AS deleted

-- name: conversation_jobs
-- A conversation's jobs in the order the queue accepted them (queue_seq: a conversation is one
-- user's, and a user's enqueues take queue_seq under that user's lock, held to commit, so in
-- commit order; created_at is the transaction's start and is not); no row when not visible.
-- Positions are counted here unless %(count)s is false (the caller places the queued jobs from
-- its queue order; they show 0 here). seq is the newest event of the same snapshot: seq order
-- is commit order, so the jobs are exactly the state after every event up to it.
SELECT (SELECT coalesce(jsonb_agg(gq_job_json(j, CASE WHEN %(count)s THEN NULL ELSE 0 END)
                                  ORDER BY j.queue_seq), '[]'::jsonb)
        FROM jobs AS j WHERE j.conversation_id = c.id) AS jobs,
       (SELECT coalesce(max(seq), 0) FROM job_events) AS seq
FROM conversations AS c
WHERE c.id = %(conversation_id)s AND (%(owner)s::bigint IS NULL OR c.user_id = %(owner)s)

-- name: message_merge_metadata
-- One call: concurrent merges into one row serialise on its row lock and each re-reads the
-- latest version, so no field is ever lost (R7.1-7.3); the merged size is checked under that
-- lock (GQ413 over max_bytes, nothing written).
SELECT gq_merge_metadata(%(message_id)s, %(owner)s, %(patch)s, %(max_bytes)s) AS message

-- name: job_enqueue
-- gq_enqueue 'count' (queueing.jobs.enqueue without a placer) or 'place' (a batch of one).
SELECT gq_enqueue(%(conversation_id)s, %(owner)s, %(model)s, %(default_model)s, %(prompt)s,
                  %(params)s, %(priority)s, %(max_attempts)s, %(timeout_s)s, %(max_queued)s,
                  %(cost_intercept_s)s, %(cost_slope_s)s, %(mode)s) AS job

-- name: jobs_enqueue_batch
-- A round of a web process's enqueues, one row per item (queueing/sequencer.py).
SELECT item, job, seq, error_code, error_message FROM gq_enqueue_batch(%(items)s)

-- name: jobs_sequence_pending
-- The pending jobs a web process of the release before left, queued (the sweep): how many
-- events that wrote.
SELECT cardinality(gq_sequence_pending())

-- name: jobs_pending_stale
-- Whether a pending job has waited a second unsequenced (its web process died): the sweep's
-- test, over the small pending index.
SELECT EXISTS (SELECT 1 FROM jobs
               WHERE status = 'pending' AND created_at < now() - interval '1 second')

-- name: job_record_place
-- Positions placed from the queue order written back to the queued events (and messages) that
-- gq_enqueue left unplaced.
SELECT gq_record_place(%(seqs)s, %(positions)s)

-- name: job_move_to_front
SELECT gq_move_to_front(%(job_id)s, %(owner)s) AS job

-- name: job_get
-- Its position counted here unless %(count)s is false (as conversation_jobs).
-- seq: the newest event of the same snapshot (a placer answers once it has followed it).
SELECT gq_job_json(j, CASE WHEN %(count)s THEN NULL ELSE 0 END) AS job,
       (SELECT coalesce(max(seq), 0) FROM job_events) AS seq
FROM jobs AS j
WHERE j.id = %(job_id)s AND (%(owner)s::bigint IS NULL OR j.user_id = %(owner)s)

-- name: job_image
SELECT i.png FROM job_images AS i JOIN jobs AS j ON j.id = i.job_id
WHERE i.job_id = %(job_id)s AND (%(owner)s::bigint IS NULL OR j.user_id = %(owner)s)

-- name: job_cancel
SELECT gq_cancel(%(job_id)s, %(owner)s) AS job

-- name: job_lock_and_claim
-- No row when the worker's GPU is busy or nothing is runnable; gpu_lock names the lock taken.
SELECT id, claim_id, message_id, conversation_id, model, prompt, params, work, timeout_s,
       attempts, max_attempts, started_at, gq_gpu_lock_name(host, device) AS gpu_lock
FROM gq_lock_and_claim_batch(%(worker_id)s, 1)

-- name: job_lock_and_claim_batch
-- The head job and up to max_batch - 1 compatible ones (head first); none when busy or idle.
SELECT id, claim_id, message_id, conversation_id, model, prompt, params, work, timeout_s,
       attempts, max_attempts, started_at, gq_gpu_lock_name(host, device) AS gpu_lock,
       batch_id, coalesce(batch_size, 1) AS batch_size
FROM gq_lock_and_claim_batch(%(worker_id)s, %(max_batch)s)

-- name: job_complete
-- processing -> complete with its image (a complete job always has one), fenced: a stale claim
-- returns no row. release_device releases that GPU lock in the same trip. No claim after it.
SELECT id, status
FROM gq_complete_and_claim(ARRAY[%(job_id)s::uuid], ARRAY[%(claim_id)s::bigint],
                           ARRAY[%(png)s::bytea], %(release_device)s, NULL, NULL)

-- name: job_complete_batch
-- Completes job i of job_ids (fenced by claim i of claim_ids) with image i of pngs, each in its
-- own transition, in one statement; a row for each job completed, in the order given. No claim.
SELECT id, status
FROM gq_complete_and_claim(%(job_ids)b::uuid[], %(claim_ids)b::bigint[], %(pngs)b::bytea[],
                           %(release_device)s, NULL, NULL)

-- name: job_complete_and_claim
-- The hand-off: job_complete_batch, then job_lock_and_claim_batch, in one statement. The jobs
-- completed come first (status complete), then the jobs claimed (processing), as claims.
SELECT id, status, claim_id, message_id, conversation_id, model, prompt, params, work, timeout_s,
       attempts, max_attempts, started_at, gq_gpu_lock_name(host, device) AS gpu_lock,
       batch_id, coalesce(batch_size, 1) AS batch_size
FROM gq_complete_and_claim(%(job_ids)b::uuid[], %(claim_ids)b::bigint[], %(pngs)b::bytea[],
                           %(release_device)s, %(worker_id)s, %(max_batch)s)

-- name: gpu_shared
-- Whether another live worker names this worker's GPU (host, device): the GPU then changes hands
-- between its jobs, and the worker sends no claim with its completions (gpu_worker/worker.py).
SELECT EXISTS (SELECT 1 FROM live_workers AS o JOIN workers AS w ON w.id = %(worker_id)s
               WHERE o.host = w.host AND o.device = w.device AND o.id <> w.id) AS shared

-- name: job_fail
SELECT id, status FROM gq_fail(%(job_id)s, %(claim_id)s, %(error)s, %(retryable)s,
                      %(backoff_base_s)s, %(backoff_cap_s)s, %(release_device)s)

-- name: job_finish_canceled
SELECT id, status FROM gq_finish_canceled(%(job_id)s, %(claim_id)s, %(release_device)s)

-- name: job_requeue
SELECT id, status FROM gq_requeue(%(job_id)s, %(claim_id)s, %(release_device)s)

-- name: job_requeue_lost
SELECT id, status FROM gq_requeue_lost()

-- name: prune_batch
-- One batch of `gpuqueue prune`: the next jobs by id after %(after)s that finished before the
-- cutoff, with their events (and images when asked) deleted, in one short transaction. Only rows
-- of finished jobs are touched and no job row is locked, so the queue never waits on it; SKIP
-- LOCKED leaves rows another prune is deleting to that one. last_id is NULL past the last job.
WITH batch AS (
    SELECT id FROM jobs
    WHERE id > %(after)s AND status = ANY (gq_final_job_statuses())
      AND finished_at < %(cutoff)s
    ORDER BY id LIMIT %(limit)s),
events AS (
    DELETE FROM job_events WHERE seq IN (
        SELECT e.seq FROM job_events AS e JOIN batch AS b ON b.id = e.job_id
        FOR UPDATE OF e SKIP LOCKED)
    RETURNING job_id),
images AS (
    DELETE FROM job_images WHERE %(images)s AND job_id IN (
        SELECT i.job_id FROM job_images AS i JOIN batch AS b ON b.id = i.job_id
        FOR UPDATE OF i SKIP LOCKED)
    RETURNING job_id)
SELECT (SELECT id FROM batch ORDER BY id DESC LIMIT 1) AS last_id,
       (SELECT count(DISTINCT job_id)
        FROM (SELECT job_id FROM events UNION ALL SELECT job_id FROM images) AS d)::integer AS jobs,
       (SELECT count(*) FROM events)::integer AS events,
       (SELECT count(*) FROM images)::integer AS images

-- name: prune_cutoff
SELECT now() - %(age_s)s * interval '1 second' AS cutoff

-- name: job_progress
SELECT gq_progress(%(job_id)s, %(claim_id)s, %(step)s, %(steps)s) AS cancel_requested

-- name: job_progress_with_preview
-- A progress report that carries a preview (issue 16): the preview is stored in the same
-- statement, fenced by the claim like the step and named by it, so the fan-out woken by
-- gq_progress's NOTIFY finds it; previews of jobs no longer running are removed on the way.
WITH stale AS (
    DELETE FROM job_previews p USING jobs j
    WHERE j.id = p.job_id AND p.job_id <> %(job_id)s
      AND (j.status <> 'processing' OR j.claim_id IS DISTINCT FROM p.claim_id)
), stored AS (
    INSERT INTO job_previews (job_id, claim_id, step, image)
    SELECT id, claim_id, %(step)s, %(image)s FROM jobs
    WHERE id = %(job_id)s AND claim_id = %(claim_id)s AND status = 'processing'
    ON CONFLICT (job_id) DO UPDATE
        SET claim_id = EXCLUDED.claim_id, step = EXCLUDED.step, image = EXCLUDED.image
)
SELECT gq_progress(%(job_id)s, %(claim_id)s, %(step)s, %(steps)s) AS cancel_requested

-- name: job_claim_state
-- What a running job's worker polls: is its claim still current, and was a cancel requested?
SELECT status = 'processing' AND claim_id = %(claim_id)s AS current, cancel_requested
FROM jobs WHERE id = %(job_id)s

-- name: gpu_release
SELECT gq_release_gpu(%(gpu_lock)s) AS released

-- name: cost_samples
-- The cost model's data: per model and host that workers registered, aggregates of the run time
-- (seconds) over work (megapixel-steps) of its latest complete jobs queued since migration 007
-- (estimate_s > 0; queueing/cost_model.py). A job run in a batch counts its share of the call:
-- the batch's run time over its size.
SELECT k.model, k.host, s.samples, s.mean_run_s, s.mean_work, s.slope, s.intercept, s.var_work
FROM (SELECT DISTINCT model, host FROM workers) AS k
CROSS JOIN LATERAL (
    SELECT count(*)::integer AS samples, avg(r.run_s) AS mean_run_s, avg(r.work) AS mean_work,
           regr_slope(r.run_s, r.work) AS slope, regr_intercept(r.run_s, r.work) AS intercept,
           var_pop(r.work) AS var_work
    FROM (SELECT extract(epoch FROM j.finished_at - j.started_at)::float8
                 / coalesce(j.batch_size, 1) AS run_s, j.work
          FROM jobs AS j
          WHERE j.status = 'complete' AND j.estimate_s > 0 AND j.model = k.model
            AND j.host = k.host
          ORDER BY j.finished_at DESC LIMIT %(window)s) AS r) AS s
WHERE s.samples > 0

-- name: eta_shares
-- Per model, each user it serves now (a job pending, queued or running) as the latest finish
-- tag of that user's jobs of the model and the user's weight: where that user's backlog ends on
-- the fair-share clock. A skip scan of jobs_user_tags_idx (whose predicate is this filter),
-- backwards: each step is one descent to the next (user, model) below the last, whose first
-- entry is its latest tag, so the read grows with the users served, not with their jobs (0.9 ms
-- at 100,000 queued; a GROUP BY over the index, 22 ms) nor with every user there is (a probe per
-- user and model, planned on a fresh database's default estimates, was JIT-compiled: 170 ms).
WITH RECURSIVE backlog AS (
    (SELECT j.user_id, j.model, j.finish_tag FROM jobs AS j
     WHERE j.status IN ('pending', 'queued', 'processing')
     ORDER BY j.user_id DESC, j.model DESC, j.finish_tag DESC LIMIT 1)
    UNION ALL
    SELECT n.user_id, n.model, n.finish_tag
    FROM backlog AS b
    CROSS JOIN LATERAL (
        SELECT j.user_id, j.model, j.finish_tag FROM jobs AS j
        WHERE j.status IN ('pending', 'queued', 'processing')
          AND (j.user_id, j.model) < (b.user_id, b.model)
        ORDER BY j.user_id DESC, j.model DESC, j.finish_tag DESC LIMIT 1) AS n
)
SELECT b.model, array_agg(b.finish_tag) AS finish_tags, array_agg(u.weight) AS weights
FROM backlog AS b
JOIN users AS u ON u.id = b.user_id
GROUP BY b.model

-- name: eta_gpus
-- Every live worker's model and GPU, and the work and elapsed seconds of what it runs: one job,
-- or a batch (its members' work summed, as the cost model counts each member's share).
SELECT w.model, w.host, w.device, sum(j.work) AS work,
       max(extract(epoch FROM now() - j.started_at))::float8 AS elapsed_s
FROM live_workers AS w
LEFT JOIN jobs AS j ON j.worker_id = w.id AND j.status = 'processing'
GROUP BY w.id, w.model, w.host, w.device

-- name: events_after
-- Transition events after a seq, as the WebSocket sends them ('pending' is not sent), with the
-- job's owner and sort keys, from which the web process keeps its queue order (NULL once the
-- job is gone). Tags and queue_seq are fixed at enqueue and kept on a retry; only a move to the
-- front changes them, and its event tells the reader to re-read that user's keys.
SELECT e.seq, e.job_id, e.conversation_id, gq_event_json(e) AS event,
       j.user_id, j.priority, j.start_tag, j.queue_seq, j.work
FROM job_events AS e
LEFT JOIN jobs AS j ON j.id = e.job_id
WHERE e.seq > %(after)s AND e.status <> 'pending'
  AND (%(until)s::bigint IS NULL OR e.seq <= %(until)s)
  AND (%(conversation_ids)s::uuid[] IS NULL OR e.conversation_id = ANY(%(conversation_ids)s))
  AND (%(job_ids)s::uuid[] IS NULL OR e.job_id = ANY(%(job_ids)s))
ORDER BY e.seq
LIMIT %(limit)s

-- name: events_last_seq
SELECT coalesce(max(seq), 0) AS seq FROM job_events

-- name: queue_order_load
-- Every queued job's sort keys and the newest event of the same snapshot: seq order is commit
-- order, so these are exactly the queue after every event up to `seq` (the web process's queue
-- order starts here and follows the log).
SELECT coalesce(jsonb_agg(jsonb_build_array(id, conversation_id, model, user_id, priority,
                                            start_tag, queue_seq, work)), '[]'::jsonb) AS jobs,
       (SELECT coalesce(max(seq), 0) FROM job_events) AS seq
FROM jobs WHERE status = 'queued'

-- name: queue_order_of_user
-- One user's queued jobs of one model with their sort keys (a move to the front rotated them).
SELECT id AS job_id, conversation_id, model, user_id, priority, start_tag, queue_seq, work
FROM jobs WHERE user_id = %(user_id)s AND model = %(model)s AND status = 'queued'

-- name: conversations_gone
-- Which of these conversations no longer exist (deleted while a web process was not listening).
SELECT c AS conversation_id FROM unnest(%(ids)s::uuid[]) AS c
WHERE NOT EXISTS (SELECT 1 FROM conversations WHERE id = c)

-- name: queue_places
-- The live places of some queued jobs, counted here (for the few that a web process's queue
-- order has not reached yet, and for callers without one).
SELECT j.id AS job_id, p.queue_position, p.work_ahead
FROM jobs AS j, gq_queue_place(j.model, j.priority, j.start_tag, j.queue_seq) AS p
WHERE j.id = ANY(%(job_ids)s) AND j.status = 'queued'

-- name: jobs_visible
-- Which of these jobs the owner may see (NULL owner: an admin sees all).
SELECT id AS job_id, conversation_id FROM jobs
WHERE id = ANY(%(job_ids)s) AND (%(owner)s::bigint IS NULL OR user_id = %(owner)s)

-- name: worker_register
-- A worker is known by the session that runs this statement: its liveness is that session's.
-- Its model becomes one a request may name. Returns the name of the GPU lock its claims take
-- (gq_gpu_lock_name). A worker that describes its model (size rule, defaults; %(described)s)
-- writes that description; one that does not (the stub) leaves the stored one as it is.
WITH model AS (
    INSERT INTO models (name, size_multiple, default_steps, default_guidance, default_size)
    VALUES (%(model)s, %(size_multiple)s, %(default_steps)s, %(default_guidance)s,
            %(default_size)s)
    ON CONFLICT (name) DO UPDATE
    SET size_multiple = EXCLUDED.size_multiple, default_steps = EXCLUDED.default_steps,
        default_guidance = EXCLUDED.default_guidance, default_size = EXCLUDED.default_size
    WHERE %(described)s
)
INSERT INTO workers (id, host, device, backend, model, hostname, pid, session_pid, session_start)
SELECT %(worker_id)s, %(host)s, %(device)s, %(backend)s, %(model)s, %(hostname)s, %(pid)s,
       a.pid, a.backend_start
FROM pg_stat_activity AS a WHERE a.pid = pg_backend_pid()
RETURNING id, gq_gpu_lock_name(host, device) AS gpu_lock

-- name: worker_stop
UPDATE workers SET stopped_at = now() WHERE id = %(worker_id)s

-- name: workers_live
SELECT w.id AS worker_id, w.host, w.device, w.backend, w.model, w.hostname, w.pid, w.started_at,
       j.id AS job_id,
       extract(epoch FROM now() - j.started_at)::float8 AS lock_held_s
FROM live_workers AS w
LEFT JOIN jobs AS j ON j.worker_id = w.id AND j.status = 'processing'
ORDER BY w.host, w.device, w.started_at

-- name: queue_counts
SELECT (SELECT count(*) FROM jobs WHERE status = 'queued')::integer AS queued,
       (SELECT count(*) FROM jobs WHERE status = 'processing')::integer AS processing,
       (SELECT extract(epoch FROM now() - min(queued_at))::float8
        FROM jobs WHERE status = 'queued') AS oldest_queued_s

-- name: queue_overview
SELECT status, jobs::integer AS jobs, extract(epoch FROM oldest_queued_age)::float8 AS oldest_queued_s
FROM queue_overview

-- name: progress_of_jobs
-- The last reported step of those of the jobs that are processing, with the conversation, so
-- the WebSocket fan-out can route it, and the preview stored with that very step (else NULL:
-- a preview is sent once).
SELECT j.id AS job_id, j.conversation_id, j.progress, p.image AS preview FROM jobs j
LEFT JOIN job_previews p
    ON p.job_id = j.id AND p.claim_id = j.claim_id AND p.step = (j.progress->>'step')::integer
WHERE j.id = ANY(%(job_ids)s::uuid[]) AND j.status = 'processing' AND j.progress IS NOT NULL

-- name: queue_head_with_users
-- The first jobs of each model's queue in the order they will be taken, with their owners'
-- names (`gpuqueue status`).
SELECT p.model, p.queue_position::integer AS queue_position, p.job_id, u.name AS user_name,
       p.priority, p.attempts, p.max_attempts, p.prompt, p.work_ahead, p.start_tag,
       extract(epoch FROM p.waiting)::float8 AS waiting_s,
       greatest(extract(epoch FROM p.run_after - now()), 0)::float8 AS retry_in_s
FROM queue_positions AS p JOIN users AS u ON u.id = p.user_id
WHERE p.queue_position <= %(limit)s
ORDER BY p.model, p.queue_position

-- name: models_overview
-- Every model a request may name (those workers registered, and the default), with its size
-- rule and defaults (NULL where no worker described it), live workers, queued and processing jobs.
SELECT m.name, m.name = %(default_model)s AS default,
       d.size_multiple, d.default_steps, d.default_guidance, d.default_size,
       (SELECT count(*) FROM live_workers AS w WHERE w.model = m.name)::integer AS workers,
       (SELECT count(*) FROM jobs WHERE status = 'queued' AND model = m.name)::integer AS queued,
       (SELECT count(*) FROM jobs WHERE status = 'processing' AND model = m.name)::integer
           AS processing
FROM (SELECT name FROM models UNION SELECT %(default_model)s) AS m
LEFT JOIN models AS d ON d.name = m.name
ORDER BY m.name

-- name: model_capabilities
-- The models a worker has described (migration 008): what submits apply.
SELECT name, size_multiple, default_size, default_steps, default_guidance
FROM models WHERE size_multiple IS NOT NULL

-- name: user_set_weight
UPDATE users SET weight = %(weight)s WHERE name = %(name)s RETURNING name, weight

-- name: web_secret_get_or_create
-- The stored secret of this name, or the given one stored now; concurrent first starts all get
-- the row that won (DO UPDATE returns the committed row, DO NOTHING would return nothing).
INSERT INTO web_secrets (name, secret) VALUES (%(name)s, %(secret)s)
ON CONFLICT (name) DO UPDATE SET secret = web_secrets.secret
RETURNING secret

-- name: tokens_still_valid
-- Which of these token digests are still valid (not revoked, not expired): the periodic check
-- of every open WebSocket's token, one query for all of them.
SELECT token_hash FROM api_tokens
WHERE token_hash = ANY(%(token_hashes)s::bytea[])
  AND revoked_at IS NULL
  AND (expires_at IS NULL OR expires_at > now())

-- name: sweep_visibility
-- Can this session judge every worker's liveness? live_workers matches each worker's
-- backend_start, which pg_stat_activity hides for sessions of roles whose privileges we lack
-- unless we are superuser or have pg_read_all_stats: to such a role another role's worker looks
-- dead. hidden_workers: registered workers whose session exists but is hidden from us that way.
SELECT current_user AS role,
       (SELECT r.rolsuper FROM pg_roles AS r WHERE r.rolname = current_user)
           OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS sees_all,
       count(a.pid)::integer AS hidden_workers,
       coalesce(string_agg(DISTINCT a.usename::text, ', '), '') AS hidden_roles
FROM workers AS w
JOIN pg_stat_activity AS a ON a.pid = w.session_pid AND a.backend_start IS NULL
WHERE w.stopped_at IS NULL

-- name: session_check_begin
-- The start-up check for a transaction pooler (queueing/session_check.py), first transaction:
-- this connection's backend, and a session-level advisory lock keyed by it (26452, its pid).
SELECT pg_backend_pid() AS pid, pg_try_advisory_lock(26452, pg_backend_pid()) AS locked

-- name: session_check_other
-- Another connection's backend, asked inside a transaction that stays open meanwhile, so a
-- pooler must serve the first connection's next transaction from some other backend.
SELECT pg_backend_pid() AS pid

-- name: session_check_end
-- The first connection's second transaction: its backend, and whether the lock of its first
-- transaction is still this session's (unlocking answers false when it is not).
SELECT pg_backend_pid() AS pid, pg_advisory_unlock(26452, %(pid)s::integer) AS held

-- name: metrics_snapshot
-- What GET /metrics reads from the database, in one statement that web/metrics.py shares among
-- the scrapes of a second. models: every model a request may name, with its queued jobs
-- (counted in jobs_queued_idx alone), processing jobs and live workers. gpus: the live workers
-- of each GPU (host, device) and model: whether they run a job, and how long the GPU lock has
-- been held (0 while it is free).
WITH live AS (
    SELECT w.id AS worker_id, w.host, w.device, w.model, j.id AS job_id, j.started_at
    FROM live_workers AS w
    LEFT JOIN jobs AS j ON j.worker_id = w.id AND j.status = 'processing'
)
SELECT
    (SELECT coalesce(jsonb_agg(jsonb_build_object(
                'model', m.name, 'queued', coalesce(q.jobs, 0),
                'processing', coalesce(p.jobs, 0), 'workers', coalesce(w.workers, 0))
            ORDER BY m.name), '[]')
     FROM (SELECT name FROM models UNION SELECT %(default_model)s) AS m
     LEFT JOIN (SELECT model, count(*) AS jobs FROM jobs WHERE status = 'queued'
                GROUP BY model) AS q ON q.model = m.name
     LEFT JOIN (SELECT model, count(*) AS jobs FROM jobs WHERE status = 'processing'
                GROUP BY model) AS p ON p.model = m.name
     LEFT JOIN (SELECT model, count(DISTINCT worker_id) AS workers FROM live
                GROUP BY model) AS w ON w.model = m.name) AS models,
    (SELECT coalesce(jsonb_agg(g ORDER BY g.host, g.device, g.model), '[]')
     FROM (SELECT host, device, model, count(job_id) > 0 AS busy,
                  coalesce(extract(epoch FROM now() - min(started_at))::float8, 0)
                      AS lock_held_s
           FROM live GROUP BY host, device, model) AS g) AS gpus
