"""Forward paging (`after_id`): a poller that passes `next_after_id` back gets every event exactly
once, oldest first, from PostgreSQL and the rings alike, while events keep arriving."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from tartproc import TartProcess
from test_web_support import (  # noqa: F401 - module_dsn is a fixture
    TestRing,
    WebServer,
    insert_events,
    insert_node,
    module_dsn,
    node_id,
    running_server,
)

LOADGEN = str(Path(sys.executable).parent / "tart-loadgen")


@pytest.fixture(scope="module")
def rings() -> Iterator[list[TestRing]]:
    rs = [TestRing(0), TestRing(1)]
    yield rs
    for r in rs:
        r.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, module_dsn: str, rings: list[TestRing]  # noqa: F811
           ) -> Iterator[WebServer]:
    with running_server(tmp_path_factory.mktemp("web"), module_dsn, [r.name for r in rings], workers=2) as srv:
        yield srv


def test_after_id_walks_forward_and_waits_for_what_is_not_visible(server: WebServer, module_dsn: str,  # noqa: F811
                                                                  rings: list[TestRing]) -> None:
    a = node_id(0x41)
    insert_node(module_dsn, a)
    r0, r1 = rings
    for r in rings:
        r.commit_all()
    start = r0.ring.visible_through
    stored = [r0.event(a, 11) for _ in range(40)] + [r1.event(a, 12) for _ in range(40)]
    r0.write(stored[:40])
    r1.write(stored[40:])
    insert_events(module_dsn, stored)
    for r in rings:
        r.commit_all()
    pending = [r0.event(a, 11) for _ in range(10)]
    r0.write(pending)  # only in the ring, not yet committed
    r1.ring.mark_visible()  # as an idle acceptor's housekeeping does every second
    ids = sorted(int.from_bytes(rec[8:16], "little") for rec in stored + pending)

    def walk(after: int, limit: int) -> list[int]:
        seen: list[int] = []
        while True:
            page = server.get(f"/api/events?after_id={after}&limit={limit}&node_id={a}").json()
            assert page["next_before_id"] is None
            seen.extend(e["id"] for e in page["events"])
            assert page["next_after_id"] == (page["events"][-1]["id"] if page["events"] else after)
            after = page["next_after_id"]
            if not page["has_more"]:
                return seen

    assert walk(start, 7) == ids
    # the same without a filter: the id windows instead of the node's btree
    page = server.get(f"/api/events?after_id={start}&limit=1000").json()
    assert [e["id"] for e in page["events"] if e["node_id"] == a] == ids
    # an event written to a ring but not yet declared visible (still on its way in an
    # acceptor) holds the walk back: nothing at or after it is returned yet
    late = [r1.event(a, 13)]
    r1.write(late, visible=False)
    assert walk(ids[-1], 100) == []
    for r in rings:
        r.ring.mark_visible()  # r1 has written it; r0 is idle (its housekeeping)
    assert walk(ids[-1], 100) == [int.from_bytes(late[0][8:16], "little")]
    assert server.get("/api/events?after_id=1&before_id=5").status_code == 400


def test_a_poller_sees_every_event_once_while_loadgen_streams(fresh_db: str, tmp_path: Path) -> None:
    with TartProcess(tmp_path, database_url=fresh_db, acceptors=2) as tart:
        gen = subprocess.Popen(
            [LOADGEN, "--target", "%s:%d" % tart.telemetry, "--nodes", "6", "--rate", "300", "--duration", "5",
             "--seed", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen: list[int] = []
        after = 0
        sent = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status, page = tart.get(f"/api/events?after_id={after}&limit=500")
            assert status == 200, page
            seen.extend(e["id"] for e in page["events"])
            after = page["next_after_id"]
            if sent is None and gen.poll() is not None:
                sent = json.loads(gen.stdout.read())["sent_total"]
            if sent is not None and len(seen) >= sent and not page["has_more"]:
                break
            if not page["has_more"]:
                time.sleep(0.05)
        with psycopg.connect(fresh_db) as c:
            stored = [r[0] for r in c.execute("SELECT id FROM event_rows ORDER BY id")]
    assert sent and len(stored) == sent
    assert seen == stored  # every event, once, in id order
