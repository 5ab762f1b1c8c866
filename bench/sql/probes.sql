-- Diagnostics sampled while a figure runs: they say where the time went. Not timed.

-- name: wait_sample
-- What each of the figure's connections is doing right now: running, or waiting on what
-- (Lock/advisory with the lock it waits for, by the keys of R__queue_functions.sql: the event
-- lock (26449, 1), a user's lock (26451), a GPU's (26450); Lock/object: NOTIFY's commit lock;
-- IO/WALSync or IO/WALWrite: the commit's flush).
SELECT CASE WHEN a.state = 'idle' THEN 'idle (client side)'
            WHEN a.wait_event_type IS NULL THEN 'running'
            WHEN a.wait_event_type = 'Lock' AND a.wait_event = 'advisory' THEN
                'Lock/advisory' || coalesce(
                    (SELECT CASE l.classid WHEN 26449 THEN ' (event lock)'
                                           WHEN 26451 THEN ' (user lock)'
                                           WHEN 26450 THEN ' (GPU lock)'
                                           ELSE ' ' || l.classid::text END
                     FROM pg_locks AS l
                     WHERE l.pid = a.pid AND l.locktype = 'advisory' AND NOT l.granted
                     LIMIT 1), '')
            ELSE a.wait_event_type || '/' || a.wait_event END AS activity
FROM pg_stat_activity AS a
WHERE a.datname = current_database() AND a.backend_type = 'client backend'
  AND a.application_name = %(application_name)s AND a.pid <> pg_backend_pid()
