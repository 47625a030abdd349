"""Benchmark: JIP-3 decode cost per event, alone and with JSON, over a realistic mix.

Run: .venv/bin/python bench/codec.py [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import platform
import struct
import time

from tart.engine.codec import EVENT_NAMES, decode_event

CORES = 341  # GP full-spec core count: Status carries [u8; 341]


def _h(i: int) -> bytes:
    return bytes((i + k) & 0xFF for k in range(32))


def _nat_small(n: int) -> bytes:
    assert n < 128
    return bytes((n,))


def _reason(text: bytes) -> bytes:
    return _nat_small(len(text)) + text


def _addr() -> bytes:
    return bytes(10) + b"\xff\xff" + bytes((10, 0, 0, 7)) + struct.pack("<H", 30333)


def _outline() -> bytes:
    return struct.pack("<I", 51234) + _h(3) + struct.pack("<6I", 2, 1, 100, 4, 300, 0)


def _exec(g: int, t: int) -> bytes:
    return struct.pack("<QQ", g, t)


def frames(cores: int = CORES) -> list[tuple[int, bytes, int]]:
    """(event_type, frame, weight): weights approximate a validator's stream."""
    ts = struct.pack("<Q", 60_000_000_123)
    refine = _exec(1000, 2000) + struct.pack("<Q", 300) + b"".join(_exec(i, i) for i in range(5))
    acc = struct.pack("<3I", 1, 0, 2) + _exec(5000, 7000) + struct.pack("<Q", 9) + b"".join(
        _exec(i, i) for i in range(5)) + struct.pack("<Q", 11) + _exec(1, 1)
    item = struct.pack("<IIQQI", 7, 100, 10**6, 10**5, 0) + b"\x02" + _h(9) + struct.pack("<H", 1) + _h(10) + \
        struct.pack("<H", 0x8002) + struct.pack("<H", 3)
    body = {
        10: struct.pack("<3I", 40, 20, 30) + bytes(i % 3 for i in range(cores)) + struct.pack("<IQII", 5, 1 << 20, 3, 999),
        11: struct.pack("<I", 1234) + _h(1),
        12: struct.pack("<I", 1230) + _h(2),
        21: _addr(),
        23: struct.pack("<Q", 17) + _h(4),
        24: _h(5) + _addr(),
        26: struct.pack("<Q", 18),
        27: _h(6) + b"\x01\x01" + _reason(b"connection reset by peer"),
        62: _h(7) + b"\x01" + struct.pack("<I", 1234) + _h(8),
        40: struct.pack("<I", 1235) + _h(1),
        42: struct.pack("<Q", 99) + _outline(),
        43: struct.pack("<I", 1235) + _outline(),
        45: struct.pack("<Q", 100),
        47: struct.pack("<Q", 100) + b"\x02" + struct.pack("<I", 1) + acc + struct.pack("<I", 2) + acc,
        90: _h(11) + b"\x00",
        94: struct.pack("<QH", 200, 3) + struct.pack("<I", 4096) + _h(12) + _h(13) + struct.pack("<I", 1200) +
        b"\x00" + b"\x01" + item,
        95: struct.pack("<Q", 200) + _exec(100, 200) + struct.pack("<Q", 5) + _exec(3, 4),
        101: struct.pack("<Q", 200) + b"\x01" + refine,
        102: struct.pack("<Q", 200) + _h(14) + struct.pack("<I", 8000) + _h(15) + _h(16),
        105: struct.pack("<Q", 200) + _h(14) + struct.pack("<I", 1236) + b"\x03" + struct.pack("<3H", 1, 5, 9),
    }
    weights = {10: 10, 11: 10, 12: 10, 21: 6, 23: 6, 24: 6, 26: 6, 27: 4, 62: 20, 40: 2, 42: 2, 43: 8, 45: 8,
               47: 8, 90: 2, 94: 2, 95: 2, 101: 2, 102: 2, 105: 2}
    return [(et, ts + bytes((et,)) + body[et], weights[et]) for et in body]


def _run(batch: list[bytes], seconds: float, with_json: bool, cores: int = CORES) -> float:
    """Best-of-5 microseconds per event."""
    best = float("inf")
    dec = decode_event
    for _ in range(5):
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds / 5
        while True:
            if with_json:
                for b in batch:
                    dec(b, cores).json()
            else:
                for b in batch:
                    dec(b, cores)
            n += len(batch)
            t1 = time.perf_counter()
            if t1 >= deadline:
                break
        best = min(best, (t1 - t0) / n * 1e6)
    return best


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = ap.parse_args()
    fr = frames()
    print(f"CPU: {_cpu()}")
    print(f"Python: {platform.python_implementation()} {platform.python_version()}; C (core count) = {CORES}")
    print(f"{'event':<32}{'bytes':>6}{'decode µs':>11}{'+json µs':>10}")
    for et, frame, _ in fr:
        d = _run([frame], args.seconds / 4, False)
        j = _run([frame], args.seconds / 4, True)
        print(f"{et:>3} {EVENT_NAMES[et]:<28}{len(frame):>6}{d:>11.2f}{j:>10.2f}")
    small = frames(cores=2)[0][1]
    print(f" 10 Status with C=2{'':<11}{len(small):>6}{_run([small], args.seconds / 4, False, 2):>11.2f}"
          f"{_run([small], args.seconds / 4, True, 2):>10.2f}")
    batch = [frame for _, frame, w in fr for _ in range(w)]
    mix = ", ".join(f"{EVENT_NAMES[et]}x{w}" for et, _, w in fr)
    print(f"mix ({len(batch)} frames per round): {mix}")
    d = _run(batch, args.seconds, False)
    j = _run(batch, args.seconds, True)
    print(f"mix decode:       {d:6.2f} µs/event  {1e6 / d:>10,.0f} events/s (one core)")
    print(f"mix decode+json:  {j:6.2f} µs/event  {1e6 / j:>10,.0f} events/s (one core)")


if __name__ == "__main__":
    main()
