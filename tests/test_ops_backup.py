"""The backup/restore procedure of docs/OPERATIONS.md: pg_dump -Fc of a tart database, pg_restore
into an empty one, and tart finds its schema current and its data intact."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def test_pg_dump_and_pg_restore_round_trip(fresh_db: str, empty_db: str, tmp_path: Path) -> None:
    with connect(fresh_db) as conn:
        ensure_partitions(conn)
        conn.execute(
            "INSERT INTO nodes (node_id, peer_id, implementation_name) VALUES (repeat('ab', 32), repeat('ab', 32), 'x')")
        conn.execute(
            "INSERT INTO events (id, node_id, event_id, event_type, timestamp, data, created_at, raw, decode_error)"
            " SELECT g, repeat('ab', 32), g, 10, now() - g * interval '1 s',"
            " CASE WHEN g % 100 = 0 THEN NULL ELSE jsonb_build_object('Status', jsonb_build_object('n', g)) END,"
            " now() - g * interval '1 ms', CASE WHEN g % 100 = 0 THEN '\\x0aff'::bytea END,"
            " CASE WHEN g % 100 = 0 THEN 'bad' END"
            " FROM generate_series(1, 2000) g")
        conn.commit()
    before = _export(fresh_db)
    assert len(before.splitlines()) == 2000

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
