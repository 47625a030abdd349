"""What one web worker holds (AppState, for its lifespan and housekeeping) and the narrower
pieces its resources receive: each resource gets only what it uses (see app.create_app)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import AsyncConnectionPool

from tart.engine.config import Settings
from tart.web import store
from tart.web.broadcaster import Broadcaster
from tart.web.ringsource import RingSet

log = logging.getLogger("tart.web")

try:
    from importlib.metadata import version as _dist_version

    VERSION = _dist_version("tart-backend")
except Exception:  # noqa: BLE001 - running from a source tree without metadata
    VERSION = "0.1.0"

SERVICE = "tart-backend"


class StatsProvider:
    """The /api/stats snapshot for this worker's WebSocket `stats` messages: one query per 5 s at most."""

    def __init__(self, pool: AsyncConnectionPool, ttl_s: float = store.STATS_TTL_S) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        self.value: dict[str, Any] = {}
        self.at = 0.0
        self._lock = asyncio.Lock()

    async def get_soon(self, wait_s: float = 1.0) -> dict[str, Any]:
        """Like get(), but never waits longer than `wait_s` (PostgreSQL away): then the last value;
        the refresh goes on in the background."""
        try:
            return await asyncio.wait_for(asyncio.shield(self.get()), wait_s)
        except TimeoutError:
            return self.value

    async def get(self) -> dict[str, Any]:
        if time.monotonic() - self.at < self.ttl_s:
            return self.value
        async with self._lock:
            if time.monotonic() - self.at < self.ttl_s:
                return self.value
            try:
                self.value = await store.stats(self.pool)
            except Exception as e:  # noqa: BLE001 - a WS client gets stale stats rather than none
                log.warning("stats refresh failed", extra={"error": f"{type(e).__name__}: {e}"[:300]})
            self.at = time.monotonic()
            return self.value


@dataclass
class EventReads:
    """What the event resources read: the rings' uncommitted tail, the read-only pool, and the
    node-name cache of ring-only events (the attributes web/events.py uses)."""

    rings: RingSet
    pool: AsyncConnectionPool
    # node_id -> ((implementation_name, implementation_version), monotonic time fetched)
    node_names: dict[str, tuple[tuple[str, str], float]] = field(default_factory=dict)


@dataclass
class AppState:
    settings: Settings
    dsn: str
    rings: RingSet
    pool: AsyncConnectionPool  # read-only sessions, statement_timeout (web/dbrole.py)
    broadcaster: Broadcaster
    stats: StatsProvider
    # The one writable path: the shared /api/stats cache row (store.stats upserts stats_cache).
    stats_pool: AsyncConnectionPool | None = None
    started_at: float = field(default_factory=time.time)
    node_names: dict[str, tuple[tuple[str, str], float]] = field(default_factory=dict)
    background: list[asyncio.Task] = field(default_factory=list)
    ws: Any = None  # the WebSocketResource, whose periodic task the lifespan starts
