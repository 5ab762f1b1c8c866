"""The bounds of what a user may send, and a job's parameter defaults, written once.

The web edge checks requests (and the configured defaults, at start-up) against them; the
worker reads a job's params back with the same defaults; the merged metadata's size is checked
in the database under the row lock. The schema's CHECKs hold the bounds the database must keep
(prompt length, max_attempts, timeout_s).
"""

from __future__ import annotations

PROMPT_CHARS = 2000
SIDE = (64, 2048)  # width and height, each a multiple of SIDE_MULTIPLE
SIDE_MULTIPLE = 8
STEPS = (1, 150)
DEFAULT_STEPS = 20
GUIDANCE_SCALE = (0.0, 30.0)
DEFAULT_GUIDANCE_SCALE = 7.5
SEED_MAX = 2**32 - 1
PRIORITY = (-1000, 1000)
MAX_ATTEMPTS = (1, 10)
TIMEOUT_S = (1, 3600)
MODEL_NAME_CHARS = 200  # models_name_length
# A message's metadata (contract: Input limits): the merged object as compact UTF-8 JSON; one
# PATCH's levels of nesting (the top object is level 1) and its keys, counted at every depth.
METADATA_BYTES = 192 * 1024
METADATA_DEPTH = 20
METADATA_KEYS = 2000
