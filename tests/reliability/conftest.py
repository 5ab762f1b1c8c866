"""Fixtures of the reliability suite: a seeded random source that says how to replay it (the
database shared by the tests of one module is tests/conftest.py's `module_database_url`)."""

from __future__ import annotations

import os
import random

SEED_ENV = "GPUQUEUE_RELIABILITY_SEED"


def seeded(name: str) -> tuple[random.Random, int]:
    """A random source for one scenario: GPUQUEUE_RELIABILITY_SEED replays a run exactly (as far
    as the scheduler allows); otherwise a fresh seed, printed so a failure can be replayed."""
    given = os.environ.get(SEED_ENV)
    seed = int(given) if given else random.SystemRandom().randrange(2**32)
    print(f"{name}: {SEED_ENV}={seed}")
    return random.Random(seed), seed
