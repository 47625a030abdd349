"""docs/STORAGE.md's SQL runs as written against a live tart fed by tart-loadgen, and the stored
rows, the events view, REST and the rollups agree with one another."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from tartproc import TartProcess

from tart.engine.codec import EVENT_NAMES

REPO = Path(__file__).resolve().parent.parent
LOADGEN = str(Path(sys.executable).parent / "tart-loadgen")


def doc_queries() -> list[str]:
    text = (REPO / "docs" / "STORAGE.md").read_text()
    return re.findall(r"```sql\n(.*?)```", text, re.S)


def wait_for(pred, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_docs_queries_views_rest_and_rollups_agree(fresh_db: str, tmp_path: Path) -> None:
    queries = doc_queries()
    assert len(queries) >= 4
    with TartProcess(tmp_path, database_url=fresh_db, acceptors=2) as tart:
        out = subprocess.run(
            [LOADGEN, "--target", "%s:%d" % tart.telemetry, "--nodes", "6", "--rate", "150",
             "--duration", "4", "--seed", "5"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        sent = json.loads(out.stdout)["sent_total"]
        with psycopg.connect(fresh_db, autocommit=True) as c:
            wait_for(lambda: c.execute("SELECT count(*) FROM event_rows").fetchone()[0] == sent, what="all rows")
            # the 30-second counts flush every few seconds; nodes.event_count with them
            wait_for(lambda: c.execute("SELECT coalesce(sum(event_count), 0) FROM event_counts_30s").fetchone()[0]
                     == sent, what="30-second counts")
            for q in queries:
                rows = c.execute(q).fetchall()
                if "reason" not in q:  # failures may be absent from a short run; the rest must not be
                    assert rows, q
            # the view decodes every stored event; REST's JSON is the same object
            n_data = c.execute("SELECT count(*) FROM events WHERE data IS NOT NULL").fetchone()[0]
            assert n_data == sent
            names = dict(c.execute("SELECT id, name FROM event_types").fetchall())
            assert names == {k: v for k, v in EVENT_NAMES.items()}
            newest = c.execute("SELECT id, data FROM events ORDER BY id DESC LIMIT 200").fetchall()
            assert sum(c.execute("SELECT event_count FROM nodes").fetchall()[i][0] for i in range(6)) == sent
        status, page = tart.get("/api/events?limit=200")
        assert status == 200
        assert [e["id"] for e in page["events"]] == [r[0] for r in newest]
        for ev, (_, data) in zip(page["events"], newest, strict=True):
            assert ev["data"] == data  # the loadgen mix has no U+0000, so SQL and codec JSON are equal
