"""/metrics conventions against a real tart-backend: build info, process_* per process and role,
unit-suffixed names, no doubled _total, labelled counters present at zero."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from tartproc import TartProcess

import tart


def scrape(api: str) -> list:
    with urllib.request.urlopen(api + "/metrics", timeout=10) as r:
        return list(text_string_to_metric_families(r.read().decode()))


def samples(fams: list, name: str) -> list:
    return [s for f in fams for s in f.samples if s.name == name]


def test_metrics_conventions_on_a_running_tart(tmp_path: Path, fresh_db: str) -> None:
    with TartProcess(tmp_path, database_url=fresh_db, acceptors=2) as tart_proc:
        children = tart_proc.children()
        fams = scrape(tart_proc.api)

        (info,) = samples(fams, "tart_build_info")
        assert info.value == 1 and info.labels["version"] == tart.__version__
        assert info.labels["python"] == ".".join(map(str, sys.version_info[:3]))

        # Present at zero before anything restarted: the alert rule and the dashboard need a series.
        restarts = {s.labels["role"]: s.value for s in samples(fams, "tart_process_restarts_total")}
        assert restarts == {"acceptor": 0, "writer": 0, "web": 0}

        # One series per tart process, labelled by role and pid.
        rss = {(s.labels["role"], int(s.labels["pid"])): s.value for s in samples(fams, "process_resident_memory_bytes")}
        pids_by_role: dict[str, set[int]] = {}
        for role, pid in rss:
            pids_by_role.setdefault(role, set()).add(pid)
        assert pids_by_role["supervisor"] == {tart_proc.proc.pid}
        assert pids_by_role["acceptor"] == set(children["acceptor"])
        assert pids_by_role["writer"] == set(children["writer"])
        assert set(children["web"]) <= pids_by_role["web"] and len(pids_by_role["web"]) >= 2  # master + worker
        assert all(v > 1 << 20 for v in rss.values())
        for name in ("process_cpu_seconds_total", "process_open_fds", "process_start_time_seconds",
                     "process_max_fds", "process_virtual_memory_bytes"):
            got = {(s.labels["role"], int(s.labels["pid"])) for s in samples(fams, name)}
            assert got == set(rss), name
        started = {int(s.labels["pid"]): s.value for s in samples(fams, "process_start_time_seconds")}
        assert abs(started[tart_proc.proc.pid] - time.time()) < 3600

        # Some events, so that the writer has observed batches.
        host, port = tart_proc.telemetry
        gen = subprocess.run([str(Path(sys.executable).parent / "tart-loadgen"), "--target", f"{host}:{port}",
                              "--nodes", "2", "--rate", "50", "--duration", "1"],
                             capture_output=True, text=True, timeout=120)
        assert gen.returncode == 0, gen.stderr
        deadline = time.monotonic() + 30
        while True:
            fams = scrape(tart_proc.api)
            (count,) = samples(fams, "telemetry_batch_write_duration_seconds_count")
            if count.value > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        # The unit-suffixed histogram and the reference's unitless one see the same batches.
        (ref_count,) = samples(fams, "telemetry_batch_write_duration_count")
        assert count.value > 0 and ref_count.value == count.value
        assert samples(fams, "telemetry_received_bytes_total")[0].value > 0

    names = {s.name for f in fams for s in f.samples}
    assert not [n for n in names if n.endswith("_total_total") or "total_broadcast_total" in n]
    # Bytes are in the name's unit suffix: ..._bytes or ..._bytes_total.
    for f in fams:
        if "bytes" in f.name and not f.name.startswith("process_"):
            assert f.name.endswith("_bytes"), f.name
    # The reference's bare names are still there.
    assert "telemetry_broadcaster_total_broadcast" in names and "telemetry_events_received" in names
