-- The deep merge as 002 wrote it (a jsonb_set on the whole object per nested key), kept here
-- only as the "before" of the merge figures: measured in the same run, beside the one-pass merge.

-- name: merge_old_function
CREATE OR REPLACE FUNCTION gq_bench_deep_merge_002(base jsonb, patch jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    k text;
    v jsonb;
    merged jsonb;
BEGIN
    IF patch IS NULL THEN
        RETURN base;
    END IF;
    IF base IS NULL OR jsonb_typeof(base) <> 'object' OR jsonb_typeof(patch) <> 'object' THEN
        RETURN patch;
    END IF;
    merged := base || patch;
    FOR k, v IN
        SELECT e.key, e.value FROM jsonb_each(patch) AS e
        WHERE jsonb_typeof(e.value) = 'object' AND jsonb_typeof(base -> e.key) = 'object'
    LOOP
        merged := jsonb_set(merged, ARRAY[k], gq_bench_deep_merge_002(base -> k, v));
    END LOOP;
    RETURN merged;
END
$$

-- name: merge_pair
-- The pair to merge, stored once (the base TOASTed, as a message's metadata is): the figures
-- time the merge, not the transfer of 200 KB of parameters.
CREATE TEMP TABLE IF NOT EXISTS merge_pair (base jsonb, patch jsonb)

-- name: merge_pair_set
WITH gone AS (DELETE FROM merge_pair)
INSERT INTO merge_pair VALUES (%(base)s, %(patch)s)

-- name: merge_old
SELECT gq_bench_deep_merge_002(base, patch) IS NOT NULL AS merged FROM merge_pair

-- name: merge_new
SELECT gq_jsonb_deep_merge(base, patch) IS NOT NULL AS merged FROM merge_pair
