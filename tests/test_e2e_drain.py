"""A whole tart killed with -9 leaves decoded events in its rings; the next start stores them
(exactly once) before it removes the rings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from tartproc import TartProcess

from tart.engine.record import KIND_EVENT, event_id_of
from tart.engine.ring import Ring

LOADGEN = str(Path(sys.executable).parent / "tart-loadgen")


def child_pids(root: int, title: str) -> list[int]:
    """Descendants of ``root`` whose process title starts with ``title``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == root and cmd.startswith(title):
            out.append(int(d.name))
    return out


def count(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute(sql).fetchone()[0]


def test_kill9_of_everything_then_restart_stores_what_the_rings_held(fresh_db: str, tmp_path: Path) -> None:
    env = {"TART_HEARTBEAT_TIMEOUT": "600", "TART_RATE_LIMIT": "0"}
    tart = TartProcess(tmp_path, database_url=fresh_db, acceptors=2, env=env).start()
    try:
        sup = tart.proc.pid
        rings = [f"tart{sup}r0", f"tart{sup}r1"]
        writers = child_pids(sup, "tart: writer")
        assert writers, "no writer process found by its title"
        for pid in writers:
            os.kill(pid, signal.SIGSTOP)  # nothing is committed from here on
        out = subprocess.run(
            [LOADGEN, "--target", "%s:%d" % tart.telemetry, "--nodes", "8", "--rate", "200", "--duration", "3",
             "--seed", "9"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        sent = json.loads(out.stdout)["sent_total"]
        deadline = time.monotonic() + 30
        while True:  # until the acceptors have put every event they read into their rings
            pending = []
            for name in rings:
                r = Ring.attach(name)
                try:
                    pending += [rec for rec in r.gate_reader().read(1 << 30) if rec[0] == KIND_EVENT]
                finally:
                    r.close()
            if len(pending) >= sent or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(pending) == sent
    finally:
        tart.kill_all()  # supervisor, acceptors, the stopped writer, the web tier: all at once
    stored_before = count(fresh_db, "SELECT count(*) FROM event_rows")
    assert all((Path("/dev/shm") / n).exists() for n in rings)

    again = TartProcess(tmp_path, database_url=fresh_db, acceptors=2, env=env)
    with again:
        assert count(fresh_db, "SELECT count(*) FROM event_rows") == stored_before + len(pending)
        assert count(fresh_db, "SELECT count(DISTINCT id) FROM event_rows") == stored_before + len(pending)
        ids = {event_id_of(rec) for rec in pending}
        with psycopg.connect(fresh_db, autocommit=True) as c:
            got = {r[0] for r in c.execute("SELECT id FROM event_rows WHERE id = ANY(%s)", (list(ids),))}
        assert got == ids
        assert not any((Path("/dev/shm") / n).exists() for n in rings)
        assert "drained a previous run's rings" in again.log_path.read_text()
