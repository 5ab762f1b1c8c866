"""Who is asking: every read and change is scoped to an actor."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    user_id: int
    name: str = ""
    is_admin: bool = False

    @property
    def owner(self) -> int | None:
        """The user id rows must belong to; None for an admin, who sees everything."""
        return None if self.is_admin else self.user_id
