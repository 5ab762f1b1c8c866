-- The gpu family's reads (bench/gpu.py).

-- name: handoff_gaps
-- The GPU's hand-offs within a tagged batch, one row per job after the first: its claim
-- (started_at, the claim's transaction time) after the previous job's completion (updated_at,
-- the complete's clock_timestamp()). What the worker does outside those two statements (the
-- PNG, the next call's set-up) is in the family's other idle figure.
SELECT gap_s FROM (
    SELECT extract(epoch FROM started_at - lag(updated_at) OVER (ORDER BY started_at))::float8
               AS gap_s
    FROM jobs WHERE prompt = %(prompt)s AND status = 'complete'
) AS gaps
WHERE gap_s IS NOT NULL
