-- Statements only tests run, by name (tests/queries.py loads them with queueing's loader).

-- name: queue_position_audit
-- Each queued job's own position count beside its rank in its model's queue, in one snapshot:
-- the two must agree.
SELECT id AS job_id, model, user_id, priority, start_tag, queue_seq,
       gq_queue_position(model, priority, start_tag, queue_seq) AS queue_position,
       row_number() OVER (PARTITION BY model ORDER BY priority DESC, start_tag, queue_seq)::integer
           AS queue_rank
FROM jobs WHERE status = 'queued'
ORDER BY model, queue_rank

-- name: job_events_of
-- One job's events with their details, oldest first.
SELECT seq, status, queue_position, at, detail FROM job_events
WHERE job_id = %(job_id)s ORDER BY seq

-- name: show_lock_timeout
SELECT current_setting('lock_timeout') AS lock_timeout

-- name: jsonb_deep_merge
SELECT gq_jsonb_deep_merge(%(base)s, %(patch)s) AS merged

-- name: job_statuses
-- The SQL lists of states (the job_status domain's, in order) and of final states.
SELECT gq_job_statuses() AS statuses, gq_final_job_statuses() AS final

-- name: jobs_constraint
-- One CHECK of the jobs table, as PostgreSQL holds it.
SELECT pg_get_constraintdef(c.oid) AS definition FROM pg_constraint AS c
WHERE c.conrelid = 'jobs'::regclass AND c.conname = %(name)s

-- name: job_status_check
-- The job_status domain's constraint as PostgreSQL holds it.
SELECT c.conname, pg_get_constraintdef(c.oid) AS definition
FROM pg_constraint AS c JOIN pg_type AS t ON t.oid = c.contypid
WHERE t.typname = 'job_status'

-- name: unnamed_job_checks
-- CHECKs on jobs and job_events still under a name PostgreSQL made up.
SELECT conname FROM pg_constraint
WHERE conrelid IN ('jobs'::regclass, 'job_events'::regclass) AND contype = 'c'
  AND conname ~ '_check[0-9]*$'

-- name: job_set_status
UPDATE jobs SET status = %(status)s WHERE id = %(job_id)s RETURNING id

-- name: job_clear_finished_at
UPDATE jobs SET finished_at = NULL WHERE id = %(job_id)s RETURNING id

-- name: seed_jobs
-- Bulk rows for the scale tests: %(n)s jobs (with their messages) in one status and %(params)s,
-- written directly (no events), in queue order after every job already there.
WITH m AS (
    INSERT INTO messages (conversation_id, role, extra_metadata)
    SELECT %(conversation_id)s, 'assistant', '{}' FROM generate_series(1, %(n)s)
    RETURNING id
)
INSERT INTO jobs (message_id, conversation_id, user_id, model, prompt, params, status, priority,
                  queue_seq, start_tag, finish_tag, work, estimate_s, attempts, timeout_s,
                  queued_at, started_at, finished_at, claim_id)
SELECT m.id, %(conversation_id)s, %(user_id)s, 'tiny', 'seeded', %(params)s, %(status)s::text, 0,
       nextval('job_queue_seq'), 0, 0, 0, 1,
       CASE WHEN %(status)s = 'queued' THEN 0 ELSE 1 END, 60, now(),
       CASE WHEN %(status)s = 'queued' THEN NULL ELSE now() - interval '2 seconds' END,
       CASE WHEN %(status)s = ANY (gq_final_job_statuses()) THEN now() END,
       CASE WHEN %(status)s = 'queued' THEN NULL ELSE 0 END
FROM m

-- name: seed_jobs_before_006
-- A user with three jobs, one canceled, written by 005's functions (the upgrade test's data).
WITH u AS (INSERT INTO users (name) VALUES ('before-006') RETURNING id),
     c AS (INSERT INTO conversations (user_id) SELECT id FROM u RETURNING id),
     j AS (SELECT gq_enqueue(c.id, NULL, 'p', '{}', 0, 3, 60, 100) AS job
           FROM c, generate_series(1, 3))
SELECT gq_cancel((min(job ->> 'job_id'))::uuid, NULL) ->> 'status' AS status FROM j

-- name: job_tables_storage
-- Where jobs and job_events live on disk: a rewrite gives a table a new file.
SELECT relname, relfilenode FROM pg_class
WHERE oid IN ('jobs'::regclass, 'job_events'::regclass) ORDER BY relname

-- name: job_status_counts
SELECT status::text AS status, count(*)::integer AS n FROM jobs GROUP BY 1 ORDER BY 1

-- name: job_set_run_time
-- A complete job made to have run for %(run_s)s seconds (its start moved back): cost-model data
-- of known run times.
UPDATE jobs SET started_at = finished_at - make_interval(secs => %(run_s)s)
WHERE id = %(job_id)s AND status = 'complete'
RETURNING id

-- name: conversation_transitions
-- Every event a subscriber of the conversation is sent, in seq order (pending never is sent).
SELECT seq, job_id::text AS job_id, status FROM job_events
WHERE conversation_id = %(conversation_id)s AND status <> 'pending'
ORDER BY seq

-- name: hosts_that_ran
-- The hosts whose workers completed these jobs.
SELECT DISTINCT host FROM jobs WHERE id = ANY(%(ids)s::uuid[]) AND status = 'complete'

-- name: event_log_with_keys
-- Every transition (pending left out) with its job's sort keys, in seq order, and the position
-- its message holds: the log a queue order is replayed from.
SELECT e.seq, e.job_id, e.status, e.queue_position, j.model, j.priority, j.start_tag,
       j.queue_seq, m.extra_metadata -> 'queue_position' AS message_position
FROM job_events AS e JOIN jobs AS j ON j.id = e.job_id JOIN messages AS m ON m.id = e.message_id
WHERE e.status <> 'pending'
ORDER BY e.seq

-- name: job_previews_count
-- How many previews are stored (issue 16: the latest per running job, about one per GPU).
SELECT count(*)::integer AS previews FROM job_previews

-- name: job_writers
-- Each job's status and the transaction that last wrote its row (xmin), in claim order.
SELECT id::text AS job_id, status, xmin::text AS writer FROM jobs ORDER BY started_at

-- name: gpu_locks_held
SELECT count(*)::integer AS held FROM gpu_locks

-- name: enqueue_pending
-- gq_enqueue's 'sequence' mode committed on its own: a job left pending, as a web process of the
-- release before gq_enqueue_batch (which queues its items in the same transaction) left it when
-- it died before its sequencer ran.
SELECT gq_enqueue(%(conversation_id)s, NULL, 'tiny', 'tiny', %(prompt)s, '{}'::jsonb, 0, 3, 600,
                  %(max_queued)s, 1.0, 0.0, 'sequence') AS job

-- name: messages_in
-- How many assistant messages (one a job) the conversation holds.
SELECT count(*) FROM messages WHERE conversation_id = %(conversation_id)s AND role = 'assistant'

-- name: pending_count
SELECT count(*) FROM jobs WHERE status = 'pending'

-- name: sequenced_jobs
-- Jobs with their queue keys and the events of each, in seq order.
SELECT j.id AS job_id, j.status, j.queue_seq, j.start_tag, j.finish_tag, j.queued_at,
       m.extra_metadata ->> 'status' AS message_status,
       coalesce((SELECT array_agg(e.status || ':' || e.seq ORDER BY e.seq)
                 FROM job_events AS e WHERE e.job_id = j.id), '{}') AS events
FROM jobs AS j JOIN messages AS m ON m.id = j.message_id
WHERE j.conversation_id = %(conversation_id)s
ORDER BY j.queue_seq

-- name: message_row_lock
-- The row of a job's message, locked as a metadata merge locks it.
SELECT m.id FROM messages AS m JOIN jobs AS j ON j.message_id = m.id
WHERE j.id = %(job_id)s FOR UPDATE OF m

-- name: backend_waits
-- What a backend waits for, and whether it holds the event lock (26449, 1).
SELECT a.wait_event_type,
       EXISTS (SELECT 1 FROM pg_locks AS l
               WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.classid = 26449
                 AND l.objid = 1 AND l.objsubid = 2 AND l.granted) AS holds_event_lock
FROM pg_stat_activity AS a WHERE a.pid = %(pid)s

-- name: job_row_lock
SELECT id FROM jobs WHERE id = %(job_id)s FOR UPDATE

-- name: notify_event
-- A NOTIFY on the event channel from a transaction of its own (a marker a listener waits for).
SELECT pg_notify('gq_event', %(payload)s) AS notified

-- name: explain_nested_statements
-- This session's plans from now on, each nested statement's too, sent to it as LOG notices
-- (auto_explain: a superuser's LOAD, as the tests' connections are).
LOAD 'auto_explain';
SET auto_explain.log_min_duration = 0;
SET auto_explain.log_nested_statements = on;
SET client_min_messages = log

-- name: analyze_jobs
ANALYZE jobs

-- name: clock_ms
-- The database's clock in Unix milliseconds, what a time-ordered id (gq_new_id) starts with.
SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms

-- name: queue_crowd
-- %(n)s queued jobs (with their messages) of one user in one statement: a user who holds most
-- of the queue, as a load test's seed leaves it.
WITH ids AS (
    SELECT gq_new_id() AS job_id, gq_new_id() AS message_id, nextval('job_queue_seq') AS queue_seq
    FROM generate_series(1, %(n)s)
), m AS (
    INSERT INTO messages (id, conversation_id, role, extra_metadata)
    SELECT message_id, %(conversation_id)s, 'assistant', '{}' FROM ids
)
INSERT INTO jobs (id, message_id, conversation_id, user_id, model, prompt, params, work, status,
                  priority, queue_seq, start_tag, finish_tag, estimate_s, timeout_s, queued_at)
SELECT job_id, message_id, %(conversation_id)s, %(user_id)s, 'tiny', 'crowd', '{}', 1, 'queued',
       0, queue_seq, queue_seq, queue_seq + 1, 1, 300, now()
FROM ids
