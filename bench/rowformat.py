"""What each index of the event table costs per row, for the compact rows and for the old format.

The same N events of tart-loadgen's mix (its own templates and pacing, replayed offline: the
frames loadgen would send from ``--nodes`` nodes at ``--rate`` events/s each, in arrival order)
are binary-COPYed, 10k rows per durable COPY, into fresh tables shaped like:

- ``event_rows`` (compact: int node key, wire payload), its indexes read from the migrated
  schema, so the figures follow the schema when it changes;
- the v3 ``events`` table (64-hex node_id, JSONB data), btree (id), (node_id, id),
  (event_type, id), BRIN (timestamp): the baseline.

For each format: the heap alone, the heap with each index alone, and all indexes; rows/s and
bytes/row (heap and each index). Bench helpers here are shared with bench/ingest.py and
bench/copy_ceiling.py.

    .venv/bin/python bench/rowformat.py [--dsn DSN] [--rows 300000] [--nodes 1024] [--rate 10]

Without --dsn a private cluster with tart's default (durable) settings is started under /tmp.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import psycopg

from tart.engine import copyfmt
from tart.engine.codec import JCE_EPOCH_UNIX_US
from tart.engine.codec.events import decode_event
from tart.engine.loadgen import (
    FRAMES_PER_WRITE,
    MAX_TICK_S,
    TEMPLATES_PER_CORE_COUNT,
    TICK_S,
    Node,
    Template,
    build_template,
    make_node_info,
)

COPY_BATCH = 10_000
OLD_COLUMNS = ("id", "node_id", "event_id", "event_type", "timestamp", "data", "created_at", "raw", "decode_error")
# The v3 table as 001_init.sql and 003_events_timestamp_brin.sql made it.
OLD_TABLE_SQL = """CREATE TABLE {t} (
    id BIGINT NOT NULL, node_id TEXT NOT NULL, event_id BIGINT NOT NULL, event_type SMALLINT NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL, data JSONB, created_at TIMESTAMPTZ NOT NULL, raw BYTEA, decode_error TEXT
) PARTITION BY RANGE (created_at)"""
OLD_INDEXES = (("id", "USING btree (id)"), ("node_id_id", "USING btree (node_id, id)"),
               ("type_id", "USING btree (event_type, id)"), ("ts_brin", "USING brin (timestamp)"))
NEW_TABLE_SQL = "CREATE TABLE {t} (LIKE event_rows) PARTITION BY RANGE (created_at)"

_I8 = struct.Struct(">q")
_OLD_HEAD = struct.Struct(">hiqi")  # field count, id; then node_id's length
_OLD_MID = struct.Struct(">iqihiqi")  # event_id, event_type, timestamp; then data's length
_OLD_TAIL = struct.Struct(">iqii")  # created_at, raw NULL, decode_error NULL
_NULL = -1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line() -> str:
    la = os.getloadavg()
    return (f"machine: {cpu_model()}, nproc {os.cpu_count()}, Python {platform.python_version()}, "
            f"load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")


def load1() -> float:
    return round(os.getloadavg()[0], 2)


# --- the loadgen mix, offline --------------------------------------------------------------

class Ev(NamedTuple):
    """One event as tart would receive it."""

    node: int
    peer_id: bytes
    ring: int  # acceptor ring (low 6 bits of the id)
    id: int
    received_at: int  # unix µs
    timestamp: int  # JIP-3 µs since the JAM epoch
    event_id: int
    event_type: int
    frame: bytes  # timestamp, discriminator, fields (no length prefix)
    cores: int


class _Capture:
    """Stands in for a node's transport: keeps what loadgen writes."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)


def loadgen_events(n: int, nodes: int = 1024, rate: float = 10.0, seed: int = 0, rings: int = 2) -> list[Ev]:
    """``n`` events of loadgen's default mix, built by loadgen's own nodes and pacing on a
    simulated clock (so Status frames come every 2 s per node, as on the wire), in arrival order.
    Node ``i`` uses C = 2 or 341 alternately and ring ``i % rings``, as loadgen and 2 acceptors do."""
    rng = random.Random(seed)
    templates: dict[int, list[Template]] = {}
    node_list: list[Node] = []
    caps: list[_Capture] = []
    for i in range(nodes):
        c = 2 if i % 2 == 0 else 341
        if c not in templates:
            templates[c] = [build_template(random.Random(f"{seed}/{c}/{k}"), "default", c)
                            for k in range(TEMPLATES_PER_CORE_COUNT)]
        tpl = templates[c][i % TEMPLATES_PER_CORE_COUNT]
        # closed= given: its default needs a running event loop, and nothing here awaits it.
        node = Node(i, make_node_info(rng, c, i), tpl, rate, 0, closed=None)  # type: ignore[arg-type]
        node.ids = [0] * len(tpl)
        node.last_status = -1e9
        node.open = True
        cap = _Capture()
        node.transport = cap  # type: ignore[assignment]
        node_list.append(node)
        caps.append(cap)
    tick = min(MAX_TICK_S, max(TICK_S, FRAMES_PER_WRITE / rate))
    burst_cap = max(1, int(rate * 0.5))
    start_us = time.time_ns() // 1000
    out: list[Ev] = []
    eids = [0] * nodes
    t = 0.0
    last_ra = 0
    while len(out) < n:
        t += tick
        now_us = start_us + int(t * 1e6)
        for node, cap in zip(node_list, caps, strict=True):
            due = int(rate * t) - node.sent
            if due <= 0:
                continue
            node.send(min(due, burst_cap), t)
            for chunk in cap.chunks:
                pos = 0
                while pos < len(chunk):
                    (ln,) = struct.unpack_from("<I", chunk, pos)
                    frame = chunk[pos + 4:pos + 4 + ln]
                    pos += 4 + ln
                    ts, et = struct.unpack_from("<QB", frame)
                    # Arrival times strictly rise so ids are unique across rings as well.
                    last_ra = max(last_ra + 1, now_us)
                    ring = node.index % rings
                    out.append(Ev(node.index, node.info.peer_id, ring, (last_ra << 6) | ring, last_ra,
                                  ts, eids[node.index], et, frame, node.tpl.core_count))
                    eids[node.index] += 1  # loadgen's mix has no Dropped: one id per event
            cap.chunks.clear()
            if len(out) >= n:
                break
    # The frames carry loadgen's real send time; the simulated clock runs ahead of it, and a
    # node's clock shows its events sent shortly before tart receives them.
    fixed = []
    for e in out[:n]:
        ts = e.received_at - JCE_EPOCH_UNIX_US - 500
        fixed.append(e._replace(timestamp=ts, frame=struct.pack("<Q", ts) + e.frame[8:]))
    return fixed


def new_rows(evs: Sequence[Ev], node_keys: dict[bytes, int]) -> list[bytes]:
    """Binary COPY tuples of event_rows, exactly as the writer builds them."""
    return [copyfmt.fast_row(e.id, e.event_id, e.timestamp, e.received_at, node_keys[e.peer_id], e.event_type,
                             e.frame[9:]) for e in evs]


def old_rows(evs: Sequence[Ev]) -> list[bytes]:
    """Binary COPY tuples of the v3 ``events`` table (JSONB data, raw NULL for a decoded event)."""
    out = []
    pg = copyfmt.PG_EPOCH_UNIX_US
    hexes: dict[bytes, bytes] = {}
    for e in evs:
        node_id = hexes.get(e.peer_id)
        if node_id is None:
            node_id = hexes[e.peer_id] = e.peer_id.hex().encode()
        data = b"\x01" + decode_event(e.frame, e.cores).json()  # jsonb binary: version 1, then text
        out.append(b"".join((
            _OLD_HEAD.pack(len(OLD_COLUMNS), 8, e.id, len(node_id)), node_id,
            _OLD_MID.pack(8, e.event_id, 2, e.event_type, 8, e.timestamp + copyfmt.JCE_TO_PG_US, len(data)), data,
            _OLD_TAIL.pack(8, e.received_at - pg, _NULL, _NULL),
        )))
    return out


def copy_blobs(rows: Sequence[bytes], batch: int = COPY_BATCH) -> list[bytes]:
    return [copyfmt.copy_stream(list(rows[k:k + batch])) for k in range(0, len(rows), batch)]


def split_copy(blob: bytes) -> list[bytes]:
    """The tuples of a binary COPY stream (header and trailer removed)."""
    pos = len(copyfmt.COPY_HEADER)
    out = []
    while True:
        (count,) = struct.unpack_from(">h", blob, pos)
        if count == -1:
            return out
        end = pos + 2
        for _ in range(count):
            (ln,) = struct.unpack_from(">i", blob, end)
            end += 4 + max(ln, 0)
        out.append(blob[pos:end])
        pos = end


def shifted_ids(tuples: Sequence[bytes], offset: int) -> list[bytes]:
    """The tuples with ``offset`` added to their first column (the id), so repeated copies of one
    sample are new rows to the indexes (repeated keys would shrink the btrees by deduplication)."""
    pack = _I8.pack
    return [t[:6] + pack(_I8.unpack_from(t, 6)[0] + offset) + t[14:] for t in tuples]


def repeated_blobs(tuples: Sequence[bytes], total: int) -> list[bytes]:
    """COPY streams of ``len(tuples)`` rows each, ``total`` rows in all, ids shifted per copy
    past the sample's id span (a multiple of 64 keeps each id's ring bits)."""
    ids = [_I8.unpack_from(t, 6)[0] for t in tuples]
    span = ((max(ids) - min(ids)) >> 6) + 1 << 6
    out = []
    done, rep = 0, 0
    while done < total:
        out.append(copyfmt.copy_stream(shifted_ids(tuples, rep * span)))
        done += len(tuples)
        rep += 1
    return out


# --- tables and sizes ------------------------------------------------------------------------

_INDEXDEF = re.compile(r"^CREATE (UNIQUE )?INDEX (\S+) ON (?:ONLY )?\S+ (USING .*)$")


def index_specs(conn: psycopg.Connection, table: str = "event_rows") -> list[tuple[str, str]]:
    """(name, "USING ...") of every index of ``table`` as the schema defines it."""
    out = []
    for name, d in conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s ORDER BY 1",
                                (table,)):
        m = _INDEXDEF.match(d)
        if m is None:
            raise RuntimeError(f"cannot parse index definition: {d}")
        out.append((name.removeprefix(table + "_"), ("UNIQUE " if m.group(1) else "") + m.group(3)))
    return out


def create_table(conn: psycopg.Connection, name: str, table_sql: str, indexes: Sequence[tuple[str, str]]) -> None:
    """A table partitioned by created_at with one partition that takes every row, and ``indexes``."""
    conn.execute(f"DROP TABLE IF EXISTS {name}")
    conn.execute(table_sql.format(t=name))
    conn.execute(f"CREATE TABLE {name}_all PARTITION OF {name} FOR VALUES FROM (MINVALUE) TO (MAXVALUE)")
    for iname, using in indexes:
        unique = "UNIQUE " if using.startswith("UNIQUE ") else ""
        conn.execute(f"CREATE {unique}INDEX {name}_{iname} ON {name} {using.removeprefix('UNIQUE ')}")


def relation_bytes(conn: psycopg.Connection, parent: str) -> tuple[int, int, dict[str, int]]:
    """(total, heap, {index: bytes}) summed over the partitions of ``parent``: total is
    pg_total_relation_size, heap is pg_table_size (main fork, TOAST, free space and visibility
    maps), indexes are named by the parent index they belong to, without the table's prefix."""
    parts = [r[0] for r in conn.execute(
        "SELECT inhrelid FROM pg_inherits WHERE inhparent = %s::regclass", (parent,))]
    if not parts:
        return 0, 0, {}
    total, heap = conn.execute(
        "SELECT coalesce(sum(pg_total_relation_size(p)), 0), coalesce(sum(pg_table_size(p)), 0)"
        " FROM unnest(%s::oid[]) p", (parts,)).fetchone()
    idx: dict[str, int] = {}
    for pname, size in conn.execute(
            "SELECT coalesce(pi.inhparent::regclass::text, i.indexrelid::regclass::text),"
            " sum(pg_relation_size(i.indexrelid))"
            " FROM pg_index i LEFT JOIN pg_inherits pi ON pi.inhrelid = i.indexrelid"
            " WHERE i.indrelid = ANY(%s::oid[]) GROUP BY 1 ORDER BY 1", (parts,)):
        idx[pname.removeprefix(parent + "_")] = int(size)
    return int(total), int(heap), idx


def timed_copy(conn: psycopg.Connection, table: str, columns: Sequence[str], blobs: Sequence[bytes]) -> float:
    """Seconds to COPY every blob, each its own durable transaction (``conn`` is autocommit)."""
    sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    t0 = time.perf_counter()
    for blob in blobs:
        with conn.cursor().copy(sql) as cp:
            cp.write(blob)
    return time.perf_counter() - t0


class Load(NamedTuple):
    rows_s: float
    total: int
    heap: int
    indexes: dict[str, int]
    load1: float


def measure(conn: psycopg.Connection, name: str, table_sql: str, indexes: Sequence[tuple[str, str]],
            columns: Sequence[str], blobs: Sequence[bytes], rows: int) -> Load:
    """COPY ``blobs`` into a fresh table; its rate and sizes. The table is dropped afterwards."""
    create_table(conn, name, table_sql, indexes)
    conn.execute("CHECKPOINT")  # the previous table's dirty pages must not be flushed on this one's clock
    el = timed_copy(conn, name, columns, blobs)
    total, heap, idx = relation_bytes(conn, name)
    result = Load(rows / el, total, heap, idx, load1())
    conn.execute(f"DROP TABLE {name}")
    return result


# --- the benchmark -----------------------------------------------------------------------------

def _print_format(title: str, rows: int, results: list[tuple[str, Load]], index_names: list[str]) -> None:
    print(f"\n{title}: {rows} rows, {COPY_BATCH} rows per durable COPY; bytes per row")
    head = f"{'indexes':<26}{'rows/s':>9}{'total':>7}{'heap':>6}" + "".join(f"{n:>12}" for n in index_names)
    print(head + f"{'load1':>7}")
    for label, r in results:
        cells = "".join(f"{r.indexes[n] / rows:>12.1f}" if n in r.indexes else f"{'':>12}" for n in index_names)
        print(f"{label:<26}{r.rows_s:>9,.0f}{r.total / rows:>7.1f}{r.heap / rows:>6.1f}{cells}{r.load1:>7}")


def run_format(conn: psycopg.Connection, tag: str, table_sql: str, indexes: list[tuple[str, str]],
               columns: Sequence[str], blobs: list[bytes], rows: int) -> list[tuple[str, Load]]:
    plans: list[tuple[str, list[tuple[str, str]]]] = [("heap only", [])]
    plans += [(f"+ {n} alone", [(n, u)]) for n, u in indexes]
    plans.append(("all indexes", indexes))
    out = []
    for label, idx in plans:
        r = measure(conn, f"bench_rowfmt_{tag}", table_sql, idx, columns, blobs, rows)
        out.append((label, r))
        print(f"  {tag} {label}: {r.rows_s:,.0f} rows/s, {r.total / rows:.1f} B/row,"
              f" load1 {r.load1}", flush=True)
    return out


def run(dsn: str, args: argparse.Namespace) -> None:
    print(machine_line())
    t0 = time.perf_counter()
    evs = loadgen_events(args.rows, args.nodes, args.rate, args.seed)
    peers = sorted({e.peer_id for e in evs})
    keys = {p: i + 1 for i, p in enumerate(peers)}
    new = new_rows(evs, keys)
    old = old_rows(evs)
    new_blobs, old_blobs = copy_blobs(new), copy_blobs(old)
    payload = sum(len(e.frame) - 9 for e in evs) / len(evs)
    js = sum(len(r) for r in old) / len(old)
    status = sum(1 for e in evs if e.event_type == 10) / len(evs)
    print(f"rows: {len(evs)} of the loadgen default mix ({len(peers)} nodes at {args.rate:g} events/s each, "
          f"C = 2/341 alternating, {status:.1%} Status), average payload {payload:.0f} B, "
          f"COPY tuple: new {sum(map(len, new)) / len(new):.0f} B, old {js:.0f} B "
          f"(built in {time.perf_counter() - t0:.1f} s)")
    with psycopg.connect(dsn, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        settings = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name IN"
                                     " ('synchronous_commit', 'fsync', 'shared_buffers', 'wal_compression')"))
        print(f"PostgreSQL {version}: " + " ".join(f"{k}={v}" for k, v in sorted(settings.items())), flush=True)
        new_idx = index_specs(conn)
        print("compact indexes (from the schema): " + "; ".join(f"{n} {u}" for n, u in new_idx))
        new_res = run_format(conn, "new", NEW_TABLE_SQL, new_idx, copyfmt.COLUMNS, new_blobs, len(evs))
        old_res = run_format(conn, "old", OLD_TABLE_SQL, list(OLD_INDEXES), OLD_COLUMNS, old_blobs, len(evs))
    _print_format("compact event_rows (int node key, wire payload)", len(evs), new_res, [n for n, _ in new_idx])
    _print_format("old v3 events (node_id text, JSONB data)", len(evs), old_res, [n for n, _ in OLD_INDEXES])
    n_all, o_all = new_res[-1][1], old_res[-1][1]
    print(f"\nall indexes: compact {n_all.rows_s:,.0f} rows/s {n_all.total / len(evs):.1f} B/row; "
          f"old {o_all.rows_s:,.0f} rows/s {o_all.total / len(evs):.1f} B/row; "
          f"compact/old rate {n_all.rows_s / o_all.rows_s:.2f}x, size {o_all.total / n_all.total:.2f}x smaller")
    print(machine_line())


@contextlib.contextmanager
def bench_database(dsn: str, prefix: str, settings: dict[str, str] | None = None,
                   migrated: bool = True) -> Iterator[tuple[str, Path]]:
    """(DSN, scratch dir) for a benchmark: ``dsn`` if given, else a private cluster under /tmp
    (stopped and removed afterwards); migrated unless told otherwise. A database error ends the
    benchmark with its message."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    root.chmod(0o755)  # the cluster's own user must enter it
    cluster = None
    try:
        if not dsn:
            from tart.engine.pgcluster import EmbeddedCluster

            cluster = EmbeddedCluster(root / "var", settings=settings)
            dsn = cluster.start()
        if migrated:
            from tart.engine.migrate import migrate

            migrate(dsn)
        yield dsn, root
    except psycopg.Error as e:
        raise SystemExit(f"database error: {e}") from e
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsn", default="", help="server to use (default: a private cluster under /tmp)")
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--nodes", type=int, default=1024)
    ap.add_argument("--rate", type=float, default=10.0, help="events/s per node (sets the Status share)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with bench_database(args.dsn, "tart-bench-rowfmt-") as (dsn, _root):
        run(dsn, args)

if __name__ == "__main__":
    main()
