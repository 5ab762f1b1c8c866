-- Previews (issue 16 item 9): the latest small image (PNG or JPEG, at most 128 px a side) of a
-- running job, projected from its latents every few steps, so the page can draw it on the job's
-- card. One row per job, the latest only, written in the transaction of a progress report and
-- named by the claim and step it belongs to: the fan-out sends a preview only when it is of the
-- step the job reports now, so a preview is sent once, and never one of an earlier attempt.
-- Rows of jobs that are no longer running are removed by the next preview stored
-- (job_preview_store), so the table holds about one row per GPU.
CREATE TABLE job_previews (
    job_id      uuid PRIMARY KEY REFERENCES jobs ON DELETE CASCADE,
    claim_id    bigint NOT NULL,
    step        integer NOT NULL,
    image       bytea NOT NULL,
    CONSTRAINT job_previews_image_is_png_or_jpeg CHECK (
        substring(image FROM 1 FOR 8) = '\x89504e470d0a1a0a'::bytea
        OR substring(image FROM 1 FOR 3) = '\xffd8ff'::bytea),
    CONSTRAINT job_previews_image_is_small CHECK (octet_length(image) <= 65536)
);
