-- A web process's concurrent enqueues in one statement and one commit (issue 14):
-- gq_enqueue_batch (R__queue_functions.sql) queues them in the transaction that inserts them,
-- so no web process commits a job pending any more and gq_sequence, which queued those
-- afterwards, goes. A pending job a web process of the release before left (its process died
-- first) is still queued by the sweep (queueing/sequencer.py) and before a cancel or a delete.
DROP FUNCTION IF EXISTS gq_sequence(uuid[]);
-- gq_sequence_pending takes the jobs gq_enqueue_batch queued itself (p_queued).
DROP FUNCTION IF EXISTS gq_sequence_pending();
