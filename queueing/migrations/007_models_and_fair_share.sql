-- Models, fair share and the cost model (issue 12; contract: Models, Fair share, ETA).
-- Tables and data only: the functions and views that read these columns are in the R__ files.
--
-- Claim order within a model is (priority DESC, start_tag, queue_seq): start-time fair queuing.
-- A job's start tag is max(its model's virtual time, the finish tag of its user's latest queued
-- or running job of that model), fixed at enqueue; its finish tag is start + estimate_s / the
-- user's weight; a claim advances the model's virtual time to the claimed job's start tag.
-- Because tags never change while a job waits (a move to the front swaps whole slots within
-- one user's jobs), a position is still one range count over jobs_queued_idx.

-- Every model a worker has ever registered, and the default one once a job named it: the
-- models a request may name. virtual_time is the model's SFQ clock.
CREATE TABLE models (
    name          text PRIMARY KEY CONSTRAINT models_name_length CHECK (length(name) BETWEEN 1 AND 200),
    virtual_time  double precision NOT NULL DEFAULT 0,
    registered_at timestamptz NOT NULL DEFAULT now()
);

-- Workers and jobs before models served one anonymous model, the built-in one, named tiny.
UPDATE workers SET model = 'tiny' WHERE model IS NULL;
ALTER TABLE workers ALTER COLUMN model SET NOT NULL;
ALTER TABLE workers ADD CONSTRAINT workers_model_length CHECK (length(model) BETWEEN 1 AND 200);
INSERT INTO models (name) SELECT DISTINCT model FROM workers;
INSERT INTO models (name) SELECT 'tiny' WHERE EXISTS (SELECT 1 FROM jobs)
ON CONFLICT (name) DO NOTHING;

-- A user's share of the GPUs, relative to others' (gpuqueue user weight NAME W).
ALTER TABLE users ADD COLUMN weight double precision NOT NULL DEFAULT 1
    CONSTRAINT users_weight_in_range CHECK (weight > 0 AND weight <= 1000);

-- A job's size for the cost model, megapixel-steps: the backfill below needs it before the
-- repeatable files are applied; R__queue_functions.sql holds its definition from now on.
CREATE FUNCTION gq_job_work(p_params jsonb) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce((p_params ->> 'steps')::double precision, 0)
         * coalesce((p_params ->> 'width')::double precision, 0)
         * coalesce((p_params ->> 'height')::double precision, 0) / 1e6
$$;

-- The columns are added with constant defaults (no table rewrite), which then go: every new job
-- names its model, its tags, its work and its estimate. Jobs queued before keep queue order
-- (tags 0). work: the job's size (gq_job_work of its params), the cost model's variable, filled
-- in for the jobs still to run (finished ones keep 0 and estimate_s 0, so the cost model
-- leaves them out);
-- estimate_s: its expected run time when it was queued, which its tags were cut from.
ALTER TABLE jobs
    ADD COLUMN model text NOT NULL DEFAULT 'tiny',
    ADD COLUMN start_tag double precision NOT NULL DEFAULT 0,
    ADD COLUMN finish_tag double precision NOT NULL DEFAULT 0,
    ADD COLUMN work double precision NOT NULL DEFAULT 0,
    ADD COLUMN estimate_s double precision NOT NULL DEFAULT 0;
ALTER TABLE jobs
    ALTER COLUMN model DROP DEFAULT,
    ALTER COLUMN start_tag DROP DEFAULT,
    ALTER COLUMN finish_tag DROP DEFAULT,
    ALTER COLUMN work DROP DEFAULT,
    ALTER COLUMN estimate_s DROP DEFAULT,
    ADD CONSTRAINT jobs_finish_tag_after_start CHECK (finish_tag >= start_tag),
    ADD CONSTRAINT jobs_work_not_negative CHECK (work >= 0),
    ADD CONSTRAINT jobs_estimate_not_negative CHECK (estimate_s >= 0);
UPDATE jobs SET work = gq_job_work(params) WHERE status IN ('pending', 'queued', 'processing');
ALTER TABLE job_events ADD COLUMN model text NOT NULL DEFAULT 'tiny';
ALTER TABLE job_events ALTER COLUMN model DROP DEFAULT;

-- The queue's one index, now per model in fair-share order; work is included so the work ahead
-- of a job (its ETA) is summed in the same index-only pass that counts its position, and the
-- conversation so the fan-out's ranking of every followed job never reads the table.
DROP INDEX jobs_queued_idx;
CREATE INDEX jobs_queued_idx ON jobs (model, priority DESC, start_tag, queue_seq)
    INCLUDE (id, work, conversation_id) WHERE status = 'queued';
-- A user's latest finish tag per model: one backward step of this index at enqueue.
CREATE INDEX jobs_user_tags_idx ON jobs (user_id, model, finish_tag)
    WHERE status IN ('queued', 'processing');
-- The cost model's samples: the latest complete jobs per model and host, of those queued since
-- (estimate_s > 0: a job finished before has no work recorded).
DROP INDEX jobs_recent_complete_idx;
CREATE INDEX jobs_cost_samples_idx ON jobs (model, host, finished_at DESC)
    INCLUDE (started_at, work) WHERE status = 'complete' AND estimate_s > 0;

-- Signatures that change; R__queue_functions.sql and R__api_shapes.sql define the new ones, and
-- R__views.sql the view (its positions are now per model, a column it did not have).
DROP VIEW IF EXISTS queue_positions;
DROP FUNCTION gq_job_json(jobs, integer);
DROP FUNCTION gq_queue_position(integer, bigint);
DROP FUNCTION gq_enqueue(uuid, bigint, text, jsonb, integer, integer, integer, integer);
