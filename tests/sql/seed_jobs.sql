-- Bulk rows for scale tests and benchmarks: %(n)s jobs (with their messages) in one status,
-- written directly (no events), in queue order after every job already there.
WITH m AS (
    INSERT INTO messages (conversation_id, role, extra_metadata)
    SELECT %(conversation_id)s, 'assistant', '{}' FROM generate_series(1, %(n)s)
    RETURNING id
)
INSERT INTO jobs (message_id, conversation_id, user_id, prompt, params, status, priority, queue_seq,
                  attempts, timeout_s, queued_at, started_at, finished_at, claim_id)
SELECT m.id, %(conversation_id)s, %(user_id)s, 'seeded', '{}', %(status)s, 0,
       nextval('job_queue_seq'),
       CASE WHEN %(status)s = 'queued' THEN 0 ELSE 1 END, 60, now(),
       CASE WHEN %(status)s = 'queued' THEN NULL ELSE now() - interval '2 seconds' END,
       CASE WHEN %(status)s IN ('complete', 'error', 'canceled') THEN now() END,
       CASE WHEN %(status)s = 'queued' THEN NULL ELSE 0 END
FROM m
