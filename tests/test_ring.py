"""Shared-memory ring: real processes (spawn), real segments in /dev/shm."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import struct
import subprocess
import sys
import time
import uuid
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tart.engine import ring as ring_mod
from tart.engine.ring import Ring

CTX = mp.get_context("spawn")
_CHECK = struct.Struct("<QI")


def payload(i: int) -> bytes:
    """Record i: its number, a crc of the filler, and an odd-sized filler derived from i."""
    size = (i * 7919) % 301
    filler = (i.to_bytes(8, "little") * 38)[:size]
    return _CHECK.pack(i, zlib.crc32(filler)) + filler


def check(rec: bytes) -> int:
    """Number of an intact record; raises on a torn or foreign one."""
    i, crc = _CHECK.unpack_from(rec)
    filler = rec[_CHECK.size :]
    if zlib.crc32(filler) != crc or filler != (i.to_bytes(8, "little") * 38)[: (i * 7919) % 301]:
        raise AssertionError(f"torn record claiming number {i}")
    return i


@pytest.fixture
def ring_name():
    name = f"tart-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield name
    Ring.remove(name)


def _join(*procs: mp.process.BaseProcess, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
            raise AssertionError(f"{p.name} did not finish")


# --- child process bodies (module level so spawn can import them) ---------------------------


def _produce(name: str, start: int, n: int, batch: int) -> None:
    r = Ring.attach(name)
    i = start
    while i < start + n:
        k = r.write_many([payload(j) for j in range(i, min(start + n, i + batch))])
        r.counters.add("events_received", k)
        if k == 0:
            r.counters.add("backpressure_pauses")
            time.sleep(0.0002)
        i += k
    r.close()


def _gate_consume(name: str, n: int, q) -> None:
    r = Ring.attach(name)
    g = r.gate_reader()
    expect = 0
    result = "ok"
    deadline = time.monotonic() + 100
    while expect < n and time.monotonic() < deadline:
        recs = g.read(500, 1 << 20)
        if not recs:
            time.sleep(0.0002)
            continue
        for rec in recs:
            got = check(rec)
            if got != expect:
                result = f"gate reader got {got}, expected {expect}"
                break
            expect += 1
        if result != "ok":
            break
        g.commit(g.position)
    q.put(("gate", result, expect, g.seq))
    r.close()


def _tail_consume(label: str, name: str, n: int, max_records: int, pause: float, ready, q) -> None:
    r = Ring.attach(name)
    t = r.tail_reader()
    ready.set()
    expect = received = missed_total = 0
    result = "ok"
    deadline = time.monotonic() + 100
    try:
        while expect < n and time.monotonic() < deadline:
            recs, missed = t.read(max_records)
            expect += missed
            missed_total += missed
            for rec in recs:
                got = check(rec)
                if got != expect:
                    raise AssertionError(f"got {got}, expected {expect}")
                expect += 1
                received += 1
            if recs and pause:
                time.sleep(pause)  # slow work per batch
            elif not recs:
                time.sleep(0.0002)
    except AssertionError as e:
        result = str(e)
    q.put((label, result, expect, received, missed_total))
    r.close()


def _attach_and_exit(name: str) -> None:
    r = Ring.attach(name)
    r.counters.add("connections_total", 3)
    r.counters["connections_active"] = 2
    r.heartbeat()
    r.close()


def _produce_ids(name: str, n: int, q) -> None:
    r = Ring.attach(name)
    ids = [r.next_id() for _ in range(n)]
    q.put(ids)
    r.close()


def _gate_commit_on_command(name: str, conn) -> None:
    r = Ring.attach(name)
    g = r.gate_reader()
    while True:
        cmd = conn.recv()
        if cmd == "read":
            recs = []
            while batch := g.read(1000):
                recs.extend(batch)
            conn.send([check(x) for x in recs])
        elif cmd == "commit":
            g.commit(g.position)
            conn.send(g.position)
        else:
            break
    r.close()


# --- tests -----------------------------------------------------------------------------------


def test_gate_reader_exact_and_tail_readers_account_for_every_record(ring_name):
    n = 60_000
    r = Ring.create(ring_name, 1 << 16, 5)  # 64 KiB: hundreds of wraps with odd-sized records
    q = CTX.Queue()
    ready_fast, ready_slow = CTX.Event(), CTX.Event()
    gate = CTX.Process(target=_gate_consume, args=(ring_name, n, q), name="gate")
    fast = CTX.Process(
        target=_tail_consume, args=("fast", ring_name, n, 1000, 0.0, ready_fast, q), name="fast"
    )
    slow = CTX.Process(
        target=_tail_consume, args=("slow", ring_name, n, 20, 0.003, ready_slow, q), name="slow"
    )
    for p in (gate, fast, slow):
        p.start()
    assert ready_fast.wait(60) and ready_slow.wait(60)
    prod = CTX.Process(target=_produce, args=(ring_name, 0, n, 64), name="producer")
    prod.start()
    results = {}
    deadline = time.monotonic() + 150
    while len(results) < 3 and time.monotonic() < deadline:
        try:
            item = q.get(timeout=1)
        except queue.Empty:
            if not any(p.is_alive() for p in (gate, fast, slow)):
                break  # a reader crashed (e.g. met a torn record): fail now, not at the deadline
            continue
        results[item[0]] = item
    assert len(results) == 3, f"readers reported only {sorted(results)}"
    _join(prod, gate, fast, slow)
    assert prod.exitcode == 0

    assert results["gate"] == ("gate", "ok", n, n)
    for label in ("fast", "slow"):
        _, result, expect, received, missed = results[label]
        assert result == "ok", label
        assert expect == n and received + missed == n, label
    # The slow reader takes 20 records per 3 ms while a lap holds ~350: it must have been lapped.
    print("tail results", results["fast"], results["slow"])
    assert results["slow"][4] > 0
    assert results["slow"][3] > 0
    assert r.write_seq == n and r.gate_pos == r.write_pos and r.gate_seq == n
    assert r.counters["events_received"] == n
    r.close()


def test_producer_blocks_until_gate_commits(ring_name):
    r = Ring.create(ring_name, 8192, 0)
    parent, child = CTX.Pipe()
    reader = CTX.Process(target=_gate_commit_on_command, args=(ring_name, child))
    reader.start()
    try:
        written = 0
        while r.try_write(payload(written)):
            written += 1
        assert written > 10
        assert r.free_bytes() < 16 + 8 + 312
        parent.send("read")
        assert parent.recv() == list(range(written))
        # Read but not committed: the producer must still refuse (no overwrite, no drop).
        assert not r.try_write(payload(written))
        assert r.write_many([payload(written)] * 5) == 0
        parent.send("commit")
        assert parent.recv() == r.write_pos == r.gate_pos
        assert r.try_write(payload(written))
        assert r.write_many([payload(i) for i in range(written + 1, written + 4)]) == 3
        parent.send("read")
        assert parent.recv() == list(range(written, written + 4))
        parent.send("stop")
    finally:
        _join(reader, timeout=30)
    r.close()


def test_write_many_writes_the_prefix_that_fits(ring_name):
    r = Ring.create(ring_name, 4096, 0)
    g = r.gate_reader()
    batch = [payload(i) for i in range(100)]
    k = r.write_many(batch)
    assert 0 < k < 100
    assert [check(x) for x in g.read(1000)] == list(range(k))
    g.commit(g.position)
    k2 = r.write_many(batch[k:])
    assert k2 > 0
    assert [check(x) for x in g.read(1000)] == list(range(k, k + k2))
    r.close()


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 1000), min_size=1, max_size=120),
    read_sizes=st.lists(st.integers(1, 9), min_size=1, max_size=10),
    capacity=st.sampled_from([4096, 4104, 5000, 8192]),
)
def test_wraparound_with_odd_sizes_round_trips(sizes, read_sizes, capacity):
    name = f"tart-hyp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    r = Ring.create(name, capacity, 1)
    try:
        sent = [bytes([i % 251]) * s for i, s in enumerate(sizes)]
        g = r.gate_reader()
        tail = r.tail_reader(from_gate=True)
        got: list[bytes] = []
        tail_got: list[bytes] = []
        i = j = 0
        while len(got) < len(sent):
            k = r.write_many(sent[i : i + 3])
            i += k
            got += g.read(read_sizes[j % len(read_sizes)])
            j += 1
            recs, missed = tail.read(1000)
            assert missed == 0  # the gate holds the producer back, so this reader is never lapped
            tail_got += recs
            g.commit(g.position)
            if k == 0 and not got:
                raise AssertionError("no progress")
        assert got == sent
        recs, missed = tail.read(1000)
        assert tail_got + recs == sent and missed == 0
        assert r.write_seq == len(sent) == g.seq
    finally:
        r.close()
        Ring.remove(name)


def test_record_size_limit(ring_name):
    r = Ring.create(ring_name, 4096, 0)
    assert r.max_payload == 1024 - 16
    assert r.try_write(b"x" * r.max_payload)
    with pytest.raises(ValueError):
        r.try_write(b"x" * (r.max_payload + 1))
    with pytest.raises(ValueError):
        r.write_many([b"ok", b"x" * 5000])
    assert r.write_seq == 1  # a rejected batch writes nothing
    r.close()


def test_create_validates_arguments(ring_name):
    with pytest.raises(ValueError):
        Ring.create(ring_name, 4100, 0)
    with pytest.raises(ValueError):
        Ring.create(ring_name, 4096, 64)
    r = Ring.create(ring_name, 4096, 63)
    with pytest.raises(FileExistsError):
        Ring.create(ring_name, 4096, 1)
    r.close()


def test_restarted_producer_continues_positions_seq_and_id_clock(ring_name):
    r = Ring.create(ring_name, 1 << 15, 7)
    q = CTX.Queue()
    p1 = CTX.Process(target=_produce, args=(ring_name, 0, 100, 10))
    p1.start()
    _join(p1)
    pid = CTX.Process(target=_produce_ids, args=(ring_name, 500, q))
    pid.start()
    ids1 = q.get(timeout=60)
    _join(pid)
    pos1, seq1 = r.write_pos, r.write_seq
    assert seq1 == 100 and pos1 > 0
    g = r.gate_reader()
    assert [check(x) for x in g.read(1000)] == list(range(100))
    g.commit(g.position)
    p2 = CTX.Process(target=_produce, args=(ring_name, 100, 100, 10))
    p2.start()
    _join(p2)
    pid2 = CTX.Process(target=_produce_ids, args=(ring_name, 500, q))
    pid2.start()
    ids2 = q.get(timeout=60)
    _join(pid2)
    assert r.write_seq == 200 and r.write_pos > pos1
    assert [check(x) for x in g.read(1000)] == list(range(100, 200))
    ids = ids1 + ids2
    assert all(a < b for a, b in zip(ids, ids[1:], strict=False))
    assert {i & 63 for i in ids} == {7}
    assert r.last_t == ids[-1] >> 6
    r.close()


def test_producer_that_died_mid_publish_is_repaired_on_restart(ring_name):
    r = Ring.create(ring_name, 1 << 14, 0)
    assert r.write_many([payload(i) for i in range(10)]) == 10
    hq = r._hq
    # Simulate a crash between storing write_pos and write_seq for the next batch.
    hq[ring_mod._H_PUBVER] += 1
    r.close()
    r2 = Ring.attach(ring_name)
    assert r2.write_many([payload(i) for i in range(10, 15)]) == 5
    assert r2.write_seq == 15
    g = r2.gate_reader()
    assert [check(x) for x in g.read(100)] == list(range(15))
    r2.close()


def test_next_id_unique_across_rings_and_increasing(ring_name):
    r0 = Ring.create(ring_name, 4096, 0)
    r1 = Ring.create(ring_name + "b", 4096, 1)
    try:
        a = [r0.next_id() for _ in range(5000)]
        b = [r1.next_id() for _ in range(5000)]
        batch = list(r0.next_ids(1000))
        after = r0.next_id()
        assert all(x < y for x, y in zip(a + batch + [after], (a + batch + [after])[1:], strict=False))
        assert {x & 63 for x in a + batch} == {0} and {x & 63 for x in b} == {1}
        assert len(set(a + b + batch)) == len(a) + len(b) + len(batch)
        assert abs((a[-1] >> 6) - time.time_ns() // 1000) < 60_000_000  # roughly unix µs
    finally:
        r0.close()
        r1.close()
        Ring.remove(ring_name + "b")


def test_attaching_process_exit_does_not_unlink_and_counters_are_shared(ring_name):
    r = Ring.create(ring_name, 4096, 2)
    p = CTX.Process(target=_attach_and_exit, args=(ring_name,))
    p.start()
    _join(p)
    assert p.exitcode == 0
    assert os.path.exists(f"/dev/shm/{ring_name}")
    assert r.counters["connections_total"] == 3
    assert r.counters.get("connections_active") == 2
    assert r.counters.as_dict()["connections_total"] == 3
    assert r.producer_pid == p.pid and time.time() - r.heartbeat_at < 60
    st = r.status()
    assert st["counters"]["connections_total"] == 3 and st["ring_index"] == 2 and st["uuid"] == r.uuid
    with pytest.raises(KeyError):
        r.counters["no_such_counter"]
    r.close()
    # A plain interpreter (its own resource tracker) attaching and exiting: still there, no warning.
    code = (
        "from tart.engine.ring import Ring\n"
        f"r = Ring.attach({ring_name!r}); r.counters.add('decode_errors', 4); r.close()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "leaked" not in out.stderr and out.stderr == ""
    r2 = Ring.attach(ring_name)
    assert r2.counters["decode_errors"] == 4 and r2.ring_index == 2
    r2.close()


def test_created_segment_outlives_its_creator_until_unlinked(ring_name):
    code = (
        "from tart.engine.ring import Ring\n"
        f"r = Ring.create({ring_name!r}, 4096, 9); r.try_write(b'hello'); print(r.uuid); r.close()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    r = Ring.attach(ring_name)
    assert r.uuid == out.stdout.strip() and len(r.uuid) == 32
    assert r.gate_reader().read(10) == [b"hello"]
    r.unlink()
    r.close()
    assert not os.path.exists(f"/dev/shm/{ring_name}")
    assert Ring.remove(ring_name) is False


def test_snapshot_uncommitted_and_tail_from_gate(ring_name):
    r = Ring.create(ring_name, 1 << 14, 0)
    g = r.gate_reader()
    r.write_many([payload(i) for i in range(30)])
    g.read(10)
    g.commit(g.position)
    assert [check(x) for x in r.snapshot_uncommitted(100)] == list(range(10, 30))
    assert [check(x) for x in r.snapshot_uncommitted(5)] == list(range(25, 30))
    assert r.snapshot_uncommitted(0) == []
    live = r.tail_reader()
    backlog = r.tail_reader(from_gate=True)
    assert live.read(100) == ([], 0) and live.pending() == 0
    recs, missed = backlog.read(100)
    assert [check(x) for x in recs] == list(range(10, 30)) and missed == 0
    r.write_many([payload(30)])
    assert live.pending() > 0
    assert [check(x) for x in live.read(100)[0]] == [30]
    r.close()


def test_gate_reader_seek_commit_and_max_bytes(ring_name):
    r = Ring.create(ring_name, 1 << 14, 0)
    r.write_many([b"a" * 100] * 10)
    g = r.gate_reader()
    assert len(g.read(100, max_bytes=250)) == 3  # stops once 250 payload bytes are reached
    mid = g.position
    assert len(g.read(100)) == 7
    g.commit(mid)
    assert r.gate_pos == mid and r.gate_seq == 3
    with pytest.raises(ValueError):
        g.commit(mid - 8)  # backwards
    # A restarted writer: new gate reader starts at the gate, then seeks to its stored position.
    g2 = r.gate_reader()
    assert g2.position == mid and g2.seq == 3
    with pytest.raises(ValueError):
        g2.seek(mid + 8)  # inside a record
    with pytest.raises(ValueError):
        g2.seek(r.write_pos + 8)
    with pytest.raises(ValueError):
        g2.seek(mid + 116)  # 8-aligned but inside the next record (framed size 16 + 104)
    g2.seek(mid + 120)
    assert g2.seq == 4 and len(g2.read(100)) == 6
    g2.commit(g2.position)
    assert r.gate_pos == r.write_pos and r.gate_seq == 10
    r.close()
