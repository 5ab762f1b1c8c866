-- The ETA family's bookkeeping (bench/eta.py): what happened to the jobs, read after the run.
-- Nothing here is timed.

-- name: eta_history
-- Every job of the run, with its times on the database's clock as epoch seconds: when it was
-- queued, when a worker claimed it, when it finished. The measured jobs' predictions are
-- checked against started_s, and the Gradio-style baseline is rebuilt from the run times of
-- the jobs that had finished at each submit.
SELECT id AS job_id, model, user_id, prompt, work, status, attempts, start_tag, finish_tag,
       estimate_s,
       extract(epoch FROM queued_at)::float8 AS queued_s,
       extract(epoch FROM started_at)::float8 AS started_s,
       extract(epoch FROM finished_at)::float8 AS finished_s
FROM jobs WHERE model = ANY(%(models)s::text[])
ORDER BY queued_at

-- name: eta_mean_run
-- The mean run time of a tagged batch's jobs per model: what paces the submissions.
SELECT model, avg(extract(epoch FROM finished_at - started_at))::float8 AS mean_run_s,
       count(*)::integer AS jobs
FROM jobs WHERE prompt = %(prompt)s AND status = 'complete'
GROUP BY model
