"""The typed application state the handlers share (aiohttp AppKeys), kept apart so the handler
modules and create_app can all import it without a cycle."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from aiohttp import web

from queueing import db
from queueing.actors import Actor
from queueing.config import Settings
from queueing.models import CapabilitiesCache, ModelsCache
from queueing.positions import EtaCache
from queueing.tokens import TokenLookups

from .image_links import ImageLinks
from .live import Broadcaster, Client
from .token_watch import TokenWatch


@dataclass(frozen=True)
class WebOptions:
    """Knobs of one web process that are not deployment settings (tests turn them down)."""

    cancel_wait_s: float = 3.0  # how long POST /cancel waits for a running job to stop
    outbox_size: int = 1000  # messages (or batches) queued per WebSocket before it is dropped
    eta_ttl_s: float = 1.0  # how long one ETA model (and one models list) serves HTTP reads
    token_check_s: float = 10.0  # how often open WebSockets' tokens are checked again


SETTINGS = web.AppKey("settings", Settings)
DATABASE_URL = web.AppKey("database_url", str)
OPTIONS = web.AppKey("options", WebOptions)
POOL: web.AppKey[db.Pool] = web.AppKey("pool")
TOKENS = web.AppKey("tokens", TokenLookups)
ETA_CACHE = web.AppKey("eta_cache", EtaCache)
MODELS_CACHE = web.AppKey("models_cache", ModelsCache)
CAPABILITIES_CACHE = web.AppKey("capabilities_cache", CapabilitiesCache)
BROADCASTER = web.AppKey("broadcaster", Broadcaster)
CLIENTS: web.AppKey[weakref.WeakSet[Client]] = web.AppKey("clients")
IMAGE_LINKS = web.AppKey("image_links", ImageLinks)
TOKEN_WATCH = web.AppKey("token_watch", TokenWatch)

ACTOR = web.RequestKey("actor", Actor)
