"""What the ring should carry for the live path: the JSON the acceptor made, or the bytes alone.

Today an EVENT record carries both: the acceptor's JSON (for WebSocket/SSE/ring-fresh REST) and
the wire payload (what the writer stores). The alternative is the payload alone, each web worker
decoding it for its subscribers. Per event of tart-loadgen's default mix this prints:
- acceptor: decode only vs decode + JSON (what carrying the JSON costs the acceptor),
- web worker: from the JSON (what broadcaster.EventItem does: one UTF-8 decode) vs decoding the
  payload and rendering JSON itself (what it would do with bytes alone), per worker,
- ring bytes per record either way,
and the machine. Ratios are within this run.

    .venv/bin/python bench/livepath.py [--events 200000] [--workers 2]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import time

import orjson

from tart.engine.codec import decode_event, decode_payload
from tart.engine.codec.events import _JSON_PREFIX
from tart.engine.loadgen import build_template
from tart.engine.record import EVENT_HEADER_SIZE


def frames(n: int) -> list[bytes]:
    t = build_template(random.Random(1), "default", 341)
    one = [bytes(t.blob[t.starts[i] + 4:t.starts[i + 1]]) for i in range(len(t.types))]
    return (one * (n // len(one) + 1))[:n]


def best_of(fn, repeat: int = 5) -> float:
    """Best of ``repeat`` runs with the cyclic GC off (its pauses land on whichever run is
    unlucky; tart's hot paths keep bytes, not object graphs)."""
    best = float("inf")
    fn()  # warm up
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        finally:
            gc.enable()
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=2, help="web workers that each render every event")
    args = ap.parse_args()
    fs = frames(args.events)
    n = len(fs)
    decoded = [decode_event(f, 341) for f in fs]
    jsons = [d.json() for d in decoded]
    payloads = [(d.event_type, d.timestamp, f[9:]) for d, f in zip(decoded, fs, strict=True)]

    dec = best_of(lambda: [decode_event(f, 341) for f in fs])
    dec_json = best_of(lambda: [decode_event(f, 341).json() for f in fs])
    from_json = best_of(lambda: [j.decode() for j in jsons])
    dumps = orjson.dumps
    from_bytes = best_of(lambda: [(_JSON_PREFIX[et] + dumps(decode_payload(et, ts, p)[2]) + b"}").decode()
                                  for et, ts, p in payloads])
    us = 1e6 / n
    avg_json = sum(map(len, jsons)) / n
    avg_payload = sum(len(p) for _, _, p in payloads) / n
    print(f"machine: {platform.machine()} nproc {os.cpu_count()} load {os.getloadavg()[0]:.2f}; {n} events, "
          f"tart-loadgen default mix")
    print(f"acceptor  decode only          {dec * us:6.2f} us/event")
    print(f"acceptor  decode + JSON        {dec_json * us:6.2f} us/event  (+{(dec_json - dec) * us:.2f} to carry JSON)")
    print(f"web       from ring JSON       {from_json * us:6.2f} us/event per worker")
    print(f"web       decode payload+JSON  {from_bytes * us:6.2f} us/event per worker "
          f"({from_bytes / from_json:.1f}x)")
    extra_web = (from_bytes - from_json) * us * args.workers
    print(f"bytes alone would save the acceptor {(dec_json - dec) * us:.2f} us/event and cost {args.workers} "
          f"web workers {extra_web:.2f} us/event in all")
    print(f"ring record: header {EVENT_HEADER_SIZE} B + JSON {avg_json:.0f} B + payload {avg_payload:.0f} B = "
          f"{EVENT_HEADER_SIZE + avg_json + avg_payload:.0f} B with JSON, {EVENT_HEADER_SIZE + avg_payload:.0f} B "
          f"without")


if __name__ == "__main__":
    main()
