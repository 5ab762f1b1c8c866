-- Setup and bookkeeping for the benchmark: seeding, sampling, waiting. Nothing here is timed.

-- name: seed_jobs
-- %(n)s jobs of %(model)s in one status, each with its assistant message (metadata as a
-- transition writes it), queued after every job already there. With %(seed_base)s, job i
-- (1-based) gets params.seed = seed_base + i, as users' jobs each have their own seed. A share of
-- them (%(high_priority_share)s) gets priority 1 so that both position counts do work. The
-- fair-share columns are filled as gq_enqueue would for eight users taking turns with one
-- GPU-second jobs (start tag queue_seq / 8): the tag orders the queue, with queue_seq breaking
-- ties. work is gq_job_work of the params; a finished job ran on %(host)s (NULL: none) for 1 s,
-- so with a host it is one of the cost model's samples. For big seeds the caller sets
-- session_replication_role = replica: the rows are consistent by construction, and skipping the
-- foreign-key triggers makes 1,000,000 rows several times faster.
WITH ids AS (
    SELECT gq_new_id() AS job_id, gq_new_id() AS message_id,
           nextval('job_queue_seq') AS queue_seq,
           CASE WHEN random() < %(high_priority_share)s THEN 1 ELSE 0 END AS priority,
           %(params)s::jsonb || CASE WHEN %(seed_base)s::integer IS NULL THEN '{}'::jsonb
                                     ELSE jsonb_build_object('seed', %(seed_base)s::integer + i)
                                END AS params
    FROM generate_series(1, %(n)s) AS i
), m AS (
    INSERT INTO messages (id, conversation_id, role, extra_metadata)
    SELECT message_id, %(conversation_id)s, 'assistant',
           jsonb_build_object('job_id', job_id, 'status', %(status)s::text,
                              'queue_position', 0, 'error', NULL)
    FROM ids
)
INSERT INTO jobs (id, message_id, conversation_id, user_id, model, prompt, params, work, status,
                  priority, queue_seq, start_tag, finish_tag, estimate_s, attempts, timeout_s,
                  host, queued_at, started_at, finished_at, claim_id)
SELECT job_id, message_id, %(conversation_id)s, %(user_id)s, %(model)s, %(prompt)s, params,
       gq_job_work(params), %(status)s::text, priority, queue_seq, floor(queue_seq / 8.0),
       floor(queue_seq / 8.0) + 1, 1.0,
       CASE WHEN %(status)s = 'queued' THEN 0 ELSE 1 END, 300,
       CASE WHEN %(status)s = 'queued' THEN NULL ELSE %(host)s::text END, now(),
       CASE WHEN %(status)s = 'queued' THEN NULL ELSE now() - interval '1 second' END,
       CASE WHEN %(status)s = ANY (gq_final_job_statuses()) THEN now() END,
       CASE WHEN %(status)s = 'queued' THEN NULL ELSE 0 END
FROM ids

-- name: wake_workers
-- A seed writes no events; this wakes the model's idle workers the way an enqueue would.
SELECT pg_notify('gq_queued', %(model)s)

-- name: replica_role
SET session_replication_role = replica

-- name: vacuum_queue
-- The server may run with autovacuum off: set the visibility map so counts stay index-only.
VACUUM (ANALYZE) jobs, messages, job_events

-- name: queued_keys
-- Every queued job with its sort keys, in claim order (the caller samples from it).
SELECT id AS job_id, model, priority, start_tag, queue_seq FROM jobs WHERE status = 'queued'
ORDER BY model, priority DESC, start_tag, queue_seq

-- name: queued_count
SELECT count(*)::integer AS queued FROM jobs WHERE status = 'queued'

-- name: batch_progress
-- How far a tagged batch has got, and the GPU time it took: from the first claim's start to the
-- last completion's UPDATE (updated_at is the trigger's clock_timestamp()).
SELECT count(*) FILTER (WHERE status = 'complete')::integer AS complete,
       count(*) FILTER (WHERE status IN ('error', 'canceled'))::integer AS failed,
       extract(epoch FROM max(updated_at) FILTER (WHERE status = 'complete')
                          - min(started_at))::float8 AS span_s
FROM jobs WHERE prompt = %(prompt)s

-- name: server_version
SELECT current_setting('server_version') AS version,
       current_setting('autovacuum') AS autovacuum,
       current_setting('synchronous_commit') AS synchronous_commit,
       current_setting('shared_buffers') AS shared_buffers

-- name: cancel_queued
-- Empties the queue between rounds (bookkeeping, not a transition: no events).
UPDATE jobs SET status = 'canceled', finished_at = now() WHERE status = 'queued'
