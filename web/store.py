"""PostgreSQL reads of the web tier: history, nodes, and the shared /api/stats cache."""

from __future__ import annotations

import time
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool

from tart.engine.db import utc_conninfo
from tart.engine.timefmt import fmt_dt, now_str, unix_us_to_dt
from tart.web.params import EventQuery

# How long a request waits for a pooled connection before it is answered 503 (PostgreSQL away or
# every connection busy).
POOL_WAIT_S = 3.0
PING_WAIT_S = 2.0
STATS_KEY = "api_stats"
STATS_TTL_S = 5.0
# Any constant works as long as every web worker uses the same one.
STATS_LOCK_KEY = 0x7461727400000002

NODE_COLUMNS = (
    "node_id, peer_id, implementation_name, implementation_version, gp_version, node_info, address, "
    "is_connected, event_count, connection_count, connected_at, last_seen_at, disconnected_at"
)


async def _configure(conn: psycopg.AsyncConnection) -> None:
    set_json_loads(orjson.loads, conn)
    set_json_dumps(orjson.dumps, conn)


def make_pool(dsn: str, max_size: int = 8) -> AsyncConnectionPool:
    # autocommit: every read is one statement, so no BEGIN/COMMIT round trips.
    return AsyncConnectionPool(
        utc_conninfo(dsn),
        min_size=1,
        max_size=max_size,
        open=False,
        timeout=POOL_WAIT_S,
        kwargs={"autocommit": True},
        configure=_configure,
        name="tart-web",
    )


def node_row(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "node_id": r["node_id"],
        "peer_id": r["peer_id"],
        "implementation_name": r["implementation_name"],
        "implementation_version": r["implementation_version"],
        "gp_version": r["gp_version"],
        "node_info": r["node_info"],
        "address": r["address"],
        "is_connected": r["is_connected"],
        "event_count": r["event_count"],
        "connection_count": r["connection_count"],
        "connected_at": fmt_dt(r["connected_at"]),
        "last_seen_at": fmt_dt(r["last_seen_at"]),
        "disconnected_at": fmt_dt(r["disconnected_at"]),
    }


async def list_nodes(pool: AsyncConnectionPool) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"SELECT {NODE_COLUMNS} FROM nodes ORDER BY is_connected DESC, last_seen_at DESC, node_id"
        )
        return [node_row(r) for r in await cur.fetchall()]


async def get_node(pool: AsyncConnectionPool, node_id: str) -> dict[str, Any] | None:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(f"SELECT {NODE_COLUMNS} FROM nodes WHERE node_id = %s", (node_id,))
        r = await cur.fetchone()
        return node_row(r) if r else None


async def node_names(pool: AsyncConnectionPool, node_ids: list[str]) -> dict[str, tuple[str, str]]:
    if not node_ids:
        return {}
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT node_id, implementation_name, implementation_version FROM nodes WHERE node_id = ANY(%s)",
            (node_ids,),
        )
        return {r[0]: (r[1], r[2]) for r in await cur.fetchall()}


def _event_sql(q: EventQuery) -> tuple[str, list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if q.node_id is not None:
        where.append("e.node_id = %s")
        args.append(q.node_id)
    if q.event_types is not None:
        where.append("e.event_type = ANY(%s::smallint[])")
        args.append(list(q.event_types))
    if q.since_us is not None:
        where.append("e.timestamp >= %s")
        args.append(unix_us_to_dt(q.since_us))
    if q.until_us is not None:
        where.append("e.timestamp < %s")
        args.append(unix_us_to_dt(q.until_us))
    if q.before_id is not None:
        where.append("e.id < %s")
        args.append(q.before_id)
    sql = (
        "SELECT e.id, e.node_id, e.event_id, e.event_type, e.timestamp, e.data, e.created_at, e.decode_error,"
        " n.implementation_name, n.implementation_version"
        " FROM events e LEFT JOIN nodes n ON n.node_id = e.node_id"
    )
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY e.id DESC LIMIT %s"
    args.append(q.limit + 1)
    return sql, args


def event_row(r: tuple) -> dict[str, Any]:
    env = {
        "id": r[0],
        "node_id": r[1],
        "event_id": r[2],
        "event_type": r[3],
        "timestamp": fmt_dt(r[4]),
        "data": r[5],
        "node_name": r[8] or "",
        "node_version": r[9] or "",
        "received_at": fmt_dt(r[6]),
    }
    if r[7] is not None:
        env["decode_error"] = r[7]
    return env


async def list_events(pool: AsyncConnectionPool, q: EventQuery) -> list[tuple]:
    """Up to limit+1 rows, newest id first; `event_row` makes the envelope (only of rows kept)."""
    sql, args = _event_sql(q)
    async with pool.connection() as conn:
        cur = await conn.execute(sql, args)
        return await cur.fetchall()


async def ping(pool: AsyncConnectionPool) -> float:
    """Round trip of `SELECT 1` through the pool, in ms."""
    t0 = time.perf_counter()
    async with pool.connection(timeout=PING_WAIT_S) as conn:
        await conn.execute("SELECT 1")
    return (time.perf_counter() - t0) * 1000.0


_STATS_SQL = """
SELECT
  (SELECT count(*) FROM nodes) AS total_nodes,
  (SELECT count(*) FROM nodes WHERE is_connected) AS connected_nodes,
  (SELECT coalesce(sum(event_count), 0) FROM nodes)::bigint AS total_events,
  (SELECT coalesce(max(best_slot), 0) FROM node_status) AS best_block,
  (SELECT coalesce(max(finalized_slot), 0) FROM node_status) AS finalized_block,
  (SELECT coalesce(sum(cardinality(authored_by)), 0) FROM blocks)::bigint AS total_blocks_authored,
  (SELECT count(*) FROM blocks) AS total_slots_seen,
  (SELECT coalesce(array_agg(node_id ORDER BY node_id), '{}') FROM nodes WHERE is_connected) AS connected_node_ids
"""


async def stats(pool: AsyncConnectionPool) -> dict[str, Any]:
    """The /api/stats body: one 5-second snapshot shared by every worker through `stats_cache`.

    A worker that finds the snapshot stale recomputes it under a transaction-level advisory lock;
    the others keep serving the previous snapshot meanwhile instead of recomputing it too.
    """
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT value, extract(epoch FROM now() - updated_at) FROM stats_cache WHERE key = %s",
            (STATS_KEY,),
        )
        row = await cur.fetchone()
        if row is not None and row[1] < STATS_TTL_S:
            return row[0]
        async with conn.transaction():
            cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (STATS_LOCK_KEY,))
            got = (await cur.fetchone())[0]
            if not got and row is not None:
                return row[0]
            cur = await conn.execute(_STATS_SQL)
            r = await cur.fetchone()
            names = [d.name for d in cur.description]
            value = dict(zip(names, r, strict=True))
            value["computed_at"] = now_str()
            await conn.execute(
                "INSERT INTO stats_cache (key, value, updated_at) VALUES (%s, %s, now())"
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at",
                (STATS_KEY, Jsonb(value)),
            )
            return value
