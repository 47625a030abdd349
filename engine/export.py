"""`tart-export`: stream stored events out of PostgreSQL as JSON lines or CSV.

Rows come through a server-side (named) cursor, a few thousand at a time, and are written as they
arrive: an export of any size runs in constant memory, and a reader of stdout sees the first line
long before the last row has been fetched. The envelope is the REST one (``/api/events``): id,
node_id, event_id, event_type, timestamp, data, node_name, node_version, received_at and, for an
event that failed to decode, decode_error; timestamps are RFC 3339 UTC with ``Z`` and microseconds.

Database: ``--database-url``, else DATABASE_URL / TART_CONFIG as for tart-backend, else tart's
embedded cluster under TART_DATA_DIR (started for the export and stopped again only if it was not
already running).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import io
import os
import re
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
import psycopg

from tart import add_version_flag
from tart.engine import config as config_mod
from tart.engine import eventrows
from tart.engine.db import connect
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
from tart.engine.timefmt import fmt_unix_us, parse_time, unix_us_to_dt

# Column order of the CSV header, and key order of a JSON line.
EXPORT_FIELDS: tuple[str, ...] = (
    "id", "node_id", "event_id", "event_type", "timestamp", "data",
    "node_name", "node_version", "received_at", "decode_error",
)
DEFAULT_ITERSIZE = 5000
TIME_FIELDS = {"timestamp": "e.timestamp", "received_at": "e.created_at"}
_TABLE = re.compile(r"^(events|event_rows)(_\d{8})?$")  # all events or one daily partition


class ExportError(Exception):
    """A usage or database problem; the message is meant for the operator."""


@dataclass(frozen=True)
class Filters:
    """Which events to export. Times are unix microseconds; ``since`` inclusive, ``until`` exclusive."""

    since_us: int | None = None
    until_us: int | None = None
    node_ids: tuple[str, ...] = ()
    event_types: tuple[int, ...] = ()
    time_field: str = "timestamp"  # "timestamp" (the event's own time, as REST) or "received_at"




def build_query(filters: Filters, table: str = "event_rows") -> tuple[str, list[Any]]:
    """The SELECT for ``filters`` over ``table`` (``event_rows`` or one of its partitions), ordered by id."""
    if filters.time_field not in TIME_FIELDS:
        raise ExportError(f"time field must be one of {', '.join(TIME_FIELDS)}")
    if not _TABLE.match(table):
        raise ExportError(f"not an events table: {table!r}")
    column = TIME_FIELDS[filters.time_field]
    sql = eventrows.SELECT.format(table=f'"{table}"')
    where: list[str] = []
    args: list[Any] = []
    if filters.since_us is not None:
        where.append(f"{column} >= %s")
        args.append(unix_us_to_dt(filters.since_us))
    if filters.until_us is not None:
        where.append(f"{column} < %s")
        args.append(unix_us_to_dt(filters.until_us))
    if filters.node_ids:
        where.append("e.node_key IN (SELECT node_key FROM nodes WHERE node_id = ANY(%s))")
        args.append(list(filters.node_ids))
    if filters.event_types:
        where.append("e.event_type = ANY(%s::smallint[])")
        args.append(list(filters.event_types))
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql + " ORDER BY e.id", args


def _partitions(conn: psycopg.Connection, table: str) -> list[tuple[str, int]]:
    """(partition, day start µs) to read for ``table``, oldest first."""
    if table.startswith("event_rows_"):
        start = eventrows.partition_day_start_us(table)
        return [(table, start or 0)]
    return [(name, start) for (name,) in conn.execute(eventrows.PARTITIONS_SQL).fetchall()
            if (start := eventrows.partition_day_start_us(name)) is not None]


def iter_batches(conn: psycopg.Connection, filters: Filters, table: str = "event_rows", raw: bool = False,
                 itersize: int = DEFAULT_ITERSIZE, ordered: bool = True) -> Iterator[list[tuple]]:
    """Rows in lists of at most ``itersize``, one daily partition after the other, each through a
    server-side cursor (which needs a connection outside autocommit: the cursor lives in the
    transaction). ``ordered``: in id order within each partition (the server sorts one day at a
    time); off, in the order they are stored (what retention archives use: no sort of a whole
    day before it is dropped)."""
    if table == "events":
        table = "event_rows"
    sql, args = build_query(filters, table)
    if not ordered:
        sql = sql.removesuffix(" ORDER BY e.id")
    for name, _start in _partitions(conn, table):
        part_sql = sql.replace('"event_rows"', f'"{name}"', 1) if name != table else sql
        with conn.cursor(name="tart_export") as cur:
            cur.itersize = itersize
            cur.execute(part_sql, args)
            while rows := cur.fetchmany(itersize):
                yield [_render(r, raw) for r in rows]


def _render(r: tuple, raw: bool) -> tuple:
    """(id, node_id, event_id, event_type, timestamp, data JSON, node_name, node_version,
    received_at, decode_error, raw bytes or None): the export fields in EXPORT_FIELDS order."""
    data = eventrows.event_data(r[R_TYPE], r[R_TS], r[R_PAYLOAD], r[R_ERROR])
    return (r[R_ID], r[R_NODE], r[R_EID], r[R_TYPE], fmt_unix_us(r[R_TS]),
            None if data is None else orjson.dumps(data).decode(), r[R_NAME] or "", r[R_VERSION] or "",
            fmt_unix_us(r[R_CREATED]), r[R_ERROR],
            bytes(r[R_PAYLOAD]) if raw and r[R_ERROR] is not None else None)


def jsonl_line(row: Sequence[Any]) -> bytes:
    """One envelope as a JSON line, keys in EXPORT_FIELDS order; decode_error (and raw, as 0x-hex)
    only when present, as the REST API does."""
    env: dict[str, Any] = {
        "id": row[0],
        "node_id": row[1],
        "event_id": row[2],
        "event_type": row[3],
        "timestamp": row[4],
        "data": None if row[5] is None else orjson.Fragment(row[5]),
        "node_name": row[6],
        "node_version": row[7],
        "received_at": row[8],
    }
    if row[9] is not None:
        env["decode_error"] = row[9]
    if len(row) > 10 and row[10] is not None:
        env["raw"] = "0x" + bytes(row[10]).hex()
    return orjson.dumps(env) + b"\n"


def csv_fields(raw: bool = False) -> list[str]:
    return [*EXPORT_FIELDS, "raw"] if raw else list(EXPORT_FIELDS)


def csv_values(row: Sequence[Any], raw: bool = False) -> list[Any]:
    """CSV cells: data as JSON text, empty cells for NULL."""
    values = ["" if v is None else v for v in row[:10]]
    if raw:
        values.append("" if row[10] is None else "0x" + bytes(row[10]).hex())
    return values


def write_events(conn: psycopg.Connection, out: IO[bytes], fmt: str = "jsonl",
                 filters: Filters | None = None, table: str = "event_rows", raw: bool = False,
                 itersize: int = DEFAULT_ITERSIZE, flush: bool = True, ordered: bool = True) -> int:
    """Stream matching events into the binary stream ``out``; returns how many were written.
    With ``flush``, ``out`` is flushed after every batch so that a reader sees progress (turn it
    off for a gzip stream: each flush ends a deflate block). ``table`` may be one daily
    partition (``event_rows_YYYYMMDD``): retention archives are written this way, so an archive line
    is exactly a ``tart-export --raw`` line."""
    filters = filters or Filters()
    count = 0
    if fmt == "jsonl":
        for rows in iter_batches(conn, filters, table, raw, itersize, ordered):
            out.write(b"".join(jsonl_line(r) for r in rows))
            if flush:
                out.flush()
            count += len(rows)
    elif fmt == "csv":
        text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=flush)
        try:
            writer = csv.writer(text)
            writer.writerow(csv_fields(raw))
            for rows in iter_batches(conn, filters, table, raw, itersize, ordered):
                writer.writerows(csv_values(r, raw) for r in rows)
                if flush:
                    text.flush()
                count += len(rows)
        finally:
            text.detach()  # leave ``out`` open for the caller
    else:
        raise ExportError(f"unknown format {fmt!r} (jsonl or csv)")
    if flush:
        out.flush()
    return count


@contextlib.contextmanager
def _database(url: str | None) -> Iterator[str]:
    """The DSN to export from; an embedded cluster this call had to start is stopped afterwards."""
    if url:
        yield url
        return
    try:
        settings = config_mod.load()
    except config_mod.ConfigError as e:
        raise ExportError(f"invalid configuration: {e}") from None
    if settings.database_url:
        yield settings.database_url
        return
    from tart.engine.db import resolve_database
    from tart.engine.pgcluster import EmbeddedCluster

    if not (settings.data_path / "pg" / "PG_VERSION").is_file():
        raise ExportError(f"no DATABASE_URL and no embedded cluster in {settings.data_path / 'pg'}; "
                          "pass --database-url or set TART_DATA_DIR")
    # tart-backend may be running on this cluster: never stop a server this export did not start.
    was_running = EmbeddedCluster(settings.data_path, bin_dir=settings.pg_bin_dir).running()
    dsn, cluster = resolve_database(settings)
    try:
        yield dsn
    finally:
        if cluster is not None and not was_running:
            cluster.stop()


def _csv_list(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tart-export",
        description="Stream stored telemetry events as JSON lines, CSV (the REST envelope) or Parquet.",
        epilog="Filters take the REST API's names: --event-type and --node-id (--type and --node are "
               "the older spellings). A progress line goes to stderr when it is a terminal.")
    add_version_flag(p)
    p.add_argument("--since", required=True, help="start, inclusive: RFC 3339 time, date, or unix seconds")
    p.add_argument("--until", default=None,
                   help="end, exclusive: RFC 3339 time, date, or unix seconds (default: now)")
    p.add_argument("--node-id", "--node", dest="node", action="append", metavar="NODE_ID",
                   help="only this node (64 hex chars); repeat or comma-separate for several")
    p.add_argument("--event-type", "--type", dest="type", action="append", metavar="TYPE",
                   help="only this event type, a number or a name (BestBlockChanged); repeat or "
                        "comma-separate for several")
    p.add_argument("--time-field", choices=sorted(TIME_FIELDS), default="timestamp",
                   help="which time --since/--until apply to: the event's own timestamp (default, as "
                        "the REST API) or received_at (arrival; matches the daily partitions)")
    p.add_argument("--format", choices=("jsonl", "csv", "parquet"), default="jsonl",
                   help="jsonl (default), csv, or parquet (typed columns; needs the parquet extra, pyarrow)")
    p.add_argument("--raw", action="store_true", help="add the stored wire bytes (0x-hex) where kept")
    p.add_argument("--database-url", help="PostgreSQL DSN (default: DATABASE_URL, else the embedded cluster)")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="write here instead of stdout (gzip-compressed if FILE ends in .gz, except for "
                        "parquet, which compresses itself); written to FILE.part and renamed when complete")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress on stderr (default: when stderr is a terminal)")
    p.add_argument("--itersize", type=int, default=DEFAULT_ITERSIZE, help=argparse.SUPPRESS)
    return p


def _event_type(text: str) -> int:
    if text.isdigit():
        return int(text)
    from tart.engine.codec import EventType

    try:
        return int(EventType[text])
    except KeyError:
        raise ValueError(f"unknown event type {text!r} (a number, or a name such as BestBlockChanged)") from None


class _Progress:
    """Counts what goes to ``out`` and rewrites one stderr line at most every half second."""

    def __init__(self, out: IO[bytes], enabled: bool) -> None:
        self.out = out
        self.enabled = enabled
        self.bytes = 0
        self.events: int | None = None
        self.t0 = self.last = time.monotonic()

    def write(self, data: bytes) -> int:
        n = self.out.write(data)
        self.bytes += len(data)
        self.tick()
        return n

    def flush(self) -> None:
        self.out.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.out, name)

    def rows(self, count: int) -> None:
        self.events = count
        self.tick()

    def line(self) -> str:
        dt = max(time.monotonic() - self.t0, 1e-9)
        what = f"{self.events:,} events, " if self.events is not None else ""
        return f"tart-export: {what}{self.bytes / 2**20:,.1f} MiB ({self.bytes / 2**20 / dt:,.1f} MiB/s)"

    def tick(self, final: bool = False) -> None:
        now = time.monotonic()
        if self.enabled and (final or now - self.last >= 0.5):
            self.last = now
            sys.stderr.write("\r" + self.line() + "\x1b[K" + ("\n" if final else ""))
            sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        filters = Filters(
            since_us=parse_time(args.since),
            until_us=parse_time(args.until) if args.until is not None else time.time_ns() // 1000,
            node_ids=tuple(n.lower() for n in _csv_list(args.node)),
            event_types=tuple(_event_type(t) for t in _csv_list(args.type)),
            time_field=args.time_field,
        )
    except ValueError as e:
        print(f"tart-export: {e}", file=sys.stderr)
        return 2
    if args.itersize <= 0:
        print("tart-export: --itersize must be > 0", file=sys.stderr)
        return 2
    if args.format == "parquet":
        from tart.engine import export_parquet

        try:
            export_parquet.schema()
        except export_parquet.ParquetUnavailable as e:
            print(f"tart-export: {e}", file=sys.stderr)
            return 2
        if not args.output and sys.stdout.isatty():
            print("tart-export: Parquet is binary: pass --output FILE or redirect stdout", file=sys.stderr)
            return 2
    # Behave like other Unix filters in a pipeline (`tart-export ... | head`): die quietly on EPIPE.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        with _database(args.database_url) as dsn:
            count = _run(dsn, args, filters)
    except ExportError as e:
        print(f"tart-export: {e}", file=sys.stderr)
        return 2
    except (psycopg.Error, OSError) as e:
        print(f"tart-export: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args.output:
        print(f"tart-export: {count} events -> {args.output}", file=sys.stderr)
    return 0


def _write(conn: psycopg.Connection, out: IO[bytes], args: argparse.Namespace, filters: Filters,
           flush: bool) -> int:
    show = sys.stderr.isatty() if args.progress is None else args.progress
    counted = _Progress(out, show)
    if args.format == "parquet":
        from tart.engine.export_parquet import write_parquet

        count = write_parquet(iter_batches(conn, filters, raw=args.raw, itersize=args.itersize), counted,
                              raw=args.raw, progress=counted.rows)
    else:
        count = write_events(conn, counted, args.format, filters, raw=args.raw, itersize=args.itersize,  # type: ignore[arg-type]
                             flush=flush)
    counted.events = count
    counted.tick(final=True)
    return count


def _run(dsn: str, args: argparse.Namespace, filters: Filters) -> int:
    with connect(dsn, application_name="tart-export") as conn:
        # A consistent snapshot, and nothing this session could write by mistake.
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        if not args.output:
            return _write(conn, sys.stdout.buffer, args, filters, flush=True)
        final = Path(args.output)
        part = final.with_name(final.name + ".part")
        gz = final.name.endswith(".gz") and args.format != "parquet"
        try:
            with (gzip.open(part, "wb") if gz else open(part, "wb")) as out:
                count = _write(conn, out, args, filters, flush=not gz)
            os.replace(part, final)
        except BaseException:
            with contextlib.suppress(OSError):
                part.unlink()
            raise
        return count


if __name__ == "__main__":
    sys.exit(main())
