"""Helpers for the web-tier tests (no tests here): gunicorn running tart.web in a subprocess, real
shared-memory rings, and PostgreSQL rows written the way the writer writes them."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg
import pytest
import requests
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from tart.engine import copyfmt, nodekeys
from tart.engine.codec import EVENT_NAMES, decode_event, encode_event
from tart.engine.codec.jce import JCE_EPOCH_UNIX_US
from tart.engine.db import connect
from tart.engine.loadgen import _value
from tart.engine.migrate import ensure_partitions, migrate
from tart.engine.record import FLAG_MALFORMED, pack_event, pack_node_up, unpack_event
from tart.engine.ring import Ring

VENV_BIN = Path(sys.executable).parent
CORES = 2  # the core count of the events TestRing makes
_names = itertools.count(1)


def _die_with_parent() -> None:
    # A test run that is killed (timeout, ^C) must not leave gunicorn serving behind it.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_id(i: int) -> str:
    return f"{i:02x}" * 32


# --- database -------------------------------------------------------------------------------

@contextlib.contextmanager
def module_db(pg_server: str) -> Iterator[str]:
    """A new migrated database for one test module (fresh_db is per test; a server per test is slow)."""
    name = f"tart_webtest_{os.getpid()}_{next(_names)}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(pg_server, dbname=name)
    migrate(dsn)
    with connect(dsn, autocommit=True) as conn:
        ensure_partitions(conn)
    try:
        yield dsn
    finally:
        with contextlib.suppress(psycopg.Error), psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{conninfo_to_dict(dsn)["dbname"]}" WITH (FORCE)')


def insert_node(dsn: str, nid: str, *, name: str = "polkajam", version: str = "0.1.0", connected: bool = True,
                last_seen: datetime | None = None, events: int = 0) -> None:
    now = datetime.now(UTC)
    with connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO nodes (node_id, peer_id, implementation_name, implementation_version, gp_version,"
            " node_info, address, connected_at, last_seen_at, disconnected_at, is_connected, event_count,"
            " connection_count) VALUES (%s,%s,%s,%s,'0.7.1',%s,'127.0.0.1:4000',%s,%s,%s,%s,%s,1)"
            " ON CONFLICT (node_id) DO UPDATE SET is_connected = EXCLUDED.is_connected,"
            " last_seen_at = EXCLUDED.last_seen_at, event_count = EXCLUDED.event_count",
            (nid, nid, name, version, Jsonb({"flags": 1, "genesis": "0x" + "00" * 32, "params": {"core_count": 2}}),
             now - timedelta(hours=1), last_seen or now, None if connected else now, connected, events),
        )


def insert_events(dsn: str, records: Iterable[bytes]) -> None:
    """Rows as the writer stores them: copyfmt's COPY rows of the records (a decoded event: its
    wire payload; a malformed one: its frame and decode_error), under the nodes' keys."""
    records = list(records)
    with connect(dsn) as conn:
        keys = nodekeys.resolve(conn, {unpack_event(rec).peer_id.hex() for rec in records})
        rows = []
        for rec in records:
            ev = unpack_event(rec)
            assert ev.malformed or ev.raw, "a record without its wire payload: the writer could not store it"
            rows.append(copyfmt.encode_slow(rec, keys[ev.peer_id.hex()]))
        with conn.cursor().copy(copyfmt.COPY_SQL) as cp:
            cp.write(copyfmt.copy_stream(rows))
        conn.commit()


# --- rings -----------------------------------------------------------------------------------

class TestRing:
    """A ring the test owns: produce records, and move the writer's gate like the writer would."""

    __test__ = False

    def __init__(self, index: int, capacity: int = 8 * 1024 * 1024) -> None:
        self.name = f"tart-webtest-{uuid.uuid4().hex[:12]}"
        self.ring = Ring.create(self.name, capacity, index)
        self.gate = self.ring.gate_reader()
        self.event_ids = itertools.count()
        self.rng = random.Random(index)
        # Events' JIP-3 timestamps: event_id ms after this whole second, the ring's creation time
        # (a node's clock is close to tart's: REST looks for a time range near the arrival times).
        self.ts0 = (time.time_ns() // 1000 - JCE_EPOCH_UNIX_US) // 1_000_000 * 1_000_000

    def write(self, records: list[bytes], visible: bool = True) -> None:
        """Write as an acceptor's flush does; ``visible``: then say every id so far is in the
        ring (the acceptor does when its pending list is empty)."""
        done = 0
        while done < len(records):
            n = self.ring.write_many(records[done:])
            done += n
            if done < len(records):
                self.commit_all()
        if visible:
            self.ring.mark_visible()

    def commit_all(self) -> None:
        """Everything written so far counts as stored in PostgreSQL from now on."""
        self.gate.read(1 << 30)
        self.gate.commit(self.gate.position)

    def event(self, peer: str, event_type: int = 11, *, ts: int | None = None, body: dict | None = None,
              malformed: bool = False) -> bytes:
        eid = next(self.event_ids)
        ts = self.ts0 + eid * 1000 if ts is None else ts
        if malformed:  # as the acceptor passes it on: the message, and the whole frame (cut short here)
            return pack_event(flags=FLAG_MALFORMED, event_type=event_type, id=self.ring.next_id(),
                              received_at=time.time_ns() // 1000, timestamp=ts, event_id=eid,
                              peer_id=bytes.fromhex(peer), json=b"truncated Status event",
                              raw=struct.pack("<QB", ts, event_type) + b"\x01")
        if body is None:
            if event_type in EVENT_NAMES and event_type != 11:  # a valid event of that type
                body = {EVENT_NAMES[event_type]: {**_value(event_type, self.rng, CORES), "timestamp": ts}}
            else:  # and for a type no node sends (e.g. 14), a body that is not its own
                body = {"BestBlockChanged": {"timestamp": ts, "slot": eid, "hash": "0x" + "ab" * 32}}
        # As the acceptor makes it: the codec's JSON, then the wire payload (the frame after its
        # timestamp and discriminator). A body no node can send (WS tests' oversized hashes, a
        # type that does not exist) has no wire form: such a record lives in the ring only.
        ((_tag, value),) = body.items()
        try:
            frame = encode_event(event_type, value, CORES)
        except ValueError:
            json, raw = orjson.dumps(body), b""
        else:
            json, raw = decode_event(frame, CORES).json(), frame[9:]
        return pack_event(flags=0, event_type=event_type, id=self.ring.next_id(),
                          received_at=time.time_ns() // 1000, timestamp=ts, event_id=eid,
                          peer_id=bytes.fromhex(peer), json=json, raw=raw)

    def node_up(self, peer: str, name: str = "polkajam", version: str = "0.1.0") -> bytes:
        return pack_node_up(connected_at=time.time_ns() // 1000, conn_id=1, peer_id=bytes.fromhex(peer),
                            info_json=orjson.dumps({"implementation_name": name, "implementation_version": version,
                                                    "address": "127.0.0.1:4000", "node_info": {}}))

    def close(self) -> None:
        self.ring.unlink()
        self.ring.close()


# --- the server ------------------------------------------------------------------------------

class WebServer:
    def __init__(self, tmp: Path, dsn: str, rings: list[str], workers: int = 2,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/api/ws"
        self.data_dir = tmp / "data"
        self.prom_dir = tmp / "metrics"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.prom_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = tmp / "gunicorn.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("TART_", "API_", "DATABASE_URL"))}
        self.env.update(TART_DSN=dsn, TART_RINGS=",".join(rings), TART_DATA_DIR=str(self.data_dir),
                        PROMETHEUS_MULTIPROC_DIR=str(self.prom_dir), TART_LOG=os.environ.get("WEBTEST_LOG", "warning"), **(env or {}))
        self.workers = workers
        self.proc: subprocess.Popen | None = None

    def start(self) -> WebServer:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "-k", "asgi", "--asgi-loop", "uvloop", "-w", str(self.workers),
             "-b", f"127.0.0.1:{self.port}", "--config", "python:tart.web.gunicorn_conf", "tart.web.asgi:app"],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.base + "/api/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn not ready: {self.log_path.read_text()[-3000:]}")

    def get(self, path: str, **kw) -> requests.Response:
        # Connection: close - a response object kept by a test would otherwise keep its keep-alive
        # connection open, and gunicorn's graceful stop waits for it.
        headers = {"Connection": "close", **kw.pop("headers", {})}
        return requests.get(self.base + path, timeout=10, headers=headers, **kw)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text()


@contextlib.contextmanager
def running_server(tmp: Path, dsn: str, rings: list[str], **kw) -> Iterator[WebServer]:
    srv = WebServer(tmp, dsn, rings, **kw).start()
    try:
        yield srv
    finally:
        srv.stop()


def assert_json_error(resp: requests.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error", "detail"}
    assert isinstance(body["error"], str) and body["error"]
    return body


@pytest.fixture(scope="module")
def module_dsn(pg_server: str) -> Iterator[str]:
    with module_db(pg_server) as dsn:
        yield dsn
