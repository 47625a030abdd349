"""Ring throughput: write_many in one process, gate read + commit in another.

Run: .venv/bin/python bench/ring.py [--records 2000000] [--capacity 67108864] [--sizes 100,300]
Prints records/s for 100- and 300-byte records (two processes), the same in one process loop,
and a tail reader following along; plus the CPU model and Python version.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time

from tart.engine.ring import Ring

CTX = mp.get_context("spawn")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _producer(name: str, size: int, n: int, batch: int, start, cpu_q) -> None:
    r = Ring.attach(name)
    payloads = [bytes([i % 256]) * size for i in range(batch)]
    start.wait()
    c0 = time.process_time()
    done = 0
    while done < n:
        k = r.write_many(payloads if n - done >= batch else payloads[: n - done])
        if k == 0:
            time.sleep(0.00005)  # the acceptor would pause its sockets here
        done += k
    cpu_q.put(time.process_time() - c0)
    r.close()


def two_process(size: int, n: int, capacity: int, batch: int, read_batch: int) -> tuple[float, float, float]:
    """(records/s wall clock, producer CPU µs per record, reader CPU µs per record)."""
    name = f"tart-bench-{os.getpid()}"
    Ring.remove(name)
    r = Ring.create(name, capacity, 0)
    try:
        g = r.gate_reader()
        start = CTX.Event()
        cpu_q = CTX.Queue()
        p = CTX.Process(target=_producer, args=(name, size, n, batch, start, cpu_q))
        p.start()
        time.sleep(0.5)  # let the child import before the clock starts
        t0 = time.perf_counter()
        c0 = time.process_time()
        start.set()
        got = 0
        while got < n:
            recs = g.read(read_batch)
            if recs:
                got += len(recs)
                g.commit(g.position)
            else:
                time.sleep(0.00005)
        dt = time.perf_counter() - t0
        reader_cpu = time.process_time() - c0
        producer_cpu = cpu_q.get(timeout=60)
        p.join()
        return n / dt, producer_cpu / n * 1e6, reader_cpu / n * 1e6
    finally:
        r.close()
        r.unlink()


def one_process(size: int, n: int, capacity: int, batch: int) -> float:
    name = f"tart-bench1-{os.getpid()}"
    Ring.remove(name)
    r = Ring.create(name, capacity, 0)
    try:
        g = r.gate_reader()
        payloads = [bytes([i % 256]) * size for i in range(batch)]
        t0 = time.perf_counter()
        got = 0
        while got < n:
            r.write_many(payloads)
            got += len(g.read(batch))
            g.commit(g.position)
        return got / (time.perf_counter() - t0)
    finally:
        r.close()
        r.unlink()


def tail_follow(size: int, n: int, capacity: int, batch: int) -> tuple[float, int]:
    """One process: producer + gate reader + one tail reader each batch (the web tier's view)."""
    name = f"tart-bench2-{os.getpid()}"
    Ring.remove(name)
    r = Ring.create(name, capacity, 0)
    try:
        g = r.gate_reader()
        t = r.tail_reader()
        payloads = [bytes([i % 256]) * size for i in range(batch)]
        t0 = time.perf_counter()
        got = missed = 0
        while got < n:
            r.write_many(payloads)
            got += len(g.read(batch))
            g.commit(g.position)
            recs, m = t.read(batch)
            missed += m
        return got / (time.perf_counter() - t0), missed
    finally:
        r.close()
        r.unlink()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--capacity", type=int, default=64 * 1024 * 1024)
    ap.add_argument("--batch", type=int, default=1000, help="records per write_many")
    ap.add_argument("--read-batch", type=int, default=10_000, help="records per gate read")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sizes", default="100,300", help="payload sizes, comma-separated")
    a = ap.parse_args()
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical)")
    print(f"Python: {sys.version.split()[0]} ({platform.python_implementation()}), {platform.machine()}")
    print(f"records={a.records:,} capacity={a.capacity:,} write batch={a.batch} read batch={a.read_batch}")
    for size in (int(x) for x in a.sizes.split(",")):
        runs = [two_process(size, a.records, a.capacity, a.batch, a.read_batch) for _ in range(a.repeat)]
        two = [x[0] for x in runs]
        one = [one_process(size, a.records, a.capacity, a.batch) for _ in range(a.repeat)]
        tail, missed = tail_follow(size, a.records, a.capacity, a.batch)
        print(
            f"{size:>4} B records: two processes {statistics.median(two) / 1e6:.2f} M rec/s "
            f"(runs {', '.join(f'{x / 1e6:.2f}' for x in two)}; CPU per record: producer "
            f"{statistics.median(x[1] for x in runs):.3f} us, gate reader {statistics.median(x[2] for x in runs):.3f} us)\n"
            f"       one process loop {statistics.median(one) / 1e6:.2f} M rec/s; "
            f"one process + tail reader {tail / 1e6:.2f} M rec/s (tail missed {missed})"
        )
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (2 cores: figures above "
          "are wall clock and drop when other work runs; the CPU-per-record figures do not)")


if __name__ == "__main__":
    main()
