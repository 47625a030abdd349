"""GET /api/stats: aggregates from the derived tables, one 5-second snapshot shared by all workers."""

from __future__ import annotations

import falcon

from tart.web import store
from tart.web.state import AppState

# Kept in the shared snapshot for the WebSocket `stats` message, too long for this endpoint.
_HIDDEN = ("connected_node_ids",)


class StatsResource:
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        value = await store.stats(self.state.pool)
        resp.media = {k: v for k, v in value.items() if k not in _HIDDEN}
        resp.cache_control = ["max-age=5"]
