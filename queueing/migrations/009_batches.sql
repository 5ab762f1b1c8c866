-- Batches (issue 13; contract: Batching). A worker started with --max-batch N claims the head of
-- its model's queue and up to N-1 compatible jobs as one pipeline call. Each member is still a
-- job of its own (its own claim_id, events and end); these columns only say which call it was
-- started in: the batch's id and how many jobs it held, both NULL for a job started alone (or
-- queued, or finished before batches existed). A claim writes them afresh at every start.
ALTER TABLE jobs
    ADD COLUMN batch_id uuid,
    ADD COLUMN batch_size integer,
    ADD CONSTRAINT jobs_batch_id_and_size_together CHECK ((batch_id IS NULL) = (batch_size IS NULL)),
    ADD CONSTRAINT jobs_batch_size_in_range CHECK (batch_size BETWEEN 2 AND 64);

-- The cost model reads a batched job's share of its call (run time / batch_size): the column
-- joins the index its samples are read from, so that read stays index-only.
DROP INDEX jobs_cost_samples_idx;
CREATE INDEX jobs_cost_samples_idx ON jobs (model, host, finished_at DESC)
    INCLUDE (started_at, work, batch_size) WHERE status = 'complete' AND estimate_s > 0;
