"""The models a deployment serves (contract: Models): those a worker has registered, and the
default one, which a request may always name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from . import db
from .cached import Cached
from .rows import ModelRow


@dataclass(frozen=True)
class ModelCapabilities:
    """What a loaded model needs and prefers, as its worker reports it at registration: sizes
    must be multiples of size_multiple; the defaults fill what a request leaves out (None: the
    queue's own). Stored on the model's row (migration 008) and applied at submit."""

    size_multiple: int
    default_size: int | None
    default_steps: int | None
    default_guidance: float | None

    def params(self) -> dict[str, Any]:
        """The worker_register query's parameters."""
        return {
            "size_multiple": self.size_multiple,
            "default_size": self.default_size,
            "default_steps": self.default_steps,
            "default_guidance": self.default_guidance,
        }


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


async def model_capabilities(conn: db.Db) -> dict[str, ModelCapabilities]:
    """The models a worker has described, by name (the rest keep the queue's rules)."""
    rows = await db.fetch_all(conn, "model_capabilities")
    return {
        str(row["name"]): ModelCapabilities(
            size_multiple=int(row["size_multiple"]),
            default_size=row["default_size"],
            default_steps=row["default_steps"],
            default_guidance=row["default_guidance"],
        )
        for row in rows
    }


class CapabilitiesCache(Cached[dict[str, ModelCapabilities]]):
    """model_capabilities, re-read at most once per `ttl_s`: every submit applies them, and they
    change only when a worker registers (a new description is in force within ttl_s)."""

    def __init__(self, ttl_s: float = 1.0) -> None:
        super().__init__(model_capabilities, ttl_s)
