"""The models a deployment serves (contract: Models): those a worker has registered, and the
default one, which a request may always name."""

from __future__ import annotations

from typing import cast

from . import db
from .cached import Cached
from .rows import ModelRow


async def list_models(conn: db.Db, default_model: str) -> list[ModelRow]:
    """Every model by name, with its live workers and its queued and processing jobs."""
    rows = await db.fetch_all(conn, "models_overview", {"default_model": default_model})
    return cast("list[ModelRow]", rows)


class ModelsCache(Cached[list[ModelRow]]):
    """list_models, re-read at most once per `ttl_s`: pages poll it while their jobs wait, and
    its counts read every queued job's index entry."""

    def __init__(self, default_model: str, ttl_s: float = 1.0) -> None:
        async def read(conn: db.Db) -> list[ModelRow]:
            return await list_models(conn, default_model)

        super().__init__(read, ttl_s)
