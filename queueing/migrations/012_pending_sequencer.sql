-- Enqueue without the event lock (issue 14): the web's enqueue commits its job `pending`, with
-- no event, and a sequencer (queueing/sequencer.py, gq_sequence) moves every committed pending
-- job to `queued` in one transaction, writing their events under the event lock once a batch.
-- The sequencer finds them through this index; a user's queue limit counts them through it too.
CREATE INDEX jobs_pending_idx ON jobs (queue_seq) INCLUDE (user_id) WHERE status = 'pending';
-- A user's latest finish tag per model now includes the jobs still pending: the next job of
-- that user starts after them.
DROP INDEX jobs_user_tags_idx;
CREATE INDEX jobs_user_tags_idx ON jobs (user_id, model, finish_tag)
    WHERE status IN ('pending', 'queued', 'processing');

-- gq_enqueue's p_place (boolean) becomes p_mode (text: 'count', 'place' or 'sequence'); the new
-- signature is created by R__queue_functions.sql.
DROP FUNCTION IF EXISTS gq_enqueue(uuid, bigint, text, text, text, jsonb, integer, integer, integer,
                                   integer, double precision, double precision, boolean);
