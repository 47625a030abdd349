"""Least privilege (issue 10): the web tier's read-only role, no `trust` for other roles in the
embedded cluster, and the supervisor restarting a postmaster that died."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from eventdb import store_event
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from tartproc import TartProcess

from tart.engine.db import connect
from tart.engine.migrate import ensure_partitions, migrate
from tart.engine.pgcluster import EmbeddedCluster
from tart.web import dbrole

LOADGEN = str(Path(sys.executable).parent / "tart-loadgen")
NODE = "ab" * 32
NO_PASSFILE = "/nonexistent/pgpass"


def _as_role(dsn: str, role: str) -> psycopg.Connection:
    """A connection as the schema owner that then takes on ``role``'s privileges (SET ROLE): the
    same checks as logging in as it, without needing its password on the shared test server."""
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    return conn


def _denied(conn: psycopg.Connection, statement: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)


# --- the role, through the migrations ----------------------------------------------------------

def test_tart_web_reads_everything_and_writes_only_the_stats_cache(fresh_db: str) -> None:
    now = datetime.now(UTC)
    with connect(fresh_db) as conn:
        ensure_partitions(conn)
        store_event(conn, id=1, node_id=NODE, event_id=0, event_type=10, timestamp=now, created_at=now)
        conn.commit()
    with _as_role(fresh_db, dbrole.WEB_ROLE) as conn:
        assert conn.execute("SELECT count(*) FROM event_rows").fetchone()[0] == 1
        # Views run with their owner's rights: SELECT on the view is enough, data decoded too.
        row = conn.execute("SELECT node_id, event_name, data FROM events").fetchone()
        assert row[0] == NODE and row[1] == "Status" and "Status" in row[2]
        assert conn.execute("SELECT count(*) FROM nodes").fetchone()[0] == 1
        conn.execute("SELECT count(*) FROM event_stats_hourly").fetchone()
        conn.execute("SELECT count(*) FROM event_stats_30s").fetchone()
        for _ in range(2):  # insert, then the conflict's update
            conn.execute("INSERT INTO stats_cache (key, value, updated_at) VALUES ('t', '{}', now())"
                         " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()")
        for write in ("INSERT INTO nodes (node_id) VALUES ('x')",
                      "INSERT INTO event_rows SELECT * FROM event_rows",
                      "DELETE FROM event_rows", "DELETE FROM stats_cache", "UPDATE nodes SET event_count = 0",
                      "TRUNCATE stats_cache", "DROP TABLE stats_cache", "DROP VIEW events",
                      "CREATE TABLE mine (x int)", "SELECT tart_ensure_partition('event_rows', current_date + 30)"):
            _denied(conn, write)
    with _as_role(fresh_db, dbrole.READER_ROLE) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1
        _denied(conn, "INSERT INTO stats_cache (key, value) VALUES ('r', '{}')")
        _denied(conn, "DELETE FROM event_rows")


def test_every_migrate_grants_again(fresh_db: str) -> None:
    # A table made outside the default privileges (as another migration path might) and a
    # privilege lost: the next start's migrate covers both.
    with connect(fresh_db, autocommit=True) as conn:
        conn.execute("REVOKE SELECT ON nodes FROM tart_web")
        conn.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT ON TABLES FROM tart_web")
        conn.execute("CREATE TABLE later_table (x int)")
    with _as_role(fresh_db, dbrole.WEB_ROLE) as conn:
        _denied(conn, "SELECT count(*) FROM nodes")
        _denied(conn, "SELECT count(*) FROM later_table")
    assert migrate(fresh_db) == []  # no migration to apply; the grants run anyway
    with _as_role(fresh_db, dbrole.WEB_ROLE) as conn:
        conn.execute("SELECT count(*) FROM nodes")
        conn.execute("SELECT count(*) FROM later_table")


# --- a DATABASE_URL whose user may not create roles ---------------------------------------------

@pytest.fixture
def limited_db(pg_server: str) -> Iterator[str]:
    """A database owned by a login role without CREATEROLE (a managed PostgreSQL's user)."""
    name = f"tart_limited_{os.getpid()}"
    password = "limited-pw"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOCREATEROLE NOCREATEDB PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(name)))
    # PostgreSQL 15+: the public schema belongs to pg_database_owner, i.e. this role.
    yield make_conninfo(pg_server, dbname=name, user=name, password=password)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def test_without_createrole_roles_are_skipped_once_at_info(limited_db: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    migrate(limited_db)  # as the limited user: must not fail
    missing = ((f"tart_web_absent_{os.getpid()}", True, "5s"), (f"tart_reader_absent_{os.getpid()}", False, None))
    with caplog.at_level(logging.INFO, logger="tart.dbrole"), connect(limited_db, autocommit=True) as conn:
        assert dbrole.ensure_roles(conn, missing) is False
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)",
                            ([m[0] for m in missing],)).fetchone()[0] == 0
    lines = [r for r in caplog.records if r.name == "tart.dbrole"]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO, [r.getMessage() for r in lines]


def test_without_createrole_tart_starts_and_web_reads_in_read_only_sessions(limited_db: str,
                                                                           tmp_path: Path) -> None:
    user = conninfo_to_dict(limited_db)["user"]
    with TartProcess(tmp_path, database_url=limited_db, acceptors=1) as tart:
        assert tart.get("/api/nodes")[0] == 200
        status, body = tart.get("/api/stats")  # the one write, the stats cache, still works
        assert status == 200 and "total_nodes" in body
        with psycopg.connect(limited_db, autocommit=True) as conn:
            users = {r[0] for r in conn.execute(
                "SELECT usename FROM pg_stat_activity WHERE application_name = 'tart-web' AND datname = current_database()")}
            cached = conn.execute("SELECT count(*) FROM stats_cache WHERE key = 'api_stats'").fetchone()[0]
    assert users == {user}  # DATABASE_URL's user, in the session-level read-only mode
    assert cached == 1
    assert "startup failed" not in tart.log_path.read_text()


# --- the embedded cluster ---------------------------------------------------------------------

def _owner_dsn(data_dir: Path, **kw: str) -> str:
    """The embedded cluster's DSN as its owner (``kw`` overrides, e.g. user=tart_web); no
    ~/.pgpass may supply a password behind the test's back."""
    c = EmbeddedCluster(data_dir)
    return make_conninfo(**{"host": str(c.socket_dir), "port": 5432, "user": c.user, "dbname": "tart",
                            "passfile": NO_PASSFILE, **kw})


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "pg" / "postmaster.pid").read_text().split("\n", 1)[0])


@pytest.fixture(scope="module")
def embedded_tart() -> Iterator[TartProcess]:
    """One tart with its own embedded cluster for the tests below (slow to start: shared)."""
    root = Path(tempfile.mkdtemp(prefix="tart-lp-", dir="/tmp"))
    root.chmod(0o755)  # as root, the cluster runs as another user, which must enter it
    tart = TartProcess(root, database_url=None, acceptors=2,
                       env={"TART_RATE_LIMIT": "0", "TART_HEARTBEAT_TIMEOUT": "120"}, ready_timeout=120)
    try:
        tart.start()
        yield tart
    finally:
        try:
            tart.stop(timeout=60)
        finally:
            tart.kill_all()
            with contextlib.suppress(Exception):
                EmbeddedCluster(tart.data_dir).stop()
            shutil.rmtree(root, ignore_errors=True)


def test_embedded_web_tier_connects_as_tart_web(embedded_tart: TartProcess) -> None:
    tart = embedded_tart
    assert tart.get("/api/nodes")[0] == 200
    assert tart.get("/api/stats")[0] == 200
    with psycopg.connect(_owner_dsn(tart.data_dir), autocommit=True) as conn:
        users = {r[0] for r in conn.execute(
            "SELECT usename FROM pg_stat_activity WHERE application_name = 'tart-web'")}
        cached = conn.execute("SELECT count(*) FROM stats_cache WHERE key = 'api_stats'").fetchone()[0]
    assert users == {"tart_web"}
    assert cached == 1  # the stats cache upsert works as tart_web
    secret = tart.data_dir / "web-db.secret"
    st = secret.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    password = secret.read_text().strip()
    # The password is on no command line of any process.
    for d in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if d.name.isdigit():
                assert password.encode() not in (d / "cmdline").read_bytes()


def test_embedded_cluster_trusts_only_its_owner(embedded_tart: TartProcess) -> None:
    data = embedded_tart.data_dir
    password = (data / "web-db.secret").read_text().strip()
    hba = [ln.split() for ln in (data / "pg" / "pg_hba.conf").read_text().splitlines()
           if ln.strip() and not ln.startswith("#")]
    owner = EmbeddedCluster(data).user
    assert all(ln[0] == "local" for ln in hba)  # socket only, no host lines
    assert [ln for ln in hba if ln[-1] == "trust"] == [["local", "all", f'"{owner}"', "trust"],
                                                       ["local", "replication", f'"{owner}"', "trust"]]
    assert hba[-1] == ["local", "all", "all", "scram-sha-256"]
    with psycopg.connect(_owner_dsn(data), autocommit=True) as conn:  # the owner needs no password
        assert conn.execute("SHOW listen_addresses").fetchone()[0] == ""
    for role in (dbrole.WEB_ROLE, dbrole.READER_ROLE):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(_owner_dsn(data, user=role)).close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(_owner_dsn(data, user=dbrole.WEB_ROLE, password="wrong")).close()
    with psycopg.connect(_owner_dsn(data, user=dbrole.WEB_ROLE, password=password), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "tart_web"
        assert conn.execute("SHOW password_encryption").fetchone()[0] == "scram-sha-256"
        _denied(conn, "DELETE FROM event_rows")


def test_postmaster_killed_under_load_is_restarted_and_nothing_is_lost(embedded_tart: TartProcess) -> None:
    tart = embedded_tart
    data = tart.data_dir
    dsn = _owner_dsn(data)
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM event_rows").fetchone()[0]
    old_pid = _postmaster_pid(data)
    load = subprocess.Popen(
        [LOADGEN, "--target", "%s:%d" % tart.telemetry, "--nodes", "4", "--rate", "200", "--duration", "8",
         "--seed", "21"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        os.kill(old_pid, signal.SIGKILL)
        out, err = load.communicate(timeout=120)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    assert load.returncode == 0, err[-2000:]
    sent = json.loads(out)["sent_total"]
    assert sent > 0
    deadline = time.monotonic() + 120
    stored = -1
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.OperationalError):
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                stored = conn.execute("SELECT count(*) FROM event_rows").fetchone()[0] - before
            if stored >= sent:
                break
        time.sleep(0.5)
    assert stored == sent, f"{stored} of {sent} stored\n{tart.log_tail()}"
    new_pid = _postmaster_pid(data)
    assert new_pid != old_pid and EmbeddedCluster(data).postmaster_alive()
    log = tart.log_path.read_text()
    assert "PostgreSQL restarted" in log
    assert tart.metric("tart_postgres_restarts_total") >= 1
    assert tart.proc is not None and tart.proc.poll() is None


# --- an existing cluster of an earlier release --------------------------------------------------

def test_cluster_with_trust_for_all_gets_the_new_rules_at_start() -> None:
    root = Path(tempfile.mkdtemp(prefix="tart-lp-hba-", dir="/tmp"))
    root.chmod(0o755)
    cluster = EmbeddedCluster(root / "var", settings={"shared_buffers": "32MB"})
    try:
        cluster.start()
        # What earlier releases wrote (initdb --auth-local=trust), applied to the running server.
        (cluster.pgdata / "pg_hba.conf").write_text("local all all trust\n")
        cluster._pg_ctl("reload")
        time.sleep(0.5)
        web = make_conninfo(cluster.dsn, user=dbrole.WEB_ROLE, passfile=NO_PASSFILE)
        psycopg.connect(web).close()  # trusted, as before
        # tart starts again and adopts the running server: the rules are rewritten and reloaded.
        EmbeddedCluster(root / "var").start()
        deadline = time.monotonic() + 10
        while True:
            try:
                psycopg.connect(web).close()
            except psycopg.OperationalError as e:
                assert "password" in str(e)
                break
            assert time.monotonic() < deadline, "tart_web still trusted"
            time.sleep(0.2)
        psycopg.connect(cluster.dsn).close()  # the owner still needs none
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
