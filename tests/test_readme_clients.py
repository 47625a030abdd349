"""The reference README's Python clients, run as written against a live tart fed by real nodes:
integrators' code must work unchanged."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from tartproc import TartProcess

CLIENTS = Path(__file__).parent / "clients"
LOADGEN = str(Path(sys.executable).parent / "tart-loadgen")


def _as_written(name: str, api: str, tmp_path: Path) -> Path:
    code = (CLIENTS / name).read_text()
    assert "localhost:8080" in code
    script = tmp_path / name
    script.write_text(code.replace("localhost:8080", api.split("//", 1)[1]))
    return script


@pytest.fixture
def fed_tart(tmp_path, fresh_db):
    with TartProcess(tmp_path, database_url=fresh_db) as tart:
        subprocess.run([LOADGEN, "--target", "%s:%d" % tart.telemetry, "--nodes", "3", "--rate", "50",
                        "--duration", "2"], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and tart.get("/api/stats")[1].get("best_block") is None:
            time.sleep(0.5)
        yield tart


def test_readme_python_rest_client_runs_as_written(fed_tart, tmp_path):
    script = _as_written("readme_rest_client.py", fed_tart.api, tmp_path)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "Status: ok"
    assert lines[1] == "Connected nodes: 3"
    assert lines[2] == "Recent events: 10"
    assert lines[3].startswith("Best block: ") and int(lines[3].split(": ")[1]) > 0


def test_readme_python_websocket_client_runs_as_written(fed_tart, tmp_path):
    script = _as_written("readme_ws_client.py", fed_tart.api, tmp_path)
    client = subprocess.Popen([sys.executable, "-u", str(script)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)  # subscribed; the first stats message comes at once
        lg = subprocess.run([LOADGEN, "--target", "%s:%d" % fed_tart.telemetry, "--nodes", "2", "--rate", "20",
                             "--duration", "2"], capture_output=True, timeout=60)
        assert lg.returncode == 0, lg.stderr
        time.sleep(1)
    finally:
        client.terminate()
        out, err = client.communicate(timeout=10)
    assert "Active connections: " in out, err
    events = [line for line in out.splitlines() if line.startswith("Event ") and " from " in line]
    types = [line for line in out.splitlines() if line.startswith("Type: ")]
    assert len(events) >= 40 and len(types) == len(events)
