"""Run a real `tart-backend` (supervisor, acceptors, writer, gunicorn) for end-to-end tests.

    with TartProcess(database_url=dsn, tmp_path=tmp_path) as tart:
        tart.telemetry   # ("127.0.0.1", port) for nodes / loadgen
        tart.api         # "http://127.0.0.1:port"
        tart.get("/api/nodes")

Ports are chosen free; the data dir lives under tmp_path. With database_url=None tart starts its
own embedded cluster under the data dir (slow: prefer the `fresh_db` fixture's DSN).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TartProcess:
    def __init__(
        self,
        tmp_path: Path,
        database_url: str | None = None,
        acceptors: int = 2,
        web_workers: int = 1,
        env: dict[str, str] | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        self.tmp_path = Path(tmp_path)
        self.data_dir = self.tmp_path / "tart-data"
        self.telemetry = ("127.0.0.1", free_port())
        self.api_port = free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.log_path = self.tmp_path / "tart.log"
        self.ready_timeout = ready_timeout
        self.env = dict(os.environ)
        self.env.pop("DATABASE_URL", None)
        self.env.update(
            TELEMETRY_BIND=f"127.0.0.1:{self.telemetry[1]}",
            API_BIND=f"127.0.0.1:{self.api_port}",
            TART_DATA_DIR=str(self.data_dir),
            TART_ACCEPTORS=str(acceptors),
            TART_WEB_WORKERS=str(web_workers),
            TART_RING_BYTES=str(8 * 1024 * 1024),
            TART_LOG="info",
        )
        if database_url:
            self.env["DATABASE_URL"] = database_url
        if env:
            self.env.update(env)
        self.proc: subprocess.Popen | None = None

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> TartProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "tart-backend")], env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"tart-backend exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.2)
        raise TimeoutError(f"tart-backend not ready in {self.ready_timeout}s:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with socket.create_connection(self.telemetry, timeout=0.5):
                pass
            with urllib.request.urlopen(self.api + "/api/health", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise
        finally:
            self._log.close()

    def kill_all(self) -> None:
        """Last-resort cleanup of the whole process group (supervisor and children)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def __enter__(self) -> TartProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self.kill_all()

    # --- helpers --------------------------------------------------------------------------
    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, dict]:
        req = urllib.request.Request(self.api + path)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            body = e.read()
            return e.code, (json.loads(body) if body else None)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the /metrics samples called `name` whose labels include `labels`."""
        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(self.api + "/metrics", timeout=10).read().decode()
        total = 0.0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def children(self) -> dict[str, list[int]]:
        """Child pids by role, read from the process table (acceptor, writer, web)."""
        assert self.proc is not None
        out = subprocess.run(["ps", "-o", "pid=,ppid=,args=", "-e"], capture_output=True, text=True).stdout
        roles: dict[str, list[int]] = {"acceptor": [], "writer": [], "web": []}
        for line in out.splitlines():
            pid, ppid, args = line.strip().split(None, 2)
            if int(ppid) != self.proc.pid:
                continue
            if "gunicorn" in args:
                roles["web"].append(int(pid))
        roles.update(self._forked_roles())
        return roles

    def _forked_roles(self) -> dict[str, list[int]]:
        # Forked children keep the supervisor's argv; their role is in the log lines they write
        # (proc=acceptor-0[pid]), and the supervisor logs msg=started child=... pid=... (logfmt).
        from tart.engine.logs import parse_logfmt

        roles: dict[str, list[int]] = {"acceptor": [], "writer": []}
        latest: dict[str, int] = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            if "msg=started" not in line:
                continue
            fields = parse_logfmt(line)
            if fields.get("msg") == "started" and "child" in fields and "pid" in fields:
                latest[fields["child"]] = int(fields["pid"])
        for name, pid in latest.items():
            role = name.split("-")[0]
            if role in roles:
                roles[role].append(pid)
        return roles
