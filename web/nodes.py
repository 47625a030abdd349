"""GET /api/nodes and GET /api/nodes/{node_id}."""

from __future__ import annotations

import falcon
from psycopg_pool import AsyncConnectionPool

from tart.web import params, store
from tart.web.errors import not_found


class NodesResource:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"nodes": await store.list_nodes(self.pool)}


class NodeResource:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def on_get(self, req: falcon.Request, resp: falcon.Response, node_id: str) -> None:
        nid = params.node_id(node_id)
        node = await store.get_node(self.pool, nid)
        if node is None:
            raise not_found(f"no node {nid}")
        resp.media = node
