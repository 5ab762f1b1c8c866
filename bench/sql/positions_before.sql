-- The fan-out's position pass as it was before the web process kept the queue order in memory
-- (queueing.positions.positions_in_subscriptions, removed from the product by issue 14): the
-- baseline "before" of the positions and scaling families. Not a ceiling: it ranks the whole
-- queue once per pass, whatever few jobs are followed.

-- name: position_pass_before
-- The queued jobs that WebSocket subscriptions follow (those of some conversations, and some
-- jobs by id) with their live positions within their model and the work ahead of them, from one
-- ranking of the queue; the ids are matched as hashed sets. at_seq is the newest event the
-- snapshot reflects.
SELECT q.job_id, q.model, q.queue_position::integer AS queue_position, q.work_ahead, q.start_tag,
       (SELECT coalesce(max(seq), 0) FROM job_events) AS at_seq
FROM (SELECT id AS job_id, conversation_id, model, start_tag,
             row_number() OVER place AS queue_position,
             sum(work) OVER place - work AS work_ahead
      FROM jobs WHERE status = 'queued'
      WINDOW place AS (PARTITION BY model ORDER BY priority DESC, start_tag, queue_seq
                       ROWS UNBOUNDED PRECEDING)) AS q
WHERE q.conversation_id IN (SELECT unnest(%(conversation_ids)s::uuid[]))
   OR q.job_id IN (SELECT unnest(%(job_ids)s::uuid[]))
