-- gq_message_json takes the place its caller already has (p_position), as gq_job_json does, so
-- a conversation's messages need not count the queue once per queued job (issue 14); the new
-- signature is created by R__api_shapes.sql.
DROP FUNCTION IF EXISTS gq_message_json(messages);
