"""Shared fixtures: one private PostgreSQL per test session, and databases in it.

- ``pg_server``: session; admin DSN of the server (the embedded cluster, or TART_TEST_DATABASE_URL).
- ``pg_dsn``: session; DSN of a migrated database shared by the whole session.
- ``pg_conn``: function; a ``tart.engine.db.connect`` connection to ``pg_dsn`` (rolled back, closed).
- ``fresh_db``: function; DSN of a new migrated database of its own (dropped afterwards) for tests
  that need isolation, e.g. to hand to a tart process via DATABASE_URL.
- ``empty_db``: function; like ``fresh_db`` but not migrated.

Works as root (as CI runs): the cluster lives in a /tmp directory the ``postgres``/``tart`` user can
enter, and the server runs as that user.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tart.engine.db import connect
from tart.engine.migrate import migrate
from tart.engine.pgcluster import EmbeddedCluster

# Durability is not under test here; skipping fsync keeps a shared 2-core machine responsive.
# Room for the many tart processes (each with its own pool) that tests start against it.
TEST_CLUSTER_SETTINGS = {"fsync": "off", "full_page_writes": "off", "shared_buffers": "128MB",
                         "max_connections": "300"}

_db_numbers = itertools.count(1)


def _create_database(admin_dsn: str, migrated: bool) -> str:
    # The pid keeps names apart when several sessions share one TART_TEST_DATABASE_URL server.
    name = f"tart_test_{os.getpid()}_{next(_db_numbers)}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(admin_dsn, dbname=name)
    if migrated:
        migrate(dsn)
    return dsn


def _drop_database(admin_dsn: str, dsn: str) -> None:
    name = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        # FORCE: a tart process started by the test may still hold connections.
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _reap_abandoned_clusters() -> None:
    """Stop and delete clusters of earlier test sessions that were killed before their teardown."""
    for root in Path("/tmp").glob("tart-pgtest-*-*"):
        pid = root.name.split("-")[2]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue  # a session still running (or not ours to judge)
        with contextlib.suppress(Exception):
            EmbeddedCluster(root / "var").stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    external = os.environ.get("TART_TEST_DATABASE_URL")
    if external:
        yield external
        return
    _reap_abandoned_clusters()
    root = Path(tempfile.mkdtemp(prefix=f"tart-pgtest-{os.getpid()}-", dir="/tmp"))
    root.chmod(0o755)  # the server's user (not root) must be able to enter it
    cluster = EmbeddedCluster(root / "var", settings=TEST_CLUSTER_SETTINGS)
    try:
        cluster.start()
        yield make_conninfo(cluster.dsn, dbname="postgres")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_dsn(pg_server: str) -> Iterator[str]:
    dsn = _create_database(pg_server, migrated=True)
    yield dsn
    with contextlib.suppress(psycopg.Error):
        _drop_database(pg_server, dsn)


@pytest.fixture
def pg_conn(pg_dsn: str) -> Iterator[psycopg.Connection]:
    conn = connect(pg_dsn)
    try:
        yield conn
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        conn.close()


@pytest.fixture
def fresh_db(pg_server: str) -> Iterator[str]:
    dsn = _create_database(pg_server, migrated=True)
    yield dsn
    with contextlib.suppress(psycopg.Error):
        _drop_database(pg_server, dsn)


@pytest.fixture
def empty_db(pg_server: str) -> Iterator[str]:
    dsn = _create_database(pg_server, migrated=False)
    yield dsn
    with contextlib.suppress(psycopg.Error):
        _drop_database(pg_server, dsn)
