-- New jobs and messages get time-ordered ids (issue 14): UUIDv7 (RFC 9562), 48 bits of Unix
-- milliseconds, then the version, the variant and 74 random bits, instead of random (v4) ones.
-- A random key lands on a random leaf of its B-tree, so every enqueue wrote to three random
-- leaves (the jobs' and the messages' primary keys, the events' (job_id, seq) index), and the
-- first write to a page after each checkpoint puts the whole page in the WAL: on a table of
-- 1,000,000 jobs about two such images and 14-18 KB of WAL a job, more as the tables grew, and
-- the sequencer's batches wait for that WAL to be flushed. A time-ordered key lands on the
-- right edge of each index, next to the last one. The ids stay unguessable enough for what they
-- are (every read is checked against its owner) and say no more than created_at says already.
-- The column defaults need the function now; its definition is R__queue_functions.sql's, which
-- the same migration run applies right after the numbered files.
CREATE FUNCTION gq_new_id() RETURNS uuid LANGUAGE sql VOLATILE AS 'SELECT gen_random_uuid()';

ALTER TABLE jobs ALTER COLUMN id SET DEFAULT gq_new_id();
ALTER TABLE messages ALTER COLUMN id SET DEFAULT gq_new_id();
