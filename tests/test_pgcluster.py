"""The embedded cluster, started for real (as root in CI, where the server must run as another user)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tart.engine import config
from tart.engine.db import connect, resolve_database
from tart.engine.pgcluster import EmbeddedCluster, PgClusterError, find_pg_bin

SMALL = {"shared_buffers": "32MB"}  # keep several test clusters cheap; other settings stay default


@pytest.fixture
def base_dir() -> Iterator[Path]:
    """A traversable temp dir; any cluster left running under it is stopped afterwards."""
    root = Path(tempfile.mkdtemp(prefix="tart-pgc-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    for pgdata in root.rglob("PG_VERSION"):
        EmbeddedCluster(pgdata.parent.parent).stop()
    shutil.rmtree(root, ignore_errors=True)


def postmaster_pid(cluster: EmbeddedCluster) -> int:
    return int((cluster.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])


def children_of(pid: int) -> set[int]:
    kids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat_line = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat_line.rsplit(")", 1)[1].split()[1]) == pid:
                kids.add(int(entry))
    return kids


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def tcp_listening_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == "0A":  # LISTEN
                    inodes.add(cols[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    found: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found  # a backend that exited meanwhile
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def test_first_start_as_configured_creates_cluster_socket_only(base_dir: Path) -> None:
    settings = config.load({"TART_DATA_DIR": str(base_dir / "var")})
    dsn, cluster = resolve_database(settings)
    assert cluster is not None
    try:
        pgdata = base_dir / "var" / "pg"
        assert (pgdata / "PG_VERSION").is_file() and (pgdata / "tart.conf").is_file()
        assert cluster.running()
        sock = cluster.socket_dir
        assert sock == base_dir / "var" / "pg-socket"
        st = sock.stat()
        assert stat.S_IMODE(st.st_mode) == 0o700
        if os.geteuid() == 0:
            assert pgdata.stat().st_uid != 0 and st.st_uid == pgdata.stat().st_uid
        with connect(dsn) as conn:
            row = conn.execute(
                "SELECT current_setting('listen_addresses'), current_database(), current_user,"
                " current_setting('TimeZone'), current_setting('synchronous_commit'),"
                " current_setting('fsync'), current_setting('shared_buffers'),"
                " current_setting('max_wal_size'), current_setting('checkpoint_timeout')").fetchone()
        assert row == ("", "tart", cluster.user, "UTC", "on", "on", "256MB", "2GB", "15min")
        pm = postmaster_pid(cluster)
        pids = {pm} | children_of(pm)
        listening = tcp_listening_inodes()
        for pid in pids:
            assert not (socket_inodes(pid) & listening), f"postgres pid {pid} listens on TCP"
    finally:
        cluster.stop()
    assert not cluster.running()
    assert not [p for p in pids if alive(p)], "postgres processes left after stop"


def test_second_start_reuses_cluster_and_data(base_dir: Path) -> None:
    with EmbeddedCluster(base_dir, settings=SMALL) as first:
        with connect(first.dsn) as conn:
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('survives')")
            conn.commit()
        first_pm = postmaster_pid(first)
    control = base_dir / "pg" / "global" / "pg_control"
    ino = control.stat().st_ino
    assert not first.running()

    second = EmbeddedCluster(base_dir, settings=SMALL)
    assert second.start() == first.dsn
    try:
        assert control.stat().st_ino == ino  # same cluster, not a new initdb
        assert postmaster_pid(second) != first_pm
        with connect(second.dsn) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [("survives",)]
    finally:
        second.stop()


def test_adopts_postmaster_left_running_by_killed_tart(base_dir: Path) -> None:
    # A tart killed with SIGKILL never stops its server; the next tart must use it as it is.
    code = ("import os, sys; from tart.engine.pgcluster import EmbeddedCluster;"
            "EmbeddedCluster(sys.argv[1], settings={'shared_buffers': '32MB'}).start();"
            "os.kill(os.getpid(), 9)")
    r = subprocess.run([sys.executable, "-c", code, str(base_dir)], timeout=120)
    assert r.returncode == -signal.SIGKILL
    cluster = EmbeddedCluster(base_dir, settings=SMALL)
    assert cluster.running()
    orphan = postmaster_pid(cluster)
    cluster.start()
    try:
        assert postmaster_pid(cluster) == orphan
        with connect(cluster.dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        cluster.stop()
    assert not alive(orphan)


@pytest.mark.parametrize("impostor_kind", ["other_process", "other_clusters_postgres"])
def test_recovers_from_stale_lock_files_with_recycled_pid(
        base_dir: Path, pg_server: str, impostor_kind: str) -> None:
    cluster = EmbeddedCluster(base_dir, settings=SMALL)
    cluster.start()
    with connect(cluster.dsn) as conn:
        conn.execute("CREATE TABLE kept (v int)")
        conn.execute("INSERT INTO kept VALUES (42)")
        conn.commit()
    pm = postmaster_pid(cluster)
    family = {pm} | children_of(pm)
    os.kill(pm, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(alive(p) for p in family):
        assert time.monotonic() < deadline, "postgres children did not exit after postmaster died"
        time.sleep(0.1)
    # The killed postmaster's pid now belongs to a live process of the same user (as after a
    # restart of the machine): PostgreSQL itself would refuse to start ("lock file already exists").
    with contextlib.ExitStack() as stack:
        if impostor_kind == "other_process":
            proc = subprocess.Popen(["sleep", "120"], user=cluster.user if os.geteuid() == 0 else None)
            stack.callback(proc.wait)
            stack.callback(proc.kill)
            impostor = proc.pid
        else:
            other = stack.enter_context(psycopg.connect(pg_server))
            impostor = other.execute("SELECT pg_backend_pid()").fetchone()[0]
            if not alive(impostor):
                pytest.skip("the test server is not on this machine")
        for lock in (cluster.pgdata / "postmaster.pid", cluster.socket_dir / ".s.PGSQL.5432.lock"):
            lines = lock.read_text().split("\n")
            lines[0] = str(impostor)
            lock.write_text("\n".join(lines))
        assert not cluster.running()
        again = EmbeddedCluster(base_dir, settings=SMALL)
        again.start()
        try:
            with connect(again.dsn) as conn:
                assert conn.execute("SELECT v FROM kept").fetchone() == (42,)
        finally:
            again.stop()


def test_long_data_dir_uses_short_socket_dir_under_tmp(base_dir: Path) -> None:
    deep = base_dir / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    for d in (deep, deep.parent):
        d.chmod(0o755)
    cluster = EmbeddedCluster(deep, settings=SMALL)
    sock = cluster.socket_dir
    assert str(sock).startswith("/tmp/tart-pg-") and len(str(sock)) < 40
    cluster.start()
    try:
        assert (sock / ".s.PGSQL.5432").exists()
        with connect(cluster.dsn) as conn:
            assert conn.execute("SHOW unix_socket_directories").fetchone() == (str(sock),)
    finally:
        cluster.stop()
        shutil.rmtree(sock, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another user")
def test_root_fails_clearly_when_run_user_cannot_enter_data_dir(base_dir: Path) -> None:
    private = base_dir / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    cluster = EmbeddedCluster(private / "var", settings=SMALL)
    with pytest.raises(PgClusterError) as err:
        cluster.start()
    assert str(private) in str(err.value) and "TART_DATA_DIR" in str(err.value)
    assert not (private / "var" / "pg").exists()


def test_missing_binaries_are_reported() -> None:
    with pytest.raises(PgClusterError, match="TART_PG_BIN_DIR"):
        find_pg_bin("/nonexistent/pg/bin")


def test_database_url_starts_nothing(pg_dsn: str, tmp_path: Path) -> None:
    settings = config.load({"DATABASE_URL": pg_dsn, "TART_DATA_DIR": str(tmp_path / "var")})
    dsn, cluster = resolve_database(settings)
    assert (dsn, cluster) == (pg_dsn, None)
    assert not (tmp_path / "var").exists()
    with connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] >= 1


def test_connect_forces_utc_and_keeps_existing_options(pg_dsn: str) -> None:
    dsn = psycopg.conninfo.make_conninfo(pg_dsn, options="-c application_name=probe")
    with connect(dsn) as conn:
        assert not conn.autocommit
        row = conn.execute("SELECT current_setting('TimeZone'), current_setting('application_name')"
                           ).fetchone()
    assert row == ("UTC", "probe")
