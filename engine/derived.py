"""The tables the writer keeps current besides the events: ``nodes`` (from NODE_UP/NODE_DOWN/
RING_RESET, in the batch's transaction), ``node_status`` and ``blocks``.

A batch aggregates node_status and blocks changes in Python while the writer walks its records
(``BatchAggregates``); committed batches' aggregates are merged in memory and flushed by the
rollup thread (tart.engine.writer.rollups) every 250 ms, one statement per table (INSERT ...
SELECT FROM unnest(arrays) ... ON CONFLICT). Event counts live in tart.engine.writer.rollups.

Which events feed what (JSON as tart emits it, hashes as "0x..." strings):
- Status (10) -> node_status counters; BestBlockChanged (11) -> best_slot/hash;
  FinalizedBlockChanged (12) -> finalized_slot/hash; SyncStatusChanged (13) -> is_synced.
- Authoring (40) and Importing (43) remember (node, event_id) -> slot (``SlotTracker``), because
  Authored (42) and BlockExecuted (47) refer to them only by event id.
- Authored (42) -> blocks.authored_by (+ hash from its outline) at the slot of its Authoring.
- Importing (43) -> blocks.imported_by (+ hash) at its slot.
- BlockExecuted (47) -> blocks.executed_by at the slot of the Authoring/Importing it names.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg

from tart.engine.codec.eventtype import EventType as ET
from tart.engine.copyfmt import escape_nul_json
from tart.engine.record import (
    KIND_NODE_DOWN,
    KIND_NODE_UP,
    unpack_node_down,
    unpack_node_up,
    unpack_ring_reset,
)

DERIVED_TYPES = frozenset((ET.Status, ET.BestBlockChanged, ET.FinalizedBlockChanged, ET.SyncStatusChanged,
                           ET.Authoring, ET.Authored, ET.Importing, ET.BlockExecuted))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_I32_MAX = 2**31 - 1
_I64_MAX = 2**63 - 1

# node_status accumulator slots
_ST_UPDATED, _ST_STATUS, _ST_BEST, _ST_FIN, _ST_SYNC = range(5)


def us_to_dt(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _int(v: Any, hi: int) -> int | None:
    # Values outside the column's type would fail the whole statement; they are dropped instead.
    if type(v) is int and 0 <= v <= hi:
        return v
    return None


def _hash(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        try:
            return "0x" + bytes(v).hex()
        except (TypeError, ValueError):
            return None
    return None


def _text(s: Any) -> str:
    return str(s).replace("\x00", "\\u0000") if s is not None else ""


class SlotTracker:
    """(node, event_id) -> slot of recent Authoring/Importing events, bounded in size."""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self.map: dict[tuple[bytes, int], int] = {}

    def put(self, node: bytes, event_id: int, slot: int) -> None:
        m = self.map
        m[(node, event_id)] = slot
        if len(m) > self.limit:
            # dicts keep insertion order: drop the older half
            for k in list(m)[: self.limit // 2]:
                del m[k]

    def get(self, node: bytes, event_id: int) -> int | None:
        return self.map.get((node, event_id))


class BatchAggregates:
    """node_status and blocks changes of one batch (events of DERIVED_TYPES only)."""

    __slots__ = ("status", "blocks")

    def __init__(self) -> None:
        self.status: dict[bytes, list] = {}
        self.blocks: dict[int, list] = {}

    def __bool__(self) -> bool:
        return bool(self.status or self.blocks)

    def feed(self, tracker: SlotTracker, node: bytes, etype: int, event_id: int, received_at: int,
             js: bytes) -> None:
        try:
            obj = orjson.loads(js)
            (body,) = obj.values()
            self._feed(tracker, node, etype, event_id, received_at, body)
        except (orjson.JSONDecodeError, ValueError, TypeError, KeyError, AttributeError):
            pass  # a derived table is a convenience; the event itself is stored regardless

    def merge(self, later: BatchAggregates) -> None:
        """Fold in the aggregates of a batch committed after this one's."""
        for node, o in later.status.items():
            st = self.status.get(node)
            if st is None:
                self.status[node] = o
                continue
            st[_ST_UPDATED] = max(st[_ST_UPDATED], o[_ST_UPDATED])
            for i in (_ST_STATUS, _ST_BEST, _ST_FIN, _ST_SYNC):
                if o[i] is not None:
                    st[i] = o[i]
        for slot, o in later.blocks.items():
            b = self.blocks.get(slot)
            if b is None:
                self.blocks[slot] = o
                continue
            if o[0] is not None:
                b[0] = o[0]
            b[1] |= o[1]
            b[2] |= o[2]
            b[3] |= o[3]
            b[4] = min(b[4], o[4])
            b[5] = max(b[5], o[5])

    def _status(self, node: bytes, received_at: int) -> list:
        st = self.status.get(node)
        if st is None:
            st = self.status[node] = [received_at, None, None, None, None]
        elif received_at > st[_ST_UPDATED]:
            st[_ST_UPDATED] = received_at
        return st

    def _block(self, slot: int, received_at: int) -> list:
        b = self.blocks.get(slot)
        if b is None:
            b = self.blocks[slot] = [None, set(), set(), set(), received_at, received_at]
        else:
            b[4] = min(b[4], received_at)
            b[5] = max(b[5], received_at)
        return b

    def _feed(self, tracker: SlotTracker, node: bytes, etype: int, eid: int, ra: int, body: dict) -> None:
        if etype == ET.Status:
            g = body["num_guarantees"]
            guarantees = "{" + ",".join(str(int(x)) for x in g) + "}" if isinstance(g, list) else None
            self._status(node, ra)[_ST_STATUS] = (
                _int(body.get("num_peers"), _I32_MAX), _int(body.get("num_val_peers"), _I32_MAX),
                _int(body.get("num_sync_peers"), _I32_MAX), guarantees,
                _int(body.get("num_shards"), _I32_MAX), _int(body.get("shards_size"), _I64_MAX),
                _int(body.get("num_preimages"), _I32_MAX), _int(body.get("preimages_size"), _I64_MAX),
            )
        elif etype == ET.BestBlockChanged:
            self._status(node, ra)[_ST_BEST] = (_int(body["slot"], _I64_MAX), _hash(body.get("hash")))
        elif etype == ET.FinalizedBlockChanged:
            self._status(node, ra)[_ST_FIN] = (_int(body["slot"], _I64_MAX), _hash(body.get("hash")))
        elif etype == ET.SyncStatusChanged:
            synced = body["synced"]
            if isinstance(synced, bool):
                self._status(node, ra)[_ST_SYNC] = synced
        elif etype == ET.Authoring:
            slot = _int(body["slot"], _I64_MAX)
            if slot is not None:
                tracker.put(node, eid, slot)
        elif etype == ET.Importing:
            slot = _int(body["slot"], _I64_MAX)
            if slot is not None:
                tracker.put(node, eid, slot)
                b = self._block(slot, ra)
                b[2].add(node)
                if b[0] is None:
                    b[0] = _hash((body.get("outline") or {}).get("hash"))
        elif etype == ET.Authored:
            slot = tracker.get(node, body["authoring_id"])
            if slot is not None:
                b = self._block(slot, ra)
                b[1].add(node)
                b[0] = _hash((body.get("outline") or {}).get("hash")) or b[0]
        elif etype == ET.BlockExecuted:
            slot = tracker.get(node, body["authoring_or_importing_id"])
            if slot is not None:
                self._block(slot, ra)[3].add(node)


# NULL in a column means "this batch has nothing new for it" (an out-of-range value also ends up
# NULL and so leaves the old value in place, which is the lesser evil).
_STATUS_COLS = ("num_peers", "num_val_peers", "num_sync_peers", "num_guarantees", "num_shards",
                "shards_size", "num_preimages", "preimages_size", "best_slot", "best_hash",
                "finalized_slot", "finalized_hash", "is_synced")
STATUS_SQL = f"""
INSERT INTO node_status AS s (node_id, updated_at, {", ".join(_STATUS_COLS)})
SELECT n, u, a, b, c, g::int[], d, e, f, h, bs, bh, fs, fh, sy
FROM unnest(%s::text[], %s::timestamptz[], %s::int[], %s::int[], %s::int[], %s::text[], %s::int[],
            %s::int8[], %s::int[], %s::int8[], %s::int8[], %s::text[], %s::int8[], %s::text[],
            %s::bool[]) AS t(n, u, a, b, c, g, d, e, f, h, bs, bh, fs, fh, sy)
ON CONFLICT (node_id) DO UPDATE SET
    updated_at = greatest(s.updated_at, excluded.updated_at),
    {", ".join(f"{c} = COALESCE(excluded.{c}, s.{c})" for c in _STATUS_COLS)}
"""

_MERGE = "ARRAY(SELECT DISTINCT x FROM unnest(b.{0} || excluded.{0}) AS x ORDER BY x)"
BLOCKS_SQL = f"""
INSERT INTO blocks AS b (slot, hash, authored_by, imported_by, executed_by, first_seen, last_seen)
SELECT s, h, a::text[], i::text[], e::text[], f, l
FROM unnest(%s::int8[], %s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[],
            %s::timestamptz[]) AS t(s, h, a, i, e, f, l)
ON CONFLICT (slot) DO UPDATE SET
    hash = COALESCE(excluded.hash, b.hash),
    authored_by = {_MERGE.format("authored_by")},
    imported_by = {_MERGE.format("imported_by")},
    executed_by = {_MERGE.format("executed_by")},
    first_seen = least(b.first_seen, excluded.first_seen),
    last_seen = greatest(b.last_seen, excluded.last_seen)
"""

# A reconnecting node keeps its row and event_count. A NODE_UP older than the row's connection
# (the node already reconnected through another acceptor, whose ring was drained first) does not
# overwrite the newer connection's details; either way the node has a live connection now. A row
# made for a node's events before any NODE_UP (tart.engine.nodekeys) counts as older than any.
NODE_UP_SQL = """
INSERT INTO nodes AS n (node_id, peer_id, implementation_name, implementation_version, gp_version,
    node_info, address, connected_at, last_seen_at, disconnected_at, is_connected, connection_count)
VALUES (%(id)s, %(id)s, %(name)s, %(version)s, %(gp)s, %(info)s::jsonb, %(address)s, %(at)s, %(at)s,
    NULL, true, 1)
ON CONFLICT (node_id) DO UPDATE SET
    connection_count = n.connection_count + 1,
    implementation_name = CASE WHEN (excluded.connected_at >= n.connected_at OR n.connection_count = 0)
        THEN excluded.implementation_name ELSE n.implementation_name END,
    implementation_version = CASE WHEN (excluded.connected_at >= n.connected_at OR n.connection_count = 0)
        THEN excluded.implementation_version ELSE n.implementation_version END,
    gp_version = CASE WHEN (excluded.connected_at >= n.connected_at OR n.connection_count = 0)
        THEN excluded.gp_version ELSE n.gp_version END,
    node_info = CASE WHEN (excluded.connected_at >= n.connected_at OR n.connection_count = 0)
        THEN excluded.node_info ELSE n.node_info END,
    address = CASE WHEN (excluded.connected_at >= n.connected_at OR n.connection_count = 0) THEN excluded.address ELSE n.address END,
    is_connected = true,
    disconnected_at = NULL,
    connected_at = CASE WHEN n.connection_count = 0 THEN excluded.connected_at
        ELSE greatest(n.connected_at, excluded.connected_at) END,
    last_seen_at = greatest(n.last_seen_at, excluded.last_seen_at)
"""

NODE_DOWN_SQL = """
WITH gone AS (DELETE FROM node_connections WHERE conn_id = %(conn_id)s)
UPDATE nodes AS n SET
    is_connected = live.still,
    disconnected_at = CASE WHEN live.still THEN n.disconnected_at ELSE %(at)s END,
    last_seen_at = greatest(n.last_seen_at, %(at)s)
FROM (SELECT EXISTS (SELECT 1 FROM node_connections c
                     WHERE c.node_id = %(id)s AND c.conn_id <> %(conn_id)s) AS still) AS live
WHERE n.node_id = %(id)s
"""

# Every connection announced on the reset ring before the reset is gone (the acceptor that owned
# them died). The DELETE's rows are not visible to the UPDATE's subquery (one snapshot), hence the
# repeated condition.
RING_RESET_SQL = """
WITH gone AS (
    DELETE FROM node_connections WHERE (conn_id & 63) = %(ring)s AND conn_id < %(reset_id)s
    RETURNING node_id)
UPDATE nodes AS n SET
    is_connected = EXISTS (SELECT 1 FROM node_connections c WHERE c.node_id = n.node_id
                           AND NOT ((c.conn_id & 63) = %(ring)s AND c.conn_id < %(reset_id)s)),
    disconnected_at = %(at)s
WHERE n.node_id IN (SELECT node_id FROM gone)
"""

CONNECTION_UP_SQL = """
INSERT INTO node_connections (conn_id, node_id, connected_at, address)
VALUES (%(conn_id)s, %(id)s, %(at)s, %(address)s) ON CONFLICT (conn_id) DO NOTHING
"""

# At tart start no connection can be alive: whatever the last run left is closed.
RESET_ALL_CONNECTIONS_SQL = """
WITH gone AS (DELETE FROM node_connections)
UPDATE nodes SET is_connected = false, disconnected_at = last_seen_at WHERE is_connected
"""


def node_up_params(rec: bytes) -> dict[str, Any]:
    r = unpack_node_up(rec)
    try:
        info = orjson.loads(r.info_json)
        if not isinstance(info, dict):
            info = {}
    except orjson.JSONDecodeError:
        info = {}
    node_info = info.get("node_info")
    return {
        "id": r.peer_id.hex(),
        "name": _text(info.get("implementation_name")),
        "version": _text(info.get("implementation_version")),
        "gp": _text(info.get("gp_version")),
        # JSONB rejects U+0000: the same escaping as event data
        "info": escape_nul_json(orjson.dumps(node_info if isinstance(node_info, dict) else {})).decode(),
        "address": _text(info.get("address")) or None,
        "at": us_to_dt(r.connected_at),
        "conn_id": r.conn_id,
    }


def node_down_params(rec: bytes) -> dict[str, Any]:
    r = unpack_node_down(rec)
    return {"id": r.peer_id.hex(), "at": us_to_dt(r.disconnected_at), "connected_at": us_to_dt(r.connected_at),
            "conn_id": r.conn_id}


def ring_reset_params(rec: bytes) -> dict[str, Any]:
    r = unpack_ring_reset(rec)
    return {"ring": r.reset_id & 63, "reset_id": r.reset_id, "at": us_to_dt(r.at)}


_NODE_OP_SQL = {KIND_NODE_UP: (NODE_UP_SQL, CONNECTION_UP_SQL), KIND_NODE_DOWN: (NODE_DOWN_SQL,)}


def apply_node_ops(cur: psycopg.Cursor, ops: list[tuple[int, dict[str, Any]]]) -> None:
    """NODE_UP / NODE_DOWN / RING_RESET in ring order (record kind, params)."""
    i = 0
    while i < len(ops):
        kind = ops[i][0]
        j = i
        while j < len(ops) and ops[j][0] == kind:
            j += 1
        params = [p for _, p in ops[i:j]]
        for sql in _NODE_OP_SQL.get(kind, (RING_RESET_SQL,)):
            cur.executemany(sql, params)
        i = j


def apply_aggregates(cur: psycopg.Cursor, agg: BatchAggregates) -> None:
    if agg.status:
        cols: list[list] = [[] for _ in range(15)]
        for node, st in agg.status.items():
            s = st[_ST_STATUS] or (None,) * 8
            best = st[_ST_BEST] or (None, None)
            fin = st[_ST_FIN] or (None, None)
            row = (node.decode(), us_to_dt(st[_ST_UPDATED]), *s, *best, *fin, st[_ST_SYNC])
            for c, v in zip(cols, row, strict=True):
                c.append(v)
        cur.execute(STATUS_SQL, cols)
    if agg.blocks:
        slots, hashes, auth, imp, exe, first, last = [], [], [], [], [], [], []
        for slot, (h, a, i, e, f, lst) in agg.blocks.items():
            slots.append(slot)
            hashes.append(h)
            auth.append("{" + ",".join(sorted(x.decode() for x in a)) + "}")
            imp.append("{" + ",".join(sorted(x.decode() for x in i)) + "}")
            exe.append("{" + ",".join(sorted(x.decode() for x in e)) + "}")
            first.append(us_to_dt(f))
            last.append(us_to_dt(lst))
        cur.execute(BLOCKS_SQL, (slots, hashes, auth, imp, exe, first, last))
