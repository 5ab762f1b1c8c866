-- A GPU is named by its host and its device (contract: Hosts and GPU locks). Workers on different
-- hosts with the same device string (cuda:0 everywhere) hold different GPU locks; two workers with
-- the same host and device share one.
--
-- Advisory lock key of a GPU (replaces 002's (26450, hashtext(device))):
--   (26450, hashtext(gq_gpu_lock_name(host, device)))   session level, held while a job runs
-- The release parameter of gq_complete, gq_fail, gq_finish_canceled and gq_requeue
-- (p_release_device) takes that lock name.

-- The host a worker runs on: --host-id / GPUQUEUE_HOST_ID, by default the hostname. Old rows
-- take their hostname, which is what the host defaulted to. A host never holds '/', so the lock
-- name host/device reads back unambiguously (the device may hold anything).
ALTER TABLE workers ADD COLUMN host text;
UPDATE workers SET host = hostname;
ALTER TABLE workers ALTER COLUMN host SET NOT NULL;
ALTER TABLE workers ADD CONSTRAINT workers_host_check
    CHECK (length(host) BETWEEN 1 AND 200 AND strpos(host, '/') = 0);

-- The host of the GPU a job runs or ran on, recorded at claim beside jobs.device. Old jobs ran
-- when the lock knew no host: their worker's host where that row is still there, else NULL.
ALTER TABLE jobs ADD COLUMN host text;
UPDATE jobs AS j SET host = w.host FROM workers AS w WHERE w.id = j.worker_id AND j.device IS NOT NULL;

-- The one definition of a GPU lock's name; its key is (26450, hashtext(name)).
CREATE FUNCTION gq_gpu_lock_name(p_host text, p_device text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_host || '/' || p_device
$$;

-- Takes the GPU lock of the worker's (host, device) if it is free, then claims the next runnable
-- job: highest priority, then first come. Never waits: a worker that finds the GPU busy gets no
-- row and waits outside any statement (so it holds no snapshot, and vacuum is never held back)
-- for a wake-up: an event, the gq_gpu NOTIFY of a release, or its poll interval. With nothing to
-- run the lock is released again, so the GPU lock is held exactly while a job is processing.
-- The GPU is the one its worker registered: host and device are read from the workers row.
CREATE FUNCTION gq_lock_and_claim(p_worker_id uuid) RETURNS SETOF jobs
LANGUAGE plpgsql AS $$
DECLARE
    v_host text;
    v_device text;
    v_key integer;
    v_job jobs;
    v_started timestamptz;
BEGIN
    SELECT host, device INTO v_host, v_device FROM workers WHERE id = p_worker_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'worker % is not registered', p_worker_id USING ERRCODE = 'GQ404';
    END IF;
    v_key := hashtext(gq_gpu_lock_name(v_host, v_device));
    IF NOT pg_try_advisory_lock(26450, v_key) THEN
        RETURN;
    END IF;
    v_started := clock_timestamp();
    UPDATE jobs AS j
    SET status = 'processing', attempts = j.attempts + 1, claim_id = nextval('job_claim_seq'),
        worker_id = p_worker_id, host = v_host, device = v_device, started_at = v_started,
        progress = NULL
    FROM (SELECT id FROM jobs
          WHERE status = 'queued' AND run_after <= v_started
          ORDER BY priority DESC, queue_seq
          LIMIT 1 FOR UPDATE SKIP LOCKED) AS next
    WHERE j.id = next.id
    RETURNING j.* INTO v_job;
    IF NOT FOUND THEN
        PERFORM pg_advisory_unlock(26450, v_key);
        RETURN;
    END IF;
    PERFORM gq_record_transition(v_job, 0, '{}', v_started);
    RETURN NEXT v_job;
END
$$;
DROP FUNCTION gq_lock_and_claim(uuid, text);

-- Releases a GPU lock by name and wakes the workers waiting for that GPU (NOTIFY gq_gpu, payload
-- the lock name). The worker calls it when a claim raised: session locks survive the rollback.
DROP FUNCTION gq_release_gpu(text);
CREATE FUNCTION gq_release_gpu(p_gpu_lock text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_released boolean := pg_advisory_unlock(26450, hashtext(p_gpu_lock));
BEGIN
    IF v_released THEN
        PERFORM pg_notify('gq_gpu', p_gpu_lock);
    END IF;
    RETURN v_released;
END
$$;

-- The host is appended (a replaced view may only add columns at the end).
CREATE OR REPLACE VIEW live_workers AS
    SELECT w.*
    FROM workers AS w
    JOIN pg_stat_activity AS a ON a.pid = w.session_pid AND a.backend_start = w.session_start
    WHERE w.stopped_at IS NULL;

DROP VIEW gpu_locks;
CREATE VIEW gpu_locks AS
    SELECT w.host, w.device, gq_gpu_lock_name(w.host, w.device) AS gpu_lock, w.id AS worker_id,
           w.hostname, w.pid, l.pid AS session_pid, j.id AS job_id, now() - j.started_at AS held_for
    FROM pg_locks AS l
    JOIN live_workers AS w ON w.session_pid = l.pid
    LEFT JOIN jobs AS j ON j.worker_id = w.id AND j.status = 'processing'
    WHERE l.locktype = 'advisory' AND l.classid = 26450 AND l.objsubid = 2 AND l.granted
      AND l.objid = (hashtext(gq_gpu_lock_name(w.host, w.device))::bigint & 4294967295)::oid;
