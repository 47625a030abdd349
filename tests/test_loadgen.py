"""The load generator against a plain TCP sink that decodes everything it receives.

Independent of the acceptor: the sink is a threaded socket server written here, and every
frame is checked with the codec, so the report is compared with what actually crossed TCP.
"""

from __future__ import annotations

import collections
import random
import socket
import struct
import subprocess
import sys
import threading
import time

import orjson
import pytest
import uvloop

from tart.engine.codec import EVENT_NAMES, decode_event, decode_node_info
from tart.engine.loadgen import MIXES, build_template, run_loadgen

U32 = struct.Struct("<I")


class Sink:
    """Accepts connections, keeps each one's bytes; decoded after the peer closes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.streams: list[bytearray] = []
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            buf = bytearray()
            self.streams.append(buf)
            t = threading.Thread(target=self._read, args=(conn, buf), daemon=True)
            t.start()
            self.threads.append(t)

    @staticmethod
    def _read(conn: socket.socket, buf: bytearray) -> None:
        with conn:
            while chunk := conn.recv(1 << 20):
                buf += chunk

    def nodes(self, expected: int) -> dict[str, dict]:
        """Per node id: decoded events with their JIP-3 ids (after `expected` streams ended)."""
        # The kernel completes handshakes before accept(): the accept thread may still be behind.
        deadline = time.monotonic() + 10
        while len(self.threads) < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        for t in list(self.threads):
            t.join(10)
        out = {}
        for buf in self.streams:
            frames, off = [], 0
            while off < len(buf):
                (n,) = U32.unpack_from(buf, off)
                frames.append(bytes(buf[off + 4 : off + 4 + n]))
                off += 4 + n
            assert off == len(buf), "a partial frame at the end of a stream"
            info = decode_node_info(frames[0])
            events, eid = [], 0
            for f in frames[1:]:
                d = decode_event(f, info.core_count)
                events.append((eid, d))
                eid += d.value["num"] if d.event_type == 0 else 1
            out[info.node_id] = {"info": info, "events": events}
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sink():
    s = Sink()
    yield s
    s.close()


def check_against(report: dict, nodes: dict[str, dict]) -> None:
    assert len(nodes) == report["nodes"] == len(report["per_node"])
    for node in report["per_node"]:
        got = nodes[node["node_id"]]
        events = got["events"]
        assert node["peer_id"] == node["node_id"] == got["info"].peer_id.hex()
        assert len(events) == node["sent"]
        assert dict(collections.Counter(str(d.event_type) for _, d in events)) == node["by_type"]
        assert (events[-1][0] if events else None) == node["last_event_id"]
        assert got["info"].core_count == node["core_count"]
        assert got["info"].params_layout == "gp-0.7" and len(got["info"].params_raw) == 134
        # Every linked event names an earlier event of the kind JIP-3 says.
        by_id = {eid: d for eid, d in events}
        parents = {26: (24,), 23: (21,), 42: (40,), 45: (43,), 47: (40, 43), 94: (90, 91), 102: (90, 91),
                   105: (90,), 106: (105,), 108: (106,), 125: (120, 121), 129: (126,), 178: (173, 174)}
        for eid, d in events:
            if d.event_type in parents:
                link = next(iter(v for k, v in d.value.items() if k.endswith("_id")))
                assert link < eid and by_id[link].event_type in parents[d.event_type]


def test_every_template_frame_decodes_and_all_mix_covers_every_type():
    for mix in MIXES:
        for c in (2, 341):
            tpl = build_template(random.Random(1), mix, c)
            for i, et in enumerate(tpl.types):
                content = bytes(tpl.blob[tpl.starts[i] + 4 : tpl.starts[i + 1]])
                assert U32.unpack_from(tpl.blob, tpl.starts[i])[0] == len(content)
                assert decode_event(content, c).event_type == et
            assert decode_event(bytes(tpl.status[4:]), c).event_type == 10
    types = set(build_template(random.Random(2), "all", 2).types) | {10}
    assert types == set(EVENT_NAMES)


def test_report_matches_what_crossed_tcp(sink):
    report = uvloop.run(run_loadgen(("127.0.0.1", sink.port), nodes=5, rate=0, duration=1.0, seed=3,
                                    mix="all", max_events=3000))
    assert report["sent_total"] == 15000 and not report.get("errors")
    check_against(report, sink.nodes(report["nodes"]))


def test_paced_rate_and_cli_json(sink):
    out = subprocess.run(
        [sys.executable, "-m", "tart.engine.loadgen", "--target", f"127.0.0.1:{sink.port}", "--nodes", "3",
         "--rate", "200", "--duration", "1.5", "--seed", "9"],
        capture_output=True, timeout=60, check=True).stdout
    report = orjson.loads(out)
    assert set(report) >= {"target", "nodes", "duration_s", "sent_total", "rate_achieved", "per_node"}
    assert report["target"] == f"127.0.0.1:{sink.port}"
    for node in report["per_node"]:
        # Pacing: never more than the rate allows (plus one tick); a slow machine may send less.
        assert 0 < node["sent"] <= 200 * report["duration_s"] + 5
        assert "10" in node["by_type"]  # a Status at start, then every ~2 s
    check_against(report, sink.nodes(report["nodes"]))


def test_connect_failure_is_reported():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    report = uvloop.run(run_loadgen(("127.0.0.1", port), nodes=2, rate=10, duration=0.2, connect_timeout=2))
    assert report["sent_total"] == 0 and len(report["errors"]) == 2
