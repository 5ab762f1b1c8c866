-- gpuqueue schema: users and tokens, conversations and messages, jobs, their events and images.
-- Every invariant SQL can hold lives here, so the database refuses an impossible row.

CREATE TABLE users (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    is_admin    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Tokens are stored as SHA-256 digests only; the clear token is shown once, at creation.
CREATE TABLE api_tokens (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users ON DELETE CASCADE,
    token_hash  bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX api_tokens_user_idx ON api_tokens (user_id);

CREATE TABLE conversations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     bigint NOT NULL REFERENCES users ON DELETE CASCADE,
    title       text NOT NULL DEFAULT '' CHECK (length(title) <= 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversations_user_idx ON conversations (user_id, created_at DESC);

CREATE TABLE messages (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id uuid NOT NULL REFERENCES conversations ON DELETE CASCADE,
    role            text NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content         text NOT NULL DEFAULT '',
    extra_metadata  jsonb NOT NULL DEFAULT '{}'
                    CHECK (jsonb_typeof(extra_metadata) = 'object')
                    CHECK (pg_column_size(extra_metadata) <= 262144),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_conversation_idx ON messages (conversation_id, created_at);

-- Every UPDATE stamps updated_at, whoever writes it (R7.4).
CREATE FUNCTION gq_touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END
$$;
CREATE TRIGGER messages_touch BEFORE UPDATE ON messages
    FOR EACH ROW EXECUTE FUNCTION gq_touch_updated_at();

-- A worker is one process bound to one device, known by the database session that holds its
-- GPU lock. It is alive exactly while that session is (see live_workers).
CREATE TABLE workers (
    id            uuid PRIMARY KEY,
    device        text NOT NULL CHECK (length(device) BETWEEN 1 AND 100),
    backend       text NOT NULL,
    model         text,
    hostname      text NOT NULL,
    pid           integer NOT NULL,
    session_pid   integer NOT NULL,
    session_start timestamptz NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    stopped_at    timestamptz
);

CREATE SEQUENCE job_claim_seq;

CREATE TABLE jobs (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    message_id       uuid NOT NULL UNIQUE REFERENCES messages ON DELETE CASCADE,
    conversation_id  uuid NOT NULL REFERENCES conversations ON DELETE CASCADE,
    user_id          bigint NOT NULL REFERENCES users ON DELETE CASCADE,
    prompt           text NOT NULL CHECK (length(prompt) BETWEEN 1 AND 2000),
    params           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(params) = 'object'),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'queued', 'processing', 'complete', 'error', 'canceled')),
    priority         integer NOT NULL DEFAULT 0,
    -- First come, first served: taken under the enqueue lock, so its order is commit order.
    queue_seq        bigint NOT NULL,
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     integer NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 10),
    timeout_s        integer NOT NULL CHECK (timeout_s BETWEEN 1 AND 3600),
    run_after        timestamptz NOT NULL DEFAULT now(),
    -- Fencing: a claim gets a fresh claim_id; complete/fail/progress must present it.
    claim_id         bigint,
    worker_id        uuid REFERENCES workers ON DELETE SET NULL,
    device           text,
    cancel_requested boolean NOT NULL DEFAULT false,
    error            text CHECK (length(error) <= 4000),
    progress         jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    queued_at        timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((status IN ('complete', 'error', 'canceled')) = (finished_at IS NOT NULL)),
    CHECK (status <> 'processing' OR (claim_id IS NOT NULL AND started_at IS NOT NULL)),
    CHECK (status <> 'error' OR error IS NOT NULL),
    CHECK (status = 'pending' OR queued_at IS NOT NULL),
    CHECK (attempts <= max_attempts)
) WITH (
    -- A queue table churns: vacuum it early so index-only position counts stay index-only.
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 500,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0,
    fillfactor = 80
);

-- The one index of the queue: claim order, and the position count, both read it.
CREATE INDEX jobs_queued_idx ON jobs (priority DESC, queue_seq) INCLUDE (id) WHERE status = 'queued';
CREATE INDEX jobs_processing_idx ON jobs (worker_id) WHERE status = 'processing';
CREATE INDEX jobs_conversation_idx ON jobs (conversation_id, created_at);
CREATE INDEX jobs_user_queued_idx ON jobs (user_id) WHERE status = 'queued';
CREATE INDEX jobs_recent_complete_idx ON jobs (finished_at DESC) WHERE status = 'complete';

CREATE TRIGGER jobs_touch BEFORE UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION gq_touch_updated_at();

-- One row per transition; seq is the WebSocket seq. Rows are written under the event lock
-- (gq_event_lock), so seq order is commit order and a reader that follows seq misses nothing.
CREATE TABLE job_events (
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id          uuid NOT NULL REFERENCES jobs ON DELETE CASCADE,
    message_id      uuid NOT NULL,
    conversation_id uuid NOT NULL,
    status          text NOT NULL
                    CHECK (status IN ('pending', 'queued', 'processing', 'complete', 'error', 'canceled')),
    queue_position  integer NOT NULL DEFAULT 0 CHECK (queue_position >= 0),
    at              timestamptz NOT NULL,
    detail          jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX job_events_job_idx ON job_events (job_id, seq);
CREATE INDEX job_events_conversation_idx ON job_events (conversation_id, seq);

CREATE TABLE job_images (
    job_id      uuid PRIMARY KEY REFERENCES jobs ON DELETE CASCADE,
    png         bytea NOT NULL CHECK (substring(png FROM 1 FOR 8) = '\x89504e470d0a1a0a'::bytea),
    created_at  timestamptz NOT NULL DEFAULT now()
);
