"""Batch building: ring records -> binary COPY rows, node records, counts and derived changes.

``Batch.add`` is the writer's hot path: per event one header unpack, one dict lookup for the node
key, one ``struct.pack`` around the record's own payload bytes, and one counter increment.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable

from tart.engine import copyfmt, derived, metrics
from tart.engine.record import (
    EVENT_HEADER_SIZE,
    KIND_EVENT,
    KIND_NODE_DOWN,
    KIND_NODE_UP,
    KIND_RING_RESET,
    event_header,
    event_peer_id,
)

log = logging.getLogger("tart.writer")

BUCKET_US = 30_000_000  # the rollup's bucket: 30 s of arrival time


class Batch:
    """Records read from the rings and not yet committed, with everything derived from them."""

    def __init__(self) -> None:
        self.rows: list[bytes] = []  # COPY tuples, aligned with ev_recs
        self.ev_recs: list[bytes] = []
        self.keys: list[int] = []  # node key per row, aligned with rows
        self.node_ops: list[tuple[int, dict]] = []
        self.counts: dict[tuple[int, int, int], int] = {}  # (node key, type, 30-s bucket) -> events
        self.last_seen: dict[int, int] = {}  # node key -> newest received_at (µs)
        self.agg = derived.BatchAggregates()
        self.ends: dict[str, int] = {}  # ring name -> reader position after this batch
        self.last_ids: dict[str, int] = {}  # ring name -> newest event id in this batch
        self.records = 0
        self.skipped = 0  # corrupt ring records skipped (their stretch is released with the batch)
        self.started = 0.0  # monotonic time the batch got its first record
        self.careful = False
        self.retrying = False

    def __len__(self) -> int:
        return self.records

    def add(self, ring: str, recs: list[bytes], keys: dict[bytes, int],
            resolve: Callable[[list[bytes]], None], tracker: derived.SlotTracker) -> None:
        """Encode ``recs`` (one ring's records in ring order). ``keys`` maps peer ids to node keys;
        ``resolve(recs)`` adds the keys of every peer in ``recs`` that it lacks."""
        rows_ap = self.rows.append
        recs_ap = self.ev_recs.append
        keys_ap = self.keys.append
        counts = self.counts
        counts_get = counts.get
        last_seen = self.last_seen
        unpack = event_header
        pack_head, tail = copyfmt.pack_head, copyfmt.ROW_TAIL
        fields = copyfmt.FIELDS
        hdr = copyfmt.HDR_SIZE
        ts_max = copyfmt.JCE_TS_MAX
        jce_to_pg = copyfmt.JCE_TO_PG_US
        pg_epoch = copyfmt.PG_EPOCH_UNIX_US
        derived_types = derived.DERIVED_TYPES
        bucket_us = BUCKET_US
        last_id = None
        for rec in recs:
            try:
                if rec[0] == KIND_EVENT:
                    _, flags, etype, jlen, id_, ra, ts, eid, peer = unpack(rec)
                    try:
                        key = keys[peer]
                    except KeyError:
                        resolve(recs)
                        key = keys[peer]
                    if not flags & 1 and ts <= ts_max:
                        payload = rec[hdr + jlen:]
                        rows_ap(pack_head(fields, 8, id_, 8, eid, 8, ts + jce_to_pg, 8, ra - pg_epoch, 4, key,
                                          2, etype, len(payload)) + payload + tail)
                    else:
                        rows_ap(copyfmt.encode_slow(rec, key))
                    recs_ap(rec)
                    keys_ap(key)
                    last_id = id_
                    ck = (key, etype, ra // bucket_us)
                    counts[ck] = counts_get(ck, 0) + 1
                    if ra > last_seen.get(key, 0):
                        last_seen[key] = ra
                    if etype in derived_types and not flags & 1:
                        self.agg.feed(tracker, peer.hex().encode(), etype, eid, ra, rec[hdr:hdr + jlen])
                elif rec[0] == KIND_NODE_UP:
                    self.node_ops.append((KIND_NODE_UP, derived.node_up_params(rec)))
                elif rec[0] == KIND_NODE_DOWN:
                    self.node_ops.append((KIND_NODE_DOWN, derived.node_down_params(rec)))
                elif rec[0] == KIND_RING_RESET:
                    self.node_ops.append((KIND_RING_RESET, derived.ring_reset_params(rec)))
                else:
                    metrics.DB_WRITE_ERRORS.labels(kind="bad_record").inc()
                    log.warning("unknown ring record kind skipped", extra={"kind": rec[0]})
            except (struct.error, ValueError, IndexError) as e:
                # A record the writer cannot parse must not stop every later one (it would come
                # back after each restart); it is counted and skipped.
                metrics.DB_WRITE_ERRORS.labels(kind="bad_record").inc()
                log.error("unreadable ring record skipped", extra={"error": str(e), "size": len(rec)})
        if last_id is not None:
            self.last_ids[ring] = last_id
        self.records += len(recs)


def event_peers(recs: list[bytes]) -> set[bytes]:
    """Peer ids of the EVENT records in ``recs`` (the node keys a batch needs)."""
    return {event_peer_id(rec) for rec in recs if len(rec) >= EVENT_HEADER_SIZE and rec[0] == KIND_EVENT}
