"""tart-export as a user meets it: REST-named filters, --until defaulting to now, Parquet that
DuckDB and pyarrow read with typed columns, progress only on a terminal, --version."""

from __future__ import annotations

import io
import os
import pty
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_export import ALL, BAD_FRAME, EXPORT, NODE_A, NODE_B, jsonl, run_export, seed

import tart


def test_rest_named_filters_and_old_aliases(fresh_db: str) -> None:
    expected = seed(fresh_db)
    new = jsonl(run_export(fresh_db, *ALL, "--event-type", "11", "--node-id", NODE_A).stdout)
    old = jsonl(run_export(fresh_db, *ALL, "--type", "11", "--node", NODE_A).stdout)
    want = [e["id"] for e in expected if e["event_type"] == 11 and e["node_id"] == NODE_A]
    assert [e["id"] for e in new] == [e["id"] for e in old] == want and want
    # Names as well as numbers (28 = PeerMisbehaved, 11 = BestBlockChanged).
    named = jsonl(run_export(fresh_db, *ALL, "--event-type", "PeerMisbehaved,BestBlockChanged", "--node-id",
                             NODE_B).stdout)
    assert [e["id"] for e in named] == [e["id"] for e in expected if e["node_id"] == NODE_B]
    r = run_export(fresh_db, *ALL, "--event-type", "NoSuchEvent", check=False)
    assert r.returncode == 2 and b"NoSuchEvent" in r.stderr


def test_until_defaults_to_now(fresh_db: str) -> None:
    expected = seed(fresh_db)  # event timestamps are in March 2026; received "now"
    got = jsonl(run_export(fresh_db, "--since", "2026-03-01").stdout)
    assert len(got) == len(expected)
    today = datetime.now(UTC).date().isoformat()
    assert run_export(fresh_db, "--since", today, "--time-field", "received_at").stdout != b""
    # Received before now, so nothing is "after now".
    future = jsonl(run_export(fresh_db, "--since", "2999-01-01").stdout)
    assert future == []


def test_parquet_has_typed_columns_for_duckdb_and_pyarrow(fresh_db: str, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    expected = seed(fresh_db)
    out = tmp_path / "events.parquet"
    run_export(fresh_db, *ALL, "--format", "parquet", "--raw", "-o", str(out))
    table = pq.read_table(out)
    types = {f.name: str(f.type) for f in table.schema}
    assert types["id"] == "int64" and types["event_type"] == "int16"
    assert types["timestamp"] == types["received_at"] == "timestamp[us, tz=UTC]"
    assert types["raw"] == "binary"
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [e["id"] for e in expected]
    assert rows[0]["timestamp"].isoformat().replace("+00:00", "Z") == expected[0]["timestamp"]
    assert rows[0]["event_name"] == "PeerMisbehaved" and rows[2]["event_name"] == "BestBlockChanged"
    assert rows[-1]["event_name"] is None and rows[-1]["decode_error"] == "truncated at byte 3"
    assert rows[-1]["raw"] == BAD_FRAME

    # Streamed to a pipe (not seekable) it is the same file.
    piped = run_export(fresh_db, *ALL, "--format", "parquet").stdout
    assert pq.read_table(io.BytesIO(piped)).num_rows == len(expected)

    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    n, best = con.execute(
        "SELECT count(*), max(CAST(json_extract(data::JSON, '$.BestBlockChanged.slot') AS INTEGER))"
        f" FROM read_parquet('{out}') WHERE event_name = 'BestBlockChanged'").fetchone()
    assert n == sum(1 for e in expected if e["data"] and "BestBlockChanged" in e["data"])
    assert best == max(e["data"]["BestBlockChanged"]["slot"] for e in expected if e["data"] and "BestBlockChanged" in e["data"])
    (kind,) = con.execute(f"SELECT typeof(timestamp) FROM read_parquet('{out}') LIMIT 1").fetchone()
    assert kind == "TIMESTAMP WITH TIME ZONE"


def test_progress_on_a_terminal_only(fresh_db: str, tmp_path: Path) -> None:
    seed(fresh_db)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TART_CONFIG")}
    master, slave = pty.openpty()
    r = subprocess.run([EXPORT, "--database-url", fresh_db, *ALL, "-o", str(tmp_path / "a.jsonl")],
                       stderr=slave, env=env, timeout=120)
    os.close(slave)
    err = os.read(master, 65536).decode()
    os.close(master)
    assert r.returncode == 0
    assert "tart-export: 21 events, " in err and "MiB" in err, err
    # A pipe: only the summary line.
    r = run_export(fresh_db, *ALL, "-o", str(tmp_path / "b.jsonl"))
    assert r.stderr.decode().splitlines() == [f"tart-export: 21 events -> {tmp_path / 'b.jsonl'}"]


def test_version() -> None:
    r = subprocess.run([EXPORT, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"tart-export {tart.__version__}"
