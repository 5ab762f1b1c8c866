-- What each model needs and prefers (issue 13), as its workers report it when they register:
-- sizes must be multiples of size_multiple (8 for Stable Diffusion, 16 for PixArt and Flux),
-- and default_steps, default_guidance and default_size fill what a request leaves out (NULL:
-- the queue's own defaults). Models a worker never described keep NULLs, and the queue's rules.
ALTER TABLE models
    ADD COLUMN size_multiple integer
        CONSTRAINT models_size_multiple_in_range CHECK (size_multiple BETWEEN 1 AND 256),
    ADD COLUMN default_steps integer
        CONSTRAINT models_default_steps_in_range CHECK (default_steps BETWEEN 1 AND 150),
    ADD COLUMN default_guidance double precision
        CONSTRAINT models_default_guidance_in_range CHECK (default_guidance BETWEEN 0 AND 30),
    ADD COLUMN default_size integer
        CONSTRAINT models_default_size_in_range CHECK (default_size BETWEEN 64 AND 2048);
