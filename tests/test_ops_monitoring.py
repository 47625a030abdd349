"""Monitoring assets: Prometheus rules that promtool accepts and whose alerts fire when they
should, a Grafana dashboard that parses, and every metric either of them names exported by a
real tart."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tartproc import TartProcess

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "tart-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: run scripts/ensure-test-tools.sh")
# Series Prometheus makes itself rather than scraping them from tart.
SYNTHETIC = {"up"}
METRIC_NAME = re.compile(r"\b((?:telemetry|tart)_[a-z0-9_]+)\b")


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v.get("definition", "") for v in dash["templating"]["list"]]
    return exprs


def names_used() -> set[str]:
    rules = "\n".join(line for line in RULES.read_text().splitlines() if not line.lstrip().startswith("#"))
    text = rules + "\n" + "\n".join(dashboard_exprs())
    return set(METRIC_NAME.findall(text)) | ({"up"} if re.search(r"\bup\{", text) else set())


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    r = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


@needs_promtool
def test_alerts_fire_when_they_should() -> None:
    """promtool's rule unit tests (deploy/prometheus/alerts.test.yml): synthetic series for drops,
    slow batches (seconds, p99 from the histogram), writer lag, decode errors and a dead target."""
    r = subprocess.run([PROMTOOL, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=120,
                       cwd=RULE_TESTS.parent)
    assert r.returncode == 0, r.stdout + r.stderr


def test_reference_alerts_are_all_there() -> None:
    text = RULES.read_text()
    for name in ("HighConnectionCount", "HighEventDropRate", "DatabaseWriteSlow", "TartBackendDown",
                 "WriterLagHigh", "DecodeErrorRateHigh"):
        assert f"alert: {name}\n" in text
    # The reference's DatabaseWriteSlow compared a histogram to 100 (ms); ours is in seconds.
    assert ("histogram_quantile(0.99, sum by (instance, le) (rate(telemetry_batch_write_duration_seconds_bucket[5m])))"
            " > 0.1") in text


def test_dashboard_is_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "tart-backend" and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    graphs = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(graphs) >= 15
    for p in graphs:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
    # The panels the brief asks for, by the metric they chart.
    text = "\n".join(dashboard_exprs())
    for needle in ("telemetry_active_connections", "telemetry_events_received_total",
                   "telemetry_events_written_total", "telemetry_events_dropped_total",
                   "telemetry_events_rate_limited_total", "telemetry_decode_errors_total",
                   "telemetry_batch_write_duration_seconds_bucket", "telemetry_writer_lag_seconds",
                   "telemetry_buffer_pending", "telemetry_broadcaster_subscribers",
                   "tart_http_request_duration_seconds_bucket"):
        assert needle in text, needle


def expected_sample_names() -> set[str]:
    """Sample names the metric definitions in tart.engine.metrics produce."""
    code = ("import json, prometheus_client, tart.engine.metrics as m\n"
            "out = []\n"
            "for v in vars(m).values():\n"
            "    if isinstance(v, prometheus_client.metrics.MetricWrapperBase):\n"
            "        out.append([v._name, v._type])\n"
            "print(json.dumps(out))\n")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=True)
    names = set()
    for name, kind in json.loads(r.stdout):
        if kind == "counter":
            names.add(f"{name}_total")
        elif kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def test_every_metric_used_is_defined_by_tart() -> None:
    unknown = names_used() - expected_sample_names() - SYNTHETIC
    assert not unknown, f"dashboard/rules use metrics tart does not define: {sorted(unknown)}"


# --- against a running tart --------------------------------------------------------------------

def _frame(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


def _misbehaving_node(target: tuple[str, int]) -> None:
    """A node that sends one event of an unknown type (decode error, stored raw), then a length
    prefix over TART_MAX_FRAME (frame error: tart closes the connection)."""
    import random

    from tart.engine.codec.nodeinfo import encode_node_info
    from tart.engine.loadgen import make_node_info

    info = encode_node_info(make_node_info(random.Random(7), 2, 7))
    with socket.create_connection(target, timeout=5) as s:
        s.sendall(_frame(info) + _frame(struct.pack("<Q", 1) + b"\xfe"))
        time.sleep(0.3)
        s.sendall(struct.pack("<I", 0x7FFFFFFF))
        s.settimeout(5)
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass


def _scrape(api: str) -> set[str]:
    with urllib.request.urlopen(api + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_running_tart_exports_every_metric_the_dashboard_and_rules_use(tmp_path: Path, fresh_db: str) -> None:
    wanted = names_used() - SYNTHETIC
    with TartProcess(tmp_path, database_url=fresh_db) as tart:
        host, port = tart.telemetry
        gen = subprocess.run(
            [str(Path(sys.executable).parent / "tart-loadgen"), "--target", f"{host}:{port}", "--nodes", "3",
             "--rate", "50", "--duration", "2", "--mix", "all"],
            capture_output=True, text=True, timeout=120)
        assert gen.returncode == 0, gen.stderr
        _misbehaving_node(tart.telemetry)
        for path in ("/api/nodes", "/api/events?limit=5", "/api/stats"):
            tart.get(path)
        # A dead acceptor is restarted by the supervisor (tart_process_restarts_total).
        victim = tart.children()["acceptor"][0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        missing = wanted
        while time.monotonic() < deadline:
            missing = wanted - _scrape(tart.api)
            if not missing:
                break
            time.sleep(0.5)
    assert not missing, f"not in /metrics of a running tart: {sorted(missing)}"
