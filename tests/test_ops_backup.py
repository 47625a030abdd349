"""The backup/restore procedure of docs/OPERATIONS.md: pg_dump -Fc of a tart database, pg_restore
into an empty one, and tart finds its schema current and its data intact."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from eventdb import jce_us, store_event

from tart.engine.db import connect
from tart.engine.migrate import ensure_partitions, migrate
from tart.engine.pgcluster import find_pg_bin

EXPORT = str(Path(sys.executable).parent / "tart-export")


def _export(dsn: str) -> bytes:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TART_CONFIG")}
    r = subprocess.run([EXPORT, "--database-url", dsn, "--raw", "--since", "2000-01-01", "--until", "2100-01-01"],
                       capture_output=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _view(dsn: str) -> list[tuple]:
    with connect(dsn) as conn:
        return conn.execute("SELECT id, data, raw FROM events ORDER BY id").fetchall()


def test_pg_dump_and_pg_restore_round_trip(fresh_db: str, empty_db: str, tmp_path: Path) -> None:
    with connect(fresh_db) as conn:
        ensure_partitions(conn)
        conn.execute(
            "INSERT INTO nodes (node_id, peer_id, implementation_name) VALUES (repeat('ab', 32), repeat('ab', 32), 'x')")
        now = datetime.now(UTC)
        for g in range(1, 2001):
            ts, created = now - timedelta(seconds=g), now - timedelta(milliseconds=g)
            if g % 100 == 0:  # a frame that failed to decode, kept whole
                store_event(conn, id=g, node_id="ab" * 32, event_id=g, event_type=10, timestamp=ts,
                            created_at=created, decode_error="bad", frame=struct.pack("<QB", jce_us(ts), 10) + b"\xff")
            else:
                store_event(conn, id=g, node_id="ab" * 32, event_id=g, event_type=10, timestamp=ts,
                            created_at=created, fields={"num_peers": g})
        conn.commit()
    before = _export(fresh_db)
    assert len(before.splitlines()) == 2000
    view_before = _view(fresh_db)
    assert sum(data is None for _, data, _ in view_before) == 20

    pg_bin = find_pg_bin()
    dump = tmp_path / "tart.dump"
    subprocess.run([str(pg_bin / "pg_dump"), "-Fc", "-f", str(dump), "-d", fresh_db], check=True, timeout=300)
    r = subprocess.run([str(pg_bin / "pg_restore"), "--no-owner", "--exit-on-error", "-d", empty_db, str(dump)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr

    assert migrate(empty_db) == []  # the restored schema is current: tart starts on it as is
    with connect(empty_db) as conn:
        ensure_partitions(conn)  # the partition function came along too
        conn.commit()
    assert _export(empty_db) == before
    # The `events` view decodes in SQL (tart_event_data): the decoder functions came along as well.
    assert _view(empty_db) == view_before
