-- The scaling family's own reads and bookkeeping (bench/scaling.py).

-- name: cancel_queued_prompt
-- Takes the jobs a load round added out of the queue again, so every round runs at its size
-- (bookkeeping, not a transition: no events; a web process started later never sees them).
UPDATE jobs SET status = 'canceled', finished_at = now()
WHERE status = 'queued' AND prompt = %(prompt)s

-- name: checkpoint
-- After a take-out: the round's dirty pages are written now, not during the next round.
CHECKPOINT

-- name: conversation_list_ceiling
-- A conversation's jobs with their positions in plain SQL: the rows in queue_seq order, the
-- queued ones ranked by one row_number() pass over their model's queue (there is no cheaper way
-- to a rank in SQL without a materialised order).
SELECT j.id AS job_id, j.status, j.prompt, j.params, j.queued_at, q.queue_position
FROM jobs AS j
LEFT JOIN (SELECT id, row_number() OVER (PARTITION BY model
                                         ORDER BY priority DESC, start_tag, queue_seq)
                      AS queue_position
           FROM jobs WHERE status = 'queued') AS q ON q.id = j.id
WHERE j.conversation_id = %(conversation_id)s
ORDER BY j.queue_seq

-- name: conversation_rows
-- The same rows without positions: what any listing must read.
SELECT id AS job_id, status, prompt, params, queued_at FROM jobs
WHERE conversation_id = %(conversation_id)s
ORDER BY queue_seq
