"""The fan-out's counters, shared by the outbox, the fan-out loop and replays (operators, tests)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FanoutStats:
    events_routed: int = 0
    position_passes: int = 0
    replays: int = 0
    clients_dropped: int = 0  # closed because their outbox overflowed
