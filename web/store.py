"""PostgreSQL reads of the web tier: history, nodes, and the shared /api/stats cache."""

from __future__ import annotations

import time
from typing import Any

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool

from tart.engine import eventrows
from tart.engine.db import utc_conninfo
from tart.engine.eventrows import (
    R_CREATED,
    R_EID,
    R_ERROR,
    R_ID,
    R_NAME,
    R_NODE,
    R_PAYLOAD,
    R_TS,
    R_TYPE,
    R_VERSION,
)
from tart.engine.timefmt import fmt_dt, now_str, unix_us_to_dt
from tart.web.params import EventQuery
from tart.web.ringsource import fmt_us

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
    conninfo = utc_conninfo(dsn)
    if not conninfo_to_dict(conninfo).get("application_name"):
        # Names the web tier's sessions in pg_stat_activity (and the server log's %a).
        conninfo = make_conninfo(conninfo, application_name="tart-web")
    return AsyncConnectionPool(
        conninfo,
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


# How far a node's clock may be from tart's for `since`/`until` to find its events: a range on
# the event's time is widened by this on the arrival time, which partitions the table. Events
# of a node whose clock is off by more are still found by paging (ids follow arrival).
CLOCK_SKEW_US = 24 * 3600 * 1_000_000
MAX_US = 253_402_300_799_000_000  # 9999-12-31T23:59:59Z


def _event_where(q: EventQuery) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if q.node_id is not None:
        where.append("e.node_key = (SELECT node_key FROM nodes WHERE node_id = %s)")
        args.append(q.node_id)
    if q.event_types is not None:
        where.append("e.event_type = ANY(%s::smallint[])")
        args.append(list(q.event_types))
    # A time range on the event's own time also bounds its arrival time (within CLOCK_SKEW_US),
    # so that PostgreSQL reads only the daily partitions that can hold matches instead of all.
    if q.since_us is not None:
        where.append("e.timestamp >= %s AND e.created_at >= %s")
        args += [unix_us_to_dt(q.since_us), unix_us_to_dt(max(0, q.since_us - CLOCK_SKEW_US))]
    if q.until_us is not None:
        where.append("e.timestamp < %s AND e.created_at < %s")
        args += [unix_us_to_dt(q.until_us), unix_us_to_dt(min(MAX_US, q.until_us + CLOCK_SKEW_US))]
    return where, args


def _event_sql(q: EventQuery, lo: int | None, hi: int | None, limit: int, ascending: bool = False
               ) -> tuple[str, list[Any]]:
    """Rows with lo <= id < hi (either bound optional) matching ``q``, newest first (oldest first
    when ``ascending``), at most ``limit``."""
    where, args = _event_where(q)
    if hi is not None:
        where.append("e.id < %s")
        args.append(hi)
    if lo is not None:
        where.append("e.id >= %s")
        args.append(lo)
    sql = eventrows.SELECT.format(table="event_rows")
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY e.id {'ASC' if ascending else 'DESC'} LIMIT %s"
    args.append(limit)
    return sql, args


def event_row(r: tuple) -> dict[str, Any]:
    env = {
        "id": r[R_ID],
        "node_id": r[R_NODE],
        "event_id": r[R_EID],
        "event_type": r[R_TYPE],
        "timestamp": fmt_us(r[R_TS]),
        "data": eventrows.event_data(r[R_TYPE], r[R_TS], r[R_PAYLOAD], r[R_ERROR]),
        "node_name": r[R_NAME] or "",
        "node_version": r[R_VERSION] or "",
        "received_at": fmt_us(r[R_CREATED]),
    }
    if r[R_ERROR] is not None:
        env["decode_error"] = r[R_ERROR]
    return env


# Lower bound of every stored id (the oldest partition's day start), per worker.
_FLOOR: list[float] = [0.0, 0.0]  # [id floor, monotonic time it was read]
FLOOR_TTL_S = 60.0


async def _id_floor(conn: psycopg.AsyncConnection) -> int:
    now = time.monotonic()
    if now - _FLOOR[1] < FLOOR_TTL_S:
        return int(_FLOOR[0])
    cur = await conn.execute(eventrows.PARTITIONS_SQL)
    starts = [s for (name,) in await cur.fetchall() if (s := eventrows.partition_day_start_us(name)) is not None]
    floor = eventrows.id_of_unix_us(min(starts)) if starts else 0
    _FLOOR[0], _FLOOR[1] = floor, now
    return floor


async def list_events(pool: AsyncConnectionPool, q: EventQuery) -> list[tuple]:
    """Up to limit+1 rows, newest id first; `event_row` makes the envelope (only of rows kept).

    A node or type filter walks its btree newest first. Without one, there is no index in id
    order (a btree on id alone would cost ~30 B per stored event): the rows come from windows of
    ids going back from the cursor, each found through the BRIN index on id, widening until the
    page is full or the oldest partition is reached."""
    need = q.limit + 1
    async with pool.connection() as conn:
        if q.node_id is not None or q.event_types is not None:
            sql, args = _event_sql(q, None, q.before_id, need)
            cur = await conn.execute(sql, args)
            return await cur.fetchall()
        # No id tart stored is newer than the newest its writers committed (ring_cursors.last_id):
        # the walk starts there rather than at "now", which at rest would be empty windows first.
        # Without any (rows that came another way), ids are bounded by their arrival time.
        cur = await conn.execute("SELECT max(last_id) FROM ring_cursors")
        last = (await cur.fetchone())[0]
        newest = last + 1 if last else eventrows.id_of_unix_us(time.time_ns() // 1000 + 1_000_000)
        hi = newest if q.before_id is None else min(q.before_id, newest)
        rows: list[tuple] = []
        floor = await _id_floor(conn)
        width = eventrows.id_of_unix_us(eventrows.FIRST_WINDOW_US)
        top = hi
        while top > floor:
            lo = max(floor, top - width)
            sql, args = _event_sql(q, lo, top, need - len(rows))
            cur = await conn.execute(sql, args)
            got = await cur.fetchall()
            rows.extend(got)
            if len(rows) >= need:
                return rows
            width = eventrows.next_width(top - lo, len(got), need - len(rows))
            top = lo
        # Below the floor only rows whose id does not follow their arrival time can be (written by
        # hand, or by a clock far off): one more query, which the BRIN index answers at once
        # when there are none.
        sql, args = _event_sql(q, None, min(top, floor), need - len(rows))
        cur = await conn.execute(sql, args)
        rows.extend(await cur.fetchall())
        return rows


async def list_events_after(pool: AsyncConnectionPool, q: EventQuery, horizon: int) -> list[tuple]:
    """Forward paging: up to limit+1 rows with q.after_id < id <= horizon, oldest first. A node or
    type filter walks its btree forward; without one, windows of ids go forward from the cursor
    (widening as in ``list_events``) up to the horizon."""
    need = q.limit + 1
    lo0, hi = q.after_id + 1, horizon + 1
    if lo0 >= hi:
        return []
    async with pool.connection() as conn:
        if q.node_id is not None or q.event_types is not None:
            sql, args = _event_sql(q, lo0, hi, need, ascending=True)
            cur = await conn.execute(sql, args)
            return await cur.fetchall()
        rows: list[tuple] = []
        # Ids below the partitions' floor come first, if any (rows that came another way).
        floor = await _id_floor(conn)
        if lo0 < floor:
            sql, args = _event_sql(q, lo0, min(floor, hi), need, ascending=True)
            cur = await conn.execute(sql, args)
            rows.extend(await cur.fetchall())
            lo0 = min(floor, hi)
        width = eventrows.id_of_unix_us(eventrows.FIRST_WINDOW_US)
        lo = lo0
        while lo < hi and len(rows) < need:
            top = min(hi, lo + width)
            sql, args = _event_sql(q, lo, top, need - len(rows), ascending=True)
            cur = await conn.execute(sql, args)
            got = await cur.fetchall()
            rows.extend(got)
            width = eventrows.next_width(top - lo, len(got), need - len(rows))
            lo = top
        return rows


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
