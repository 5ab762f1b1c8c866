-- Signed image links (contract: Images): every web server on this database signs and checks
-- image URLs with one secret. Without GPUQUEUE_IMAGE_SECRET the first server to start stores a
-- random one here and all the others read it.
CREATE TABLE web_secrets (
    name       text PRIMARY KEY,
    secret     bytea NOT NULL CHECK (length(secret) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
