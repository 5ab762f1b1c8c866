"""The WebSocket live fan-out: one LISTEN connection per web process, and nothing lost.

wire (the frames), outbox (one socket's bounded queue), subscriptions (who follows what),
fanout (the NOTIFY-driven loop: routing and positions), replay (subscribe, since_seq, the
positions snapshot), waiters (POST /cancel's wait), stats (the counters), broadcaster (the
facade the handlers hold).
"""

from .broadcaster import Broadcaster
from .outbox import Client, ClientGone

__all__ = ["Broadcaster", "Client", "ClientGone"]
