"""GET /api/stats: aggregates from the derived tables, one 5-second snapshot shared by all workers."""

from __future__ import annotations

import falcon
from psycopg_pool import AsyncConnectionPool

from tart.web import store

# Kept in the shared snapshot for the WebSocket `stats` message, too long for this endpoint.
_HIDDEN = ("connected_node_ids",)


class StatsResource:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        # The writable stats pool: store.stats refreshes the shared stats_cache row.
        self.pool = pool

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        value = await store.stats(self.pool)
        resp.media = {k: v for k, v in value.items() if k not in _HIDDEN}
        # The snapshot is recomputed at most every 5 s: a cache may keep it that long.
        resp.cache_control = [f"max-age={int(store.STATS_TTL_S)}"]
