"""The queue: schema access, the job state machine, positions and ETAs, all in PostgreSQL."""
