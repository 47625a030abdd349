"""``tart-export --format parquet``: the export rows as a typed Parquet file (pyarrow, the
``parquet`` extra), readable by DuckDB, pandas, polars and Spark.

It consumes exactly the row tuples that ``tart.engine.export.iter_batches`` yields for JSON lines
(id, node_id, event_id, event_type, timestamp text, data JSON text, node_name, node_version,
received_at text, decode_error[, raw]), so it does not depend on how the query is built. Columns:

| column | type |
|---|---|
| id, event_id | int64 |
| node_id | string (64 hex) |
| event_type | int16 |
| event_name | string: the event's JSON tag (``BestBlockChanged``), null when it failed to decode |
| timestamp, received_at | timestamp[us, UTC] |
| data | string: the event's fields as JSON (``{"Tag": {...}}``; DuckDB: ``data::JSON``) |
| node_name, node_version | string |
| decode_error | string, null unless the event failed to decode |
| raw | binary, only with ``--raw`` |

One row group per fetched batch, zstd-compressed: memory stays bounded by the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

import orjson


class ParquetUnavailable(RuntimeError):
    """pyarrow is not installed (``pip install 'tart-backend[parquet]'``)."""


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ParquetUnavailable("--format parquet needs pyarrow: pip install 'tart-backend[parquet]'") from e
    return pa, pq


def schema(raw: bool = False) -> Any:
    """The Arrow schema of the file."""
    pa, _ = _pyarrow()
    ts = pa.timestamp("us", tz="UTC")
    fields = [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("node_id", pa.string(), nullable=False),
        pa.field("event_id", pa.int64(), nullable=False),
        pa.field("event_type", pa.int16(), nullable=False),
        pa.field("event_name", pa.string()),
        pa.field("timestamp", ts, nullable=False),
        pa.field("data", pa.string(), metadata={"format": "json"}),
        pa.field("node_name", pa.string()),
        pa.field("node_version", pa.string()),
        pa.field("received_at", ts, nullable=False),
        pa.field("decode_error", pa.string()),
    ]
    if raw:
        fields.append(pa.field("raw", pa.binary()))
    return pa.schema(fields, metadata={"producer": "tart-export"})


def _event_name(data: str | None) -> str | None:
    if data is None:
        return None
    # data is {"Tag": {...}}: one key, the name.
    obj = orjson.loads(data)
    return next(iter(obj), None) if isinstance(obj, dict) else None


def _table(rows: Sequence[Sequence[Any]], sch: Any, raw: bool) -> Any:
    pa, _ = _pyarrow()
    cols = list(zip(*rows, strict=True)) if rows else [()] * 11
    text_ts = pa.string()
    arrays = [
        pa.array(cols[0], pa.int64()),
        pa.array(cols[1], pa.string()),
        pa.array(cols[2], pa.int64()),
        pa.array(cols[3], pa.int16()),
        pa.array([_event_name(d) for d in cols[5]], pa.string()),
        # The rows carry RFC 3339 text (formatted by PostgreSQL); Arrow parses it exactly.
        pa.array(cols[4], text_ts).cast(sch.field("timestamp").type),
        pa.array(cols[5], pa.string()),
        pa.array(cols[6], pa.string()),
        pa.array(cols[7], pa.string()),
        pa.array(cols[8], text_ts).cast(sch.field("received_at").type),
        pa.array(cols[9], pa.string()),
    ]
    if raw:
        arrays.append(pa.array([None if r is None else bytes(r) for r in cols[10]], pa.binary()))
    return pa.Table.from_arrays(arrays, schema=sch)


def write_parquet(batches: Iterable[Sequence[Sequence[Any]]], out: IO[bytes], raw: bool = False,
                  progress: Callable[[int], None] | None = None) -> int:
    """Write ``batches`` (lists of export row tuples) to the binary stream ``out`` as one Parquet
    file; returns the row count. ``progress(rows_so_far)`` is called after each batch."""
    _, pq = _pyarrow()
    sch = schema(raw)
    count = 0
    with pq.ParquetWriter(out, sch, compression="zstd") as writer:
        for rows in batches:
            if not rows:
                continue
            writer.write_table(_table(rows, sch, raw))
            count += len(rows)
            if progress is not None:
                progress(count)
    return count
