-- Diagnostics sampled while a figure runs: they say where the time went. Not timed.

-- name: wait_sample
-- What each of the figure's connections is doing right now: running, or waiting on what
-- (Lock/advisory: the event or GPU lock; IO/WALSync or IO/WALWrite: the commit's flush).
SELECT CASE WHEN state = 'idle' THEN 'idle (client side)'
            WHEN wait_event_type IS NULL THEN 'running'
            ELSE wait_event_type || '/' || wait_event END AS activity
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND application_name = %(application_name)s AND pid <> pg_backend_pid()
