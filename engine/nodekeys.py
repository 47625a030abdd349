"""Node keys: the small integer (``nodes.node_key``) that event rows and rollups carry instead of
the 64-character hex node id.

A key never changes once a node has a row, so writers cache it for good. A node whose events
arrive before (or without) its NODE_UP gets a row that is not connected; its NODE_UP fills it in
later (``derived.NODE_UP_SQL`` treats a row that never had a connection as older than any).
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

RESOLVE_SQL = """
WITH wanted AS (SELECT DISTINCT x AS node_id FROM unnest(%s::text[]) AS x),
added AS (
    INSERT INTO nodes (node_id, peer_id)
    SELECT node_id, node_id FROM wanted ON CONFLICT (node_id) DO NOTHING
    RETURNING node_id, node_key)
SELECT node_id, node_key FROM added
UNION ALL
SELECT n.node_id, n.node_key FROM nodes n JOIN wanted w USING (node_id)
"""


def resolve(conn: psycopg.Connection, node_ids: Iterable[str]) -> dict[str, int]:
    """node id (hex) -> node key for every id given, creating the rows that are missing. The
    caller commits (autocommit connections commit at once)."""
    ids = sorted(set(node_ids))
    if not ids:
        return {}
    # A row inserted by this statement is not visible to its own second SELECT (one snapshot),
    # and one that already existed is not in `added`: the union has each id exactly once. A row
    # that another writer committed after this statement's snapshot is in neither: ask again.
    out: dict[str, int] = {}
    for _ in range(5):
        out.update(conn.execute(RESOLVE_SQL, ([i for i in ids if i not in out],)).fetchall())
        if len(out) == len(ids):
            return out
    raise psycopg.DataError(f"node keys not found for {len(ids) - len(out)} node ids")


class NodeKeys:
    """peer id bytes -> node key, cached; misses are resolved in one statement per call."""

    def __init__(self) -> None:
        self.keys: dict[bytes, int] = {}

    def lookup(self, conn: psycopg.Connection, peer_ids: Iterable[bytes]) -> None:
        missing = {p for p in peer_ids if p not in self.keys}
        if missing:
            found = resolve(conn, (p.hex() for p in missing))
            for p in missing:
                self.keys[p] = found[p.hex()]
