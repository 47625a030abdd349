"""`tart-loadgen`: many plausible JIP-3 nodes over real TCP from one process.

Each node sends node information (GP 0.7 parameters, 134 bytes) and then a stream of events
that follows the node pipelines: ConnectingOut then ConnectedOut naming its id, Authoring ->
Authored -> BlockExecuted, WorkPackageSubmission -> WorkPackageReceived -> Authorized -> Refined
-> WorkReportBuilt -> GuaranteeBuilt -> SendingGuarantee -> GuaranteeSent, shard and segment
requests, preimages, tickets, ... plus a Status every ~2 s and best/finalized blocks with rising
slots.

To saturate tart from one process nothing is encoded while sending: a few templates (cycles of
~1000 encoded frames, shared by all nodes) are built at start; sending a batch copies a
contiguous slice of a template after patching, in place, only what differs per node and per
pass: timestamps, the Event ID a linked event names, and slots. Sends are paced by one timer
(every 10 ms each node writes what its rate allows, in one write); --rate 0 writes as fast as
the socket drains.

The JSON printed at the end (and returned by run_loadgen) says exactly what was sent, per node
and per event type, so tests can compare it with what tart stored.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from tart import add_version_flag
from tart.engine.codec import JCE_EPOCH_UNIX_US, NodeInfo, encode_event, encode_node_info, event_schema
from tart.engine.codec.nodeinfo import PARAMS_GP07
from tart.engine.codec.types import (
    U64,
    BoolT,
    Bytes,
    Composite,
    CoreBits,
    CoreCounts,
    Enum,
    ImportSpecT,
    Int,
    Option,
    PeerAddressT,
    Seq,
    String,
)

TICK_S = 0.01
MAX_TICK_S = 0.1
PROGRESS_S = 1.0  # how often the terminal progress line is rewritten
FRAMES_PER_WRITE = 8  # target when pacing: fewer, larger writes
CYCLE_EVENTS = 1024
TEMPLATES_PER_CORE_COUNT = 4
STATUS_EVERY_S = 2.0
PUMP_FRAMES = 512  # --rate 0: frames per write
WRITE_HIGH_WATER = 512 * 1024

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_SLOT_TYPES = {11, 12, 40, 43}  # events whose first field is a slot

# Scenarios: (event type, index of the earlier step whose Event ID this one names, or None).
_S = tuple[tuple[int, int | None], ...]
SCENARIOS: dict[str, tuple[float, _S]] = {
    # name: (weight in the default mix, steps)
    "best_block": (8, ((11, None),)),
    "finalized": (3, ((12, None),)),
    "sync": (0.2, ((13, None),)),
    "connect_out": (3, ((24, None), (26, 0))),
    "connect_out_fail": (0.5, ((24, None), (25, 0))),
    "connect_in": (3, ((21, None), (23, 0))),
    "connect_in_fail": (0.5, ((21, None), (22, 0))),
    "refused": (0.5, ((20, None),)),
    "disconnected": (2, ((27, None),)),
    "misbehaved": (0.2, ((28, None),)),
    "author": (1, ((40, None), (42, 0), (47, 0))),
    "author_fail": (0.2, ((40, None), (41, 0))),
    "author_exec_fail": (0.1, ((40, None), (42, 0), (46, 0))),
    "import": (4, ((43, None), (45, 0), (47, 0))),
    "import_fail": (0.2, ((43, None), (44, 0))),
    "announce": (6, ((60, None), (62, None), (62, None), (61, None))),
    "block_req_out": (2, ((63, None), (66, 0), (68, 0))),
    "block_req_in": (2, ((64, None), (67, 0), (68, 0))),
    "block_req_fail": (0.3, ((63, None), (65, 0))),
    "tickets": (0.3, ((80, None), (82, 0), (84, None), (84, None))),
    "tickets_fail": (0.1, ((80, None), (81, 0), (83, None))),
    "guarantee_primary": (2, (
        (90, None), (94, 0), (95, 0), (96, 0), (97, 0), (98, 0), (100, 0), (101, 0), (102, 0), (104, 0),
        (105, 0), (106, 10), (108, 11), (106, 10), (107, 13), (109, 0),
    )),
    "guarantee_secondary": (1, ((91, None), (94, 0), (95, 0), (101, 0), (102, 0), (103, 0))),
    "wp_failed": (0.3, ((90, None), (92, 0))),
    "wp_duplicate": (0.3, ((90, None), (93, 0))),
    "wp_share_failed": (0.2, ((90, None), (98, 0), (99, 0))),
    "guarantee_in": (2, ((110, None), (112, 0))),
    "guarantee_in_fail": (0.2, ((110, None), (111, 0))),
    "guarantee_discarded": (0.5, ((113, None),)),
    "shard_req_out": (2, ((120, None), (123, 0), (125, 0))),
    "shard_req_in": (2, ((121, None), (124, 0), (125, 0))),
    "shard_req_fail": (0.2, ((120, None), (122, 0))),
    "assurance": (2, ((126, None), (128, 0), (128, 0), (127, 0), (129, 0))),
    "assurance_in": (2, ((131, None), (130, None))),
    "bundle_shard_out": (0.5, ((140, None), (143, 0), (145, 0))),
    "bundle_shard_in": (0.5, ((141, None), (144, 0), (145, 0))),
    "bundle_shard_fail": (0.1, ((140, None), (142, 0))),
    "bundle_reconstruct": (0.3, ((146, None), (147, None))),
    "bundle_req_out": (0.3, ((148, None), (151, 0), (153, 0))),
    "bundle_req_in": (0.3, ((149, None), (152, 0), (153, 0))),
    "bundle_req_fail": (0.1, ((148, None), (150, 0))),
    "segments": (0.5, (
        (90, None), (160, 0), (161, 0), (162, 0), (165, 3), (167, 3), (168, 0), (170, 6), (172, 0), (173, 0),
        (176, 9), (178, 9),
    )),
    "segment_shard_in": (0.3, ((163, None), (166, 0), (167, 0))),
    "segment_shard_fail": (0.1, ((90, None), (162, 0), (164, 1))),
    "segment_reconstruct_fail": (0.1, ((90, None), (168, 0), (169, 1), (171, 0))),
    "segment_req_in": (0.3, ((174, None), (177, 0), (178, 0))),
    "segment_req_fail": (0.1, ((90, None), (173, 0), (175, 1))),
    "preimage_announce": (0.5, ((191, None), (190, None), (192, None))),
    "preimage_req_out": (0.3, ((193, None), (196, 0), (198, 0))),
    "preimage_req_in": (0.3, ((194, None), (197, 0), (198, 0))),
    "preimage_req_fail": (0.1, ((193, None), (195, 0))),
    "preimage_discarded": (0.2, ((199, None),)),
    "dropped": (0.0, ((0, None),)),  # only in the "all" mix: JIP-3 id jumps
}
MIXES = ("default", "status", "all")

_REASONS = ("", "timeout", "stream reset by peer", "protocol error: unexpected message", "no route", "bad signature")


def _link_field(event_type: int) -> str | None:
    """Name of the Event ID an event starts with (every linked JIP-3 event has it first)."""
    members = event_schema(event_type)
    if members and members[0][1] is U64 and members[0][0].endswith("_id"):
        return members[0][0]
    return None


def _gen(t: Any, rng: random.Random, c: int) -> Any:
    """A plausible random value of codec type `t`, in the codec's JSON-ready form."""
    if isinstance(t, BoolT):
        return rng.random() < 0.5
    if isinstance(t, Int):
        return rng.randrange({1: 8, 2: 1024, 4: 100_000, 8: 1_000_000_000}[t.size])
    if isinstance(t, Enum):
        return rng.choice(t.names)
    if isinstance(t, Bytes):
        return "0x" + rng.randbytes(t.size).hex()
    if isinstance(t, PeerAddressT):
        ipv6 = bytes(10) + b"\xff\xff" + bytes((10, rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)))
        return {"ipv6": "0x" + ipv6.hex(), "port": 30333}
    if isinstance(t, ImportSpecT):
        kind = rng.choice(("SegmentsRoot", "WorkPackageHash"))
        return {"root_identifier": {kind: "0x" + rng.randbytes(32).hex()}, "export_index": rng.randrange(3072)}
    if isinstance(t, Composite):
        if t.keyed:
            return {k: _gen(sub, rng, c) for k, sub in t.members}
        return [_gen(sub, rng, c) for _, sub in t.members]
    if isinstance(t, String):
        return rng.choice(_REASONS)[: t.bound]
    if isinstance(t, Option):
        return None if rng.random() < 0.3 else _gen(t.inner, rng, c)
    if isinstance(t, Seq):
        return [_gen(t.inner, rng, c) for _ in range(rng.randrange(4))]
    if isinstance(t, CoreCounts):
        return [rng.randrange(3) for _ in range(c)]
    if isinstance(t, CoreBits):
        return "0x" + rng.randbytes((c + 7) // 8).hex()
    raise TypeError(f"no generator for codec type {type(t).__name__}")


def _value(event_type: int, rng: random.Random, c: int) -> dict:
    value = {"timestamp": 0}
    for key, t in event_schema(event_type):
        value[key] = _gen(t, rng, c)
    if event_type == 0:
        value["num"] = rng.randrange(1, 50)
    return value


@dataclass
class Template:
    """One cycle of encoded frames shared by nodes; per-node values are patched in before each send."""

    core_count: int
    blob: bytearray
    starts: list[int]  # offset of each frame's length prefix; starts[-1] = len(blob)
    types: list[int]
    incs: list[int]  # JIP-3 id advance after each event (Dropped: its num)
    ops: list[tuple[int, int, int] | None]  # (0, offset, parent index) Event ID / (1, offset, slot rel)
    slots_per_cycle: int
    counts: dict[int, int]
    status: bytearray  # a Status frame with its length prefix

    def __len__(self) -> int:
        return len(self.types)


def build_template(rng: random.Random, mix: str, core_count: int, size: int = CYCLE_EVENTS) -> Template:
    if mix not in MIXES:
        raise ValueError(f"unknown mix {mix!r} (choose from {', '.join(MIXES)})")
    names = list(SCENARIOS)
    if mix == "status":
        plan = [((10, None),)] * size
    elif mix == "all":
        # Every scenario in turn, so each event family appears in every cycle.
        plan = [SCENARIOS[n][1] for n in names]
        plan = plan * max(1, size // sum(len(s) for s in plan))
    else:
        weights = [SCENARIOS[n][0] for n in names]
        plan = []
        total = 0
        while total < size:
            steps = SCENARIOS[rng.choices(names, weights)[0]][1]
            plan.append(steps)
            total += len(steps)
    blob = bytearray()
    starts: list[int] = []
    types: list[int] = []
    incs: list[int] = []
    ops: list[tuple[int, int, int] | None] = []
    counts: dict[int, int] = {}
    slot_rel = 0
    for steps in plan:
        base = len(types)
        for et, parent in steps:
            value = _value(et, rng, core_count)
            op: tuple[int, int, int] | None = None
            link = _link_field(et)
            start = len(blob)
            if link is not None:
                # Steps without a named parent (audit ids: "TODO" in JIP-3) name the previous event.
                target = base + parent if parent is not None else max(0, len(types) - 1)
                op = (0, start + 4 + 9, target)
            elif et in _SLOT_TYPES:
                if et == 11:
                    slot_rel += 1
                op = (1, start + 4 + 9, slot_rel - (2 if et == 12 else 0) + (1 if et in (40, 43) else 0))
            frame = encode_event(et, value, core_count)
            blob += _U32.pack(len(frame))
            blob += frame
            starts.append(start)
            types.append(et)
            incs.append(value["num"] if et == 0 else 1)
            ops.append(op)
            counts[et] = counts.get(et, 0) + 1
    starts.append(len(blob))
    status_frame = encode_event(10, _value(10, rng, core_count), core_count)
    status = bytearray(_U32.pack(len(status_frame)) + status_frame)
    return Template(core_count, blob, starts, types, incs, ops, max(slot_rel, 1), counts, status)


def make_node_info(rng: random.Random, core_count: int, index: int) -> NodeInfo:
    tiny = core_count <= 2
    values = {
        "deposit_per_item": 10, "deposit_per_byte": 1, "deposit_per_account": 100, "core_count": core_count,
        "min_turnaround_period": 32 if tiny else 19_200, "epoch_period": 12 if tiny else 600,
        "max_accumulate_gas": 10_000_000, "max_is_authorized_gas": 50_000_000, "max_refine_gas": 5_000_000_000,
        "block_gas_limit": 20_000_000 if tiny else 3_500_000_000, "recent_block_count": 8,
        "max_work_items": 16, "max_dependencies": 8, "max_tickets_per_block": 3 if tiny else 16,
        "max_lookup_anchor_age": 14_400, "tickets_attempts_number": 3 if tiny else 2, "auth_window": 8,
        "slot_period_sec": 6, "auth_queue_len": 80, "rotation_period": 4 if tiny else 10,
        "max_extrinsics": 128, "availability_timeout": 5, "val_count": 6 if tiny else 1023,
        "max_authorizer_code_size": 64_000, "max_input": 13_794_305, "max_service_code_size": 4_000_000,
        "basic_piece_len": 4 if tiny else 684, "max_imports": 3072, "segment_piece_count": 1026 if tiny else 6,
        "max_report_elective_data": 49_152, "transfer_memo_size": 128, "max_exports": 3072,
        "epoch_tail_start": 10 if tiny else 500,
    }
    params = {k: values[k] for k, _ in PARAMS_GP07}
    impl = ("PolkaJam", "JAM-rs", "Typeberry", "GrayMatter")[index % 4]
    return NodeInfo(
        protocol_version=0, params=params, params_layout="gp-0.7", params_raw=b"", core_count=core_count,
        genesis=bytes(range(32)), peer_id=rng.randbytes(32),
        ipv6=bytes(10) + b"\xff\xff" + bytes((10, 0, index >> 8 & 255, index & 255)), port=30333,
        flags=1, implementation_name=impl, implementation_version=f"0.{index % 7}.{index % 3}",
        gp_version="0.7.1", additional_info=f"tart-loadgen node {index}",
    )


class _NodeProtocol(asyncio.Protocol):
    def __init__(self, node: Node) -> None:
        self.node = node

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[attr-defined]
        self.node.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        pass  # tart never writes to a node

    def pause_writing(self) -> None:
        self.node.paused = True
        self.node.pauses += 1

    def resume_writing(self) -> None:
        self.node.paused = False
        if self.node.on_resume is not None:
            self.node.on_resume()

    def connection_lost(self, exc: Exception | None) -> None:
        node = self.node
        node.open = False
        if not node.stopping:
            node.error = f"closed by tart: {exc}" if exc else "closed by tart"
        if not node.closed.done():
            node.closed.set_result(None)


@dataclass
class Node:
    index: int
    info: NodeInfo
    tpl: Template
    rate: float
    max_events: int
    transport: asyncio.Transport | None = None
    paused: bool = False
    pauses: int = 0  # times the socket's buffer filled (tart not reading: backpressure)
    open: bool = False
    connected: bool = False
    stopping: bool = False
    error: str | None = None
    on_resume: Any = None
    closed: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    pos: int = 0  # next index in the template cycle
    cycles: int = 0
    eid: int = 0  # next JIP-3 event id
    last_eid: int | None = None
    sent: int = 0
    statuses: int = 0
    last_status: float = 0.0
    ids: list[int] = field(default_factory=list)

    def send(self, n: int, now: float) -> None:
        """Write up to n events (one Status first if one is due) in one write."""
        if not self.open or self.transport is None or n <= 0:
            return
        if self.max_events:
            n = min(n, self.max_events - self.sent)
            if n <= 0:
                return
        tpl = self.tpl
        blob, starts, incs, ops = tpl.blob, tpl.starts, tpl.incs, tpl.ops
        ids = self.ids
        pack64, pack32 = _U64.pack_into, _U32.pack_into
        ts = time.time_ns() // 1000 - JCE_EPOCH_UNIX_US
        chunks: list[bytes] = []
        eid = self.eid
        count = n
        if now - self.last_status >= STATUS_EVERY_S:
            self.last_status = now
            status = tpl.status
            pack64(status, 4, ts)
            chunks.append(bytes(status))
            self.last_eid = eid
            eid += 1
            self.statuses += 1
            n -= 1
        slot_base = self.cycles * tpl.slots_per_cycle + 1000
        cycle = len(tpl)
        while n > 0:
            a = self.pos
            b = min(cycle, a + n)
            for i in range(a, b):
                ids[i] = eid
                op = ops[i]
                if op is not None:
                    if op[0] == 0:
                        pack64(blob, op[1], ids[op[2]])
                    else:
                        pack32(blob, op[1], slot_base + op[2])
                pack64(blob, starts[i] + 4, ts)
                eid += incs[i]
            self.last_eid = ids[b - 1]
            chunks.append(bytes(blob[starts[a] : starts[b]]))
            n -= b - a
            if b == cycle:
                self.pos = 0
                self.cycles += 1
                slot_base += tpl.slots_per_cycle
            else:
                self.pos = b
        self.sent += count
        self.eid = eid
        self.transport.write(b"".join(chunks) if len(chunks) > 1 else chunks[0])

    def by_type(self) -> dict[str, int]:
        tpl = self.tpl
        counts = {et: k * self.cycles for et, k in tpl.counts.items()}
        for i in range(self.pos):
            counts[tpl.types[i]] = counts.get(tpl.types[i], 0) + 1
        if self.statuses:
            counts[10] = counts.get(10, 0) + self.statuses
        return {str(et): k for et, k in sorted(counts.items()) if k}


async def run_loadgen(
    target: tuple[str, int],
    nodes: int,
    rate: float,
    duration: float,
    seed: int = 0,
    mix: str = "default",
    connect_timeout: float = 10.0,
    core_count: int | None = None,
    max_events: int = 0,
    flush_timeout: float = 30.0,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> dict:
    """Run `nodes` nodes against `target` for `duration` seconds; return the report dict.

    rate: events/s per node (0 = as fast as the sockets take them). max_events: stop each node
    after this many events (0 = no limit; the run still ends after `duration`).
    core_count: C for every node (None: alternate 2 and 341 so both Status sizes appear).
    progress: called about once a second while sending with ``sent``, ``sent_per_s``,
    ``connections`` (open now), ``nodes``, ``paused`` (sockets tart is not draining now) and ``pauses``.
    """
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    templates: dict[int, list[Template]] = {}
    node_list: list[Node] = []
    for i in range(nodes):
        c = core_count if core_count is not None else (2 if i % 2 == 0 else 341)
        if c not in templates:
            templates[c] = [build_template(random.Random(f"{seed}/{c}/{k}"), mix, c)
                            for k in range(TEMPLATES_PER_CORE_COUNT)]
        tpl = templates[c][i % TEMPLATES_PER_CORE_COUNT]
        node = Node(i, make_node_info(rng, c, i), tpl, rate, max_events)
        node.ids = [0] * len(tpl)
        node.last_status = -1e9  # a Status first, then every STATUS_EVERY_S
        node_list.append(node)

    host, port = target
    sem = asyncio.Semaphore(256)

    async def connect(node: Node) -> None:
        async with sem:
            try:
                await asyncio.wait_for(loop.create_connection(lambda: _NodeProtocol(node), host, port),
                                       connect_timeout)
            except (TimeoutError, OSError) as exc:
                node.error = f"connect failed: {exc!r}"
                node.closed.set_result(None)
                return
        node.open = node.connected = True
        assert node.transport is not None
        frame = encode_node_info(node.info)
        node.transport.write(_U32.pack(len(frame)) + frame)

    await asyncio.gather(*(connect(n) for n in node_list))
    t0 = loop.time()
    end = t0 + duration

    done = asyncio.Event()

    if progress is not None:
        last = [t0, 0]

        def report_progress() -> None:
            if done.is_set():
                return
            now = loop.time()
            sent = sum(n.sent for n in node_list)
            dt = now - last[0]
            progress({
                "sent": sent, "sent_per_s": (sent - last[1]) / dt if dt > 0 else 0.0,
                "connections": sum(1 for n in node_list if n.open), "nodes": len(node_list),
                "paused": sum(1 for n in node_list if n.paused), "pauses": sum(n.pauses for n in node_list),
            })
            last[:] = [now, sent]
            loop.call_later(PROGRESS_S, report_progress)

        loop.call_later(PROGRESS_S, report_progress)

    def finished(node: Node) -> bool:
        return not node.open or (node.max_events and node.sent >= node.max_events)

    if rate > 0:
        def tick() -> None:
            now = loop.time()
            if now >= end or all(finished(n) for n in node_list):
                done.set()
                return
            burst_cap = max(1, int(rate * 0.5))
            for node in node_list:
                if node.paused or not node.open:
                    continue
                due = int(rate * (now - t0)) - node.sent
                if due > 0:
                    node.send(min(due, burst_cap), now)
            loop.call_later(tick_s, tick)

        # One write per node per tick: at low rates a longer tick keeps writes from carrying a
        # single frame each (a syscall per event would cost more than tart's decoding).
        tick_s = min(MAX_TICK_S, max(TICK_S, FRAMES_PER_WRITE / rate))
        loop.call_soon(tick)
    else:
        def pump(node: Node) -> None:
            now = loop.time()
            if now >= end:
                return
            for _ in range(8):
                if node.paused or finished(node):
                    break
                node.send(PUMP_FRAMES, now)
            if not node.paused and not finished(node):
                loop.call_soon(pump, node)

        for node in node_list:
            node.on_resume = (lambda n=node: loop.call_soon(pump, n))
            if node.open:
                loop.call_soon(pump, node)

        def watch() -> None:
            if loop.time() >= end or all(finished(n) for n in node_list):
                done.set()
            else:
                loop.call_later(TICK_S, watch)

        loop.call_soon(watch)

    await done.wait()
    elapsed = loop.time() - t0
    unflushed = 0
    for node in node_list:
        node.stopping = True
        node.on_resume = None
        if node.open and node.transport is not None:
            node.transport.close()  # close() sends what is buffered first
    try:
        await asyncio.wait_for(asyncio.gather(*(n.closed for n in node_list)), flush_timeout)
    except TimeoutError:
        for node in node_list:
            if node.transport is not None and not node.closed.done():
                unflushed += node.transport.get_write_buffer_size()
                node.transport.abort()

    sent_total = sum(n.sent for n in node_list)
    report: dict[str, Any] = {
        "target": f"{host}:{port}",
        "nodes": nodes,
        "duration_s": round(elapsed, 3),
        "connected": sum(1 for n in node_list if n.connected),
        "sent_total": sent_total,
        "rate_achieved": round(sent_total / elapsed, 1) if elapsed > 0 else 0.0,
        "mix": mix,
        "seed": seed,
        "per_node": [
            {
                "peer_id": n.info.peer_id.hex(),
                "node_id": n.info.node_id,
                "core_count": n.info.core_count,
                "sent": n.sent,
                "by_type": n.by_type(),
                "last_event_id": n.last_eid,
                # Closed by tart (or never connected) before the end: `sent` counts what was handed
                # to the socket, and tart may not have read all of it.
                "closed_early": n.error is not None,
            }
            for n in node_list
        ],
    }
    errors = [{"node": n.index, "error": n.error} for n in node_list if n.error]
    if errors:
        report["errors"] = errors
    if unflushed:
        report["unflushed_bytes"] = unflushed
    return report


def _parse_target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port 1-65535, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _number(kind: type, low: float, low_ok: bool = True, high: float | None = None) -> Callable[[str], Any]:
    """An argparse type: ``kind`` (int or float) >= low (> low if not low_ok), <= high."""
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if v < low or (v == low and not low_ok) or (high is not None and v > high):
            bound = f"{'>=' if low_ok else '>'} {low:g}" + (f" and <= {high:g}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return v
    return parse


def format_progress(p: dict[str, float]) -> str:
    """The one-line progress shown on a terminal."""
    return (f"sent {int(p['sent']):,} ({p['sent_per_s']:,.0f}/s)  connections {int(p['connections'])}/"
            f"{int(p['nodes'])}  backpressure: {int(p['paused'])} paused now, {int(p['pauses'])} pauses")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tart-loadgen", description=__doc__.split("\n\n")[0].replace("`", ""),
                                epilog="Prints a JSON report on stdout at the end; a live progress line on "
                                       "stderr when it is a terminal.")
    add_version_flag(p)
    p.add_argument("--target", type=_parse_target, default=("127.0.0.1", 9000), metavar="HOST:PORT",
                   help="tart's telemetry port (default: 127.0.0.1:9000)")
    p.add_argument("--nodes", metavar="N", type=_number(int, 1, high=100_000), default=10,
                   help="concurrent node connections, 1 to 100000 (default: 10)")
    p.add_argument("--rate", metavar="EVENTS_PER_S", type=_number(float, 0), default=100.0,
                   help="events/s per node; 0 = as fast as the sockets take them (default: 100)")
    p.add_argument("--duration", metavar="SECONDS", type=_number(float, 0, low_ok=False), default=10.0,
                   help="seconds of sending (default: 10)")
    p.add_argument("--seed", metavar="N", type=int, default=0, help="seed for node identities and event contents (default: 0)")
    p.add_argument("--mix", choices=MIXES, default="default",
                   help="default: weighted realistic mix; status: Status only; all: every event family each cycle")
    p.add_argument("--connect-timeout", metavar="SECONDS", type=_number(float, 0, low_ok=False), default=10.0,
                   help="seconds to wait for each connection (default: 10)")
    p.add_argument("--core-count", metavar="C", type=_number(int, 1, high=1023), default=None,
                   help="C (cores) for every node, 1 to 1023 (default: alternate 2 and 341)")
    p.add_argument("--max-events", metavar="N", type=_number(int, 0), default=0,
                   help="stop each node after this many events; 0 = no limit (default: 0)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="live progress line on stderr (default: when stderr is a terminal)")
    return p


def main(argv: list[str] | None = None) -> None:
    p = _parser()
    args = p.parse_args(argv)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    show = sys.stderr.isatty() if args.progress is None else args.progress

    def progress(state: dict[str, float]) -> None:
        # \r and erase-to-end: one line rewritten in place.
        sys.stderr.write("\r" + format_progress(state) + "\x1b[K")
        sys.stderr.flush()

    with runner:
        report = runner.run(run_loadgen(args.target, args.nodes, args.rate, args.duration, seed=args.seed,
                                        mix=args.mix, connect_timeout=args.connect_timeout,
                                        core_count=args.core_count, max_events=args.max_events,
                                        progress=progress if show else None))
    if show:
        sys.stderr.write("\n")
    sys.stdout.write(orjson.dumps(report).decode() + "\n")
    sys.stdout.flush()
    # Connections that tart closed are reported (closed_early, errors), not a failure of the run;
    # a run where no node could even connect is.
    os._exit(1 if report["nodes"] and not report["connected"] else 0)


if __name__ == "__main__":
    main()
