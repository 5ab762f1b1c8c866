"""The fan-out's counters, shared by the outbox, the fan-out loop and replays (operators, tests),
and its taps: every routed event, and each live event's time from commit to its last socket."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from queueing.rows import EventJson


class EventObserver(Protocol):
    """Who learns of every event the fan-out routes, and of each one's fan-out time
    (web/metrics.py)."""

    def event_routed(self, event: EventJson) -> None: ...

    def event_fanned_out(self, seconds: float) -> None: ...


@dataclass(eq=False)
class _Delivery:
    text: str  # held, so that its id() names this event in the outboxes while it is out
    at: float  # the event's commit time, seconds since the epoch
    routing: bool = True  # the fan-out is still offering it
    offered: int = 0
    outstanding: int = 0  # offered and not yet written (or dropped with its socket)


class Deliveries:
    """Times each live event from its commit (its `at`) to the end of its last socket write.

    The fan-out offers one str object to every socket that follows an event, so the object's
    identity names the event in every outbox: `routing` opens it before the offers, each outbox
    counts it in (`offered`) and out (`done`: written, or dropped with a socket that closed),
    `routed` says the offers are over, and once the last outbox let go of it the time goes to
    the observer. Replays send their own batches and are not timed. Without an observer every
    tap is a no-op."""

    def __init__(self) -> None:
        self.observer: EventObserver | None = None
        self._open: dict[int, _Delivery] = {}
        self._routing: _Delivery | None = None

    def routing(self, text: str, at: str) -> None:
        """The fan-out is about to offer this event's text to the sockets that follow it."""
        if self.observer is not None:
            self._routing = _Delivery(text, datetime.fromisoformat(at).timestamp())
            self._open[id(text)] = self._routing

    def routed(self, event: EventJson) -> None:
        """The fan-out is done with this event (every event, followed or not, comes here)."""
        if self.observer is None:
            return
        self.observer.event_routed(event)
        delivery, self._routing = self._routing, None
        if delivery is not None:
            delivery.routing = False
            self._settle(delivery)

    def offered(self, item: object) -> None:
        delivery = self._open.get(id(item)) if self._open else None
        if delivery is not None:
            delivery.offered += 1
            delivery.outstanding += 1

    def done(self, item: object) -> None:
        """An outbox let go of the item: it was written, or dropped with its socket."""
        delivery = self._open.get(id(item)) if self._open else None
        if delivery is not None:
            delivery.outstanding -= 1
            self._settle(delivery)

    def _settle(self, delivery: _Delivery) -> None:
        if delivery.routing or delivery.outstanding > 0:
            return
        del self._open[id(delivery.text)]
        if delivery.offered and self.observer is not None:
            self.observer.event_fanned_out(max(0.0, time.time() - delivery.at))


@dataclass
class FanoutStats:
    events_routed: int = 0
    position_passes: int = 0
    replays: int = 0
    clients_dropped: int = 0  # closed because their outbox overflowed
    deliveries: Deliveries = field(default_factory=Deliveries)
