"""The Falcon ASGI app of one web worker: `create_app(settings, dsn, ring_names)`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import falcon
import falcon.asgi

from tart.engine.config import Settings
from tart.web import errors, media, store
from tart.web.broadcaster import Broadcaster
from tart.web.events import EventsResource, NodeEventsResource
from tart.web.health import DetailedHealthResource, HealthResource
from tart.web.metrics_endpoint import MetricsResource, update_pool_gauge
from tart.web.middleware import LimitsMiddleware, MetricsMiddleware
from tart.web.nodes import NodeResource, NodesResource
from tart.web.openapi import OpenApiResource
from tart.web.ringsource import RingSet
from tart.web.state import AppState, StatsProvider
from tart.web.stats import StatsResource
from tart.web.ws import WebSocketResource

log = logging.getLogger("tart.web")

HOUSEKEEPING_S = 1.0


class Lifespan:
    """Opens the pool and starts the broadcaster in each worker (after gunicorn forked it)."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def process_startup(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        st = self.state
        # wait=False: a worker must come up (and serve health, WebSocket, ring events) while
        # PostgreSQL is still starting or briefly away; queries wait on the pool's timeout.
        await st.pool.open(wait=False)
        st.rings.attach_missing()
        st.broadcaster.start()
        st.background.append(asyncio.get_running_loop().create_task(_housekeeping(st), name="tart-web-housekeeping"))
        log.info("web worker ready", extra={"rings": ",".join(st.rings.rings) or "-"})

    async def process_shutdown(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        st = self.state
        for t in st.background:
            t.cancel()
        for t in st.background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        st.background.clear()
        await st.broadcaster.stop()
        await st.pool.close()
        st.rings.close()


async def _housekeeping(st: AppState) -> None:
    while True:
        update_pool_gauge(st)
        await asyncio.sleep(HOUSEKEEPING_S)


def _cors_origins(value: str) -> str | list[str] | None:
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        return None
    return "*" if "*" in parts else parts


def create_app(settings: Settings, dsn: str, ring_names: Iterable[str],
               started_at: float | None = None) -> falcon.asgi.App:
    """`started_at`: unix time the service started (the supervisor's), for uptime; default now."""
    rings = RingSet(ring_names)
    pool = store.make_pool(dsn)
    state = AppState(
        settings=settings,
        dsn=dsn,
        rings=rings,
        pool=pool,
        broadcaster=Broadcaster(rings),
        stats=StatsProvider(pool),
    )
    if started_at is not None:
        state.started_at = started_at
    middleware: list[Any] = [Lifespan(state), MetricsMiddleware(), LimitsMiddleware()]
    origins = _cors_origins(settings.cors_origins)
    if origins is not None:
        middleware.insert(1, falcon.CORSMiddleware(allow_origins=origins, expose_headers="*"))
    app = falcon.asgi.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    media.install(app)
    errors.install(app)
    app.add_route("/api/health", HealthResource())
    app.add_route("/api/health/detailed", DetailedHealthResource(state))
    app.add_route("/api/stats", StatsResource(state))
    app.add_route("/api/nodes", NodesResource(state))
    app.add_route("/api/nodes/{node_id}", NodeResource(state))
    app.add_route("/api/nodes/{node_id}/events", NodeEventsResource(state))
    app.add_route("/api/events", EventsResource(state))
    app.add_route("/api/openapi.json", OpenApiResource())
    app.add_route("/api/ws", WebSocketResource(state))
    app.add_route("/metrics", MetricsResource(state))
    return app
