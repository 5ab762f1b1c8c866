-- Conversations: a title from the first prompt, and deleting one with everything in it
-- (contract: Conversations and the page).

-- The title a conversation created without one takes from its first prompt: the prompt on one
-- line, cut to 60 characters (an ellipsis marks the cut).
CREATE OR REPLACE FUNCTION gq_title_of_prompt(p_prompt text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN length(t) <= 60 THEN t ELSE rtrim(left(t, 59)) || '…' END
    FROM (SELECT btrim(regexp_replace(p_prompt, '\s+', ' ', 'g')) AS t) AS one_line
$$;

-- A job's insert titles its conversation when it has no title yet, in the enqueue's own
-- transaction, so a reload never shows a conversation with jobs and no title. The row is only
-- locked the once it is untitled: a titled conversation is not a candidate of the UPDATE.
CREATE OR REPLACE FUNCTION gq_title_untitled_conversation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE conversations SET title = gq_title_of_prompt(NEW.prompt)
    WHERE id = NEW.conversation_id AND title = '';
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER jobs_title_conversation AFTER INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION gq_title_untitled_conversation();

-- The first half of a delete: every pending, queued or processing job of the conversation ends
-- canceled, each with its event (so subscribers learn it through the event stream like any
-- cancel), and a running job's worker is told at once (gq_cancel): its own end of the job is
-- then fenced (the job is no longer processing) and only releases its GPU lock. Returns each
-- canceled job with the seq of its event; GQ404 when the actor may not see the conversation.
-- The rows stay until gq_delete_conversation, so the fan-out can read the events.
CREATE OR REPLACE FUNCTION gq_cancel_conversation(p_conversation_id uuid, p_owner bigint)
RETURNS TABLE (job_id uuid, seq bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
    v_was text;
BEGIN
    PERFORM 1 FROM conversations
    WHERE id = p_conversation_id AND (p_owner IS NULL OR user_id = p_owner);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'conversation % not found', p_conversation_id USING ERRCODE = 'GQ404';
    END IF;
    -- Every active job locked first, in id order, before the event lock is taken: a worker
    -- ending one of them takes its row, then the event lock, so the two never wait in a circle.
    PERFORM 1 FROM jobs
    WHERE conversation_id = p_conversation_id AND status IN ('pending', 'queued', 'processing')
    ORDER BY id FOR UPDATE;
    FOR v_job IN
        SELECT * FROM jobs
        WHERE conversation_id = p_conversation_id AND status IN ('pending', 'queued', 'processing')
        ORDER BY id FOR UPDATE
    LOOP
        IF v_job.status = 'pending' THEN  -- queued first, as all are (gq_cancel)
            PERFORM gq_sequence_pending();
            SELECT * INTO v_job FROM jobs WHERE id = v_job.id;
        END IF;
        CONTINUE WHEN v_job.status NOT IN ('queued', 'processing');
        v_was := v_job.status;
        UPDATE jobs SET status = 'canceled', finished_at = now()
        WHERE id = v_job.id RETURNING * INTO v_job;
        job_id := v_job.id;
        seq := gq_record_transition(v_job, 0, '{"reason": "conversation deleted"}');
        IF v_was = 'processing' THEN
            PERFORM pg_notify('gq_cancel', v_job.id::text);
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- The second half: the conversation goes, and with it (ON DELETE CASCADE) its messages, jobs,
-- their events and images. A job that became active since the first half (an enqueue that
-- raced the delete) is removed too, its worker told to stop; that worker's end is fenced
-- because the row is gone. The jobs are locked first, in id order, as the first half does, so
-- a worker ending one of them finishes before its row is removed. False when the actor may
-- not see the conversation (or it is gone already).
CREATE OR REPLACE FUNCTION gq_delete_conversation(p_conversation_id uuid, p_owner bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_job_id uuid;
BEGIN
    PERFORM 1 FROM conversations
    WHERE id = p_conversation_id AND (p_owner IS NULL OR user_id = p_owner);
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    FOR v_job_id IN
        SELECT id FROM jobs WHERE conversation_id = p_conversation_id ORDER BY id FOR UPDATE
    LOOP
        PERFORM pg_notify('gq_cancel', v_job_id::text)
        FROM jobs WHERE id = v_job_id AND status = 'processing';
    END LOOP;
    DELETE FROM conversations WHERE id = p_conversation_id;
    -- Its jobs' events go with it, so a web process that has not read them yet learns here
    -- that those jobs left the queue (web/live/placing.py).
    PERFORM pg_notify('gq_conversation_deleted', p_conversation_id::text);
    RETURN true;
END
$$;
