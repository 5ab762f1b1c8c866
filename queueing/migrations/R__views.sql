-- Repeatable (see R__queue_functions.sql): the views, each defined here only. CREATE OR REPLACE
-- VIEW may only append columns; anything else is a DROP VIEW in a numbered migration (which also
-- frees the columns a view reads for ALTER TABLE), and the view comes back from here.
-- queue_positions, queue_overview and gpu_locks are operator views: read them from psql.

-- Workers whose database session is alive right now: the database's own knowledge, no lease.
CREATE OR REPLACE VIEW live_workers AS
    SELECT w.*
    FROM workers AS w
    JOIN pg_stat_activity AS a ON a.pid = w.session_pid AND a.backend_start = w.session_start
    WHERE w.stopped_at IS NULL;

-- Positions are per model, in claim order (priority, then fair-share start tag, then arrival).
CREATE OR REPLACE VIEW queue_positions AS
    SELECT model, row_number() OVER place AS queue_position,
           id AS job_id, user_id, conversation_id, priority, attempts, max_attempts,
           left(prompt, 60) AS prompt, queued_at, run_after, now() - queued_at AS waiting,
           start_tag, estimate_s, sum(work) OVER place - work AS work_ahead
    FROM jobs WHERE status = 'queued'
    WINDOW place AS (PARTITION BY model ORDER BY priority DESC, start_tag, queue_seq
                     ROWS UNBOUNDED PRECEDING);

CREATE OR REPLACE VIEW queue_overview AS
    SELECT s.status, count(j.id) AS jobs,
           now() - min(j.queued_at) FILTER (WHERE s.status = 'queued') AS oldest_queued_age
    FROM unnest(gq_job_statuses()) WITH ORDINALITY AS s(status, ord)
    LEFT JOIN jobs AS j ON j.status = s.status
    GROUP BY s.status, s.ord ORDER BY s.ord;

CREATE OR REPLACE VIEW gpu_locks AS
    SELECT w.host, w.device, gq_gpu_lock_name(w.host, w.device) AS gpu_lock, w.id AS worker_id,
           w.hostname, w.pid, l.pid AS session_pid, j.id AS job_id, now() - j.started_at AS held_for
    FROM pg_locks AS l
    JOIN live_workers AS w ON w.session_pid = l.pid
    LEFT JOIN jobs AS j ON j.worker_id = w.id AND j.status = 'processing'
    WHERE l.locktype = 'advisory' AND l.classid = 26450 AND l.objsubid = 2 AND l.granted
      AND l.objid = (hashtext(gq_gpu_lock_name(w.host, w.device))::bigint & 4294967295)::oid;
