"""tart-loadgen as a user meets it: defaults, help, validation, --version, a live progress line on a
terminal (a real pty) and none when stderr is a pipe."""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import tart
from tart.engine import loadgen

LOADGEN = str(Path(sys.executable).parent / "tart-loadgen")


def test_default_target_and_help_for_every_flag() -> None:
    p = loadgen._parser()
    assert p.parse_args([]).target == ("127.0.0.1", 9000)
    for action in p._actions:
        assert action.help and action.help != argparse.SUPPRESS, action.option_strings


@pytest.mark.parametrize("args, flag", [
    (["--nodes", "0"], "--nodes"), (["--rate", "-1"], "--rate"), (["--rate", "nan"], "--rate"),
    (["--duration", "0"], "--duration"), (["--target", "host:99999"], "--target"),
    (["--core-count", "0"], "--core-count"), (["--max-events", "x"], "--max-events"),
])
def test_invalid_values_exit_2_naming_the_flag(args: list[str], flag: str) -> None:
    r = subprocess.run([LOADGEN, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and f"argument {flag}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_version() -> None:
    r = subprocess.run([LOADGEN, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"tart-loadgen {tart.__version__}"


class Sink(threading.Thread):
    """A TCP server that reads and discards everything: a stand-in for tart's telemetry port."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        with conn:
            while conn.recv(65536):
                pass


def _run(stderr_tty: bool, port: int) -> tuple[dict, str]:
    cmd = [LOADGEN, "--target", f"127.0.0.1:{port}", "--nodes", "3", "--rate", "50", "--duration", "2.5"]
    if not stderr_tty:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return json.loads(r.stdout), r.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the pty
            break
        if not data:
            break
        chunks.append(data)
    out, _ = proc.communicate(timeout=30)
    os.close(master)
    return json.loads(out), b"".join(chunks).decode(errors="replace")


def test_progress_line_on_a_terminal_only() -> None:
    sink = Sink()
    sink.start()
    try:
        report, err = _run(True, sink.port)
        assert report["connected"] == 3 and report["sent_total"] > 0
        assert "connections 3/3" in err and "/s)" in err and "backpressure: " in err, err
        assert "\r" in err  # rewritten in place
        report, err = _run(False, sink.port)
        assert report["connected"] == 3 and err == ""
    finally:
        sink.srv.close()
