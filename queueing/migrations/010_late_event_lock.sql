-- Enqueue off the commit path's critical section (issue 14). gq_enqueue gains p_place: whether
-- it counts the job's position itself (under the event lock, O(jobs ahead)), or leaves it to the
-- caller's queue order (queueing/queue_order.py, O(log n)). A signature change: the old one is
-- dropped here and the new one created by R__queue_functions.sql.
DROP FUNCTION IF EXISTS gq_enqueue(uuid, bigint, text, text, text, jsonb, integer, integer, integer, integer,
                                   double precision, double precision);

-- A queued event's position can now be written after its commit (by the web process whose
-- queue order placed it), so it may be NULL until then; readers of the log fill it in.
ALTER TABLE job_events ALTER COLUMN queue_position DROP NOT NULL;
