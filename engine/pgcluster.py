"""A private PostgreSQL cluster under tart's data dir, reachable only through a Unix socket.

Layout under ``data_dir``: ``pg/`` (PGDATA, owned by the run user), ``pg-socket/`` (the socket
directory, mode 0700, owned by the run user; a short directory under /tmp when that path would
exceed the 107-byte socket path limit), ``pg.lock`` (serialises start/stop between processes).

PostgreSQL refuses to run as root, so when tart is root every initdb/pg_ctl call goes through
``runuser -u USER --`` as the cluster's owner (the existing ``postgres`` user, else a system user
``tart`` created on demand). Root processes connect as the role named after that user: root may
enter the 0700 socket directory.

Authentication (``pg_hba.conf``, rewritten at every start): the owner's role over the socket with
``trust`` (the 0700 socket directory is the gate: only the owner and root can reach it), every
other role with ``scram-sha-256``; no TCP listener and no ``host`` lines. The web tier's role
``tart_web`` gets a random password kept in ``<data_dir>/web-db.secret`` (0600).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

PORT = 5432  # only names the socket file: the cluster has a socket directory of its own
DATABASE = "tart"
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
SOCKET_NAME = f".s.PGSQL.{PORT}"
CONF_NAME = "tart.conf"
SYSTEM_USER = "tart"
WEB_SECRET_NAME = "web-db.secret"

# For an ingest-heavy workload that acknowledges events: durable commits, fewer and smoother
# checkpoints, compressed full-page images. Overridable per cluster (tests) or by ALTER SYSTEM,
# since postgresql.auto.conf is read after the included tart.conf.
DEFAULT_SETTINGS: dict[str, str] = {
    "max_connections": "100",
    "shared_buffers": "256MB",
    "wal_buffers": "16MB",
    "synchronous_commit": "on",
    "fsync": "on",
    "full_page_writes": "on",
    "wal_compression": "on",  # upgraded to lz4 when the server was built with it
    "max_wal_size": "2GB",
    "min_wal_size": "256MB",
    "checkpoint_timeout": "15min",
    "checkpoint_completion_target": "0.9",
    # JIT compilation costs 100+ ms on the small aggregate queries the API runs.
    "jit": "off",
    "timezone": "UTC",
    "log_timezone": "UTC",
    "logging_collector": "on",
    "log_directory": "log",
    # One file per weekday, overwritten a week later: the logs cannot grow without bound.
    "log_filename": "postgresql-%a.log",
    "log_truncate_on_rotation": "on",
    "log_rotation_age": "1d",
    "log_rotation_size": "0",
    "log_line_prefix": "%m [%p] %q%u@%d ",
}


class PgClusterError(RuntimeError):
    """The embedded cluster cannot be set up or started; the message says what to do."""


def _pg_version_of(bin_dir: Path) -> str:
    out = subprocess.run([str(bin_dir / "initdb"), "--version"], capture_output=True, text=True,
                         check=True).stdout
    m = re.search(r"(\d+)(?:\.\d+)?", out)
    if not m:
        raise PgClusterError(f"cannot parse the version from {bin_dir / 'initdb'}: {out.strip()!r}")
    return m.group(1)


def _bin_candidates(bin_dir: str) -> Iterator[Path]:
    if bin_dir:
        yield Path(bin_dir)
        return
    initdb = shutil.which("initdb")
    if initdb:
        yield Path(os.path.realpath(initdb)).parent
    versioned = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        ver = Path(d).parent.name
        key = tuple(int(p) for p in ver.split(".") if p.isdigit())
        versioned.append((key, Path(d)))
    for _, d in sorted(versioned, reverse=True):
        yield d


def find_pg_bin(bin_dir: str = "", major: str | None = None) -> Path:
    """The directory holding initdb and pg_ctl: ``bin_dir``, else PATH, else the highest
    /usr/lib/postgresql/*/bin. With ``major`` (an existing cluster's PG_VERSION), a directory of
    that major version wins over the order above, unless ``bin_dir`` was given."""
    found = [d for d in _bin_candidates(bin_dir)
             if (d / "initdb").is_file() and (d / "pg_ctl").is_file()]
    if not found:
        where = bin_dir or "PATH or /usr/lib/postgresql/*/bin"
        raise PgClusterError(
            f"PostgreSQL server binaries (initdb, pg_ctl) not found in {where}; "
            "run scripts/ensure-postgres.sh, set TART_PG_BIN_DIR, or set DATABASE_URL")
    if major and not bin_dir:
        for d in found:
            if _pg_version_of(d) == major:
                return d
    return found[0]


def _is_zombie(pid: int) -> bool:
    # A killed postmaster is reparented to init; an init that does not reap (some containers)
    # leaves it a zombie, which kill(pid, 0) still finds.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _is_postmaster_of(pid: int, pgdata: Path) -> bool:
    """True if ``pid`` is alive and is the postmaster of ``pgdata``, not a recycled pid (which
    after a reboot may even belong to another cluster's postgres)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if _is_zombie(pid):
        return False
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return True  # no /proc: trust kill(0)
    if comm not in ("postgres", "postmaster"):
        return False
    try:
        # The postmaster's working directory is its data directory.
        return os.path.samefile(os.readlink(f"/proc/{pid}/cwd"), pgdata)
    except PermissionError:
        return True
    except OSError:
        return False


def _processes_in(pgdata: Path) -> list[int]:
    """Live processes whose working directory is ``pgdata``: a postmaster and its children (every
    PostgreSQL process runs in its data directory)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.path.samefile(os.readlink(f"/proc/{pid}/cwd"), pgdata) and not _is_zombie(pid):
                out.append(pid)
        except OSError:
            continue
    return out


def _read_or_create_secret(path: Path) -> str:
    """The password kept in ``path`` (mode 0600, owned by this process's user), made on first use.
    Written under a temporary name and linked into place, so a reader never sees half a file and
    two processes starting together agree on one password."""
    with contextlib.suppress(FileNotFoundError):
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise PgClusterError(f"{path} is not a regular file owned by uid {os.geteuid()}; remove it")
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.chmod(path, 0o600)
        value = path.read_text().strip()
        if value:
            return value
        path.unlink()  # empty: a crash between create and write in an older release
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (secrets.token_urlsafe(32) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process won: use its password
    finally:
        tmp.unlink()
    return path.read_text().strip()


def _pid_from_lockfile(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except (OSError, UnicodeDecodeError):
        return None
    return abs(int(first)) if first.lstrip("-").isdigit() else None


class EmbeddedCluster:
    """tart's private PostgreSQL. ``start()`` returns a libpq conninfo for database ``tart``."""

    def __init__(self, data_dir: Path | str, bin_dir: str = "", log: logging.Logger | None = None,
                 settings: Mapping[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.pgdata = self.data_dir / "pg"
        self.bin_dir_setting = bin_dir
        self.log = log or logging.getLogger("tart.pgcluster")
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._dsn: str | None = None
        self._user: pwd.struct_passwd | None = None
        self._bin: Path | None = None

    # -- public API ------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        if self._dsn is None:
            raise RuntimeError("EmbeddedCluster.dsn: the cluster has not been started")
        return self._dsn

    @property
    def socket_dir(self) -> Path:
        return self._socket_dir()

    @property
    def web_secret_path(self) -> Path:
        """Where the web role's password is kept (0600, owned by the user tart runs as)."""
        return self.data_dir / WEB_SECRET_NAME

    @property
    def web_dsn(self) -> str:
        """The web tier's DSN: role ``tart_web``, without its password (read it from
        ``web_secret_path``; a DSN may end up in a command line or a log)."""
        from tart.web.dbrole import WEB_ROLE

        return make_conninfo(self.dsn, user=WEB_ROLE)

    @property
    def user(self) -> str:
        """The OS user the server runs as; also the PostgreSQL role tart connects as."""
        return self._run_user().pw_name

    def start(self) -> str:
        """Create the cluster on first use, start it (or adopt one already running), make sure
        database ``tart`` exists, and return its DSN."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            user = self._run_user()
            if os.geteuid() == 0:
                self._check_traversable(user)
            self._bin = find_pg_bin(self.bin_dir_setting, self._cluster_major())
            sock = self._prepare_socket_dir(user)
            if not (self.pgdata / "PG_VERSION").is_file():
                self._initdb(user)
            self._check_version()
            self._write_conf(sock)
            hba_changed = self._write_hba()
            if self._server_running():
                self.log.info("reusing the PostgreSQL already running", extra={"pgdata": str(self.pgdata)})
                if hba_changed:
                    # A cluster of an earlier release trusted every role: apply the new rules now.
                    self._pg_ctl("reload", timeout=30)
                    self.log.info("pg_hba.conf rewritten and reloaded", extra={"pgdata": str(self.pgdata)})
            else:
                self._clear_stale_locks(sock)
                self._pg_ctl_start()
            self._dsn = make_conninfo(host=str(sock), port=PORT, user=user.pw_name, dbname=DATABASE)
            self._ensure_database()
            self._ensure_web_role()
        return self._dsn

    def postmaster_alive(self) -> bool:
        """Whether the postmaster named in postmaster.pid is alive: two syscalls and two /proc
        reads, cheap enough to ask every few seconds (``pg_ctl status`` forks a process)."""
        pid = _pid_from_lockfile(self.pgdata / "postmaster.pid")
        return pid is not None and _is_postmaster_of(pid, self.pgdata)

    def restart_dead(self) -> bool:
        """Start the postmaster again after it died (kill -9, OOM killer). Returns False, having
        done nothing but ask them to quit, while processes of the dead one remain: a new
        postmaster must not share the data directory with an orphaned backend, and once its
        lock file is removed PostgreSQL could no longer tell. Raises PgClusterError if the start
        fails."""
        with self._lock():
            if self.postmaster_alive():
                return True
            orphans = _processes_in(self.pgdata)
            if orphans:
                # What the postmaster itself sends its children after a crash (quickdie).
                for pid in orphans:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGQUIT)
                self.log.warning("waiting for the dead postmaster's processes to exit",
                                 extra={"pids": ",".join(map(str, orphans))})
                return False
            if self._bin is None:
                self._bin = find_pg_bin(self.bin_dir_setting, self._cluster_major())
            sock = self._prepare_socket_dir(self._run_user())
            self._write_conf(sock)
            self._write_hba()
            self._clear_stale_locks(sock)
            self._pg_ctl_start()
            return True

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are cut, committed data is safe)."""
        if not (self.pgdata / "PG_VERSION").is_file():
            return
        with self._lock():
            if self._bin is None:
                self._bin = find_pg_bin(self.bin_dir_setting, self._cluster_major())
            if not self._server_running():
                return
            r = self._pg_ctl("stop", "-m", "fast", "-t", "60", check=False)
            if r.returncode != 0 and self._server_running():
                self.log.warning("fast shutdown failed; trying immediate", extra={"error": r.stderr.strip()})
                self._pg_ctl("stop", "-m", "immediate", "-t", "30", check=False)
            self.log.info("PostgreSQL stopped", extra={"pgdata": str(self.pgdata)})

    def running(self) -> bool:
        if not (self.pgdata / "PG_VERSION").is_file():
            return False
        if self._bin is None:
            self._bin = find_pg_bin(self.bin_dir_setting, self._cluster_major())
        return self._server_running()

    def __enter__(self) -> EmbeddedCluster:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- users and permissions ---------------------------------------------------------------

    def _run_user(self) -> pwd.struct_passwd:
        if self._user is not None:
            return self._user
        euid = os.geteuid()
        if self.pgdata.exists():
            # The cluster's owner decides: the server must run as the user that created it.
            owner = self.pgdata.stat().st_uid
            try:
                pw = pwd.getpwuid(owner)
            except KeyError:
                raise PgClusterError(f"{self.pgdata} is owned by uid {owner}, which has no user; "
                                     "chown it to the user that should run PostgreSQL") from None
            if euid != 0 and owner != euid:
                raise PgClusterError(f"{self.pgdata} belongs to {pw.pw_name}; run tart as that user "
                                     "or as root, or set TART_DATA_DIR elsewhere")
            if owner == 0:
                raise PgClusterError(f"{self.pgdata} is owned by root; PostgreSQL cannot run as root")
            self._user = pw
        elif euid != 0:
            self._user = pwd.getpwuid(euid)
        else:
            self._user = self._system_user()
        return self._user

    @staticmethod
    def _system_user() -> pwd.struct_passwd:
        for name in ("postgres", SYSTEM_USER):
            with contextlib.suppress(KeyError):
                return pwd.getpwnam(name)
        shell = "/usr/sbin/nologin" if os.path.exists("/usr/sbin/nologin") else "/bin/false"
        r = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                            "--home-dir", "/nonexistent", "--shell", shell, SYSTEM_USER],
                           capture_output=True, text=True)
        try:
            # Another process may have created it at the same moment (useradd exits 9).
            return pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise PgClusterError(f"cannot create system user {SYSTEM_USER!r} to run PostgreSQL: "
                                 f"{r.stderr.strip()}") from None

    def _check_traversable(self, user: pwd.struct_passwd) -> None:
        groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
        for d in [self.data_dir, *self.data_dir.parents]:
            st = d.stat()
            if st.st_uid == user.pw_uid:
                ok = st.st_mode & stat.S_IXUSR
            elif st.st_gid in groups:
                ok = st.st_mode & stat.S_IXGRP
            else:
                ok = st.st_mode & stat.S_IXOTH
            if not ok:
                raise PgClusterError(
                    f"PostgreSQL runs as user {user.pw_name!r}, which cannot enter {d} "
                    f"(mode {stat.filemode(st.st_mode)}, owner uid {st.st_uid}). Set TART_DATA_DIR "
                    f"to a directory outside it (e.g. /var/lib/tart), or allow traversal with "
                    f"'chmod o+x {d}', or set DATABASE_URL to use an existing server.")

    def _owned_dir(self, path: Path, user: pwd.struct_passwd) -> None:
        """Make ``path`` a 0700 directory owned by ``user``; refuse one owned by someone else."""
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode):
            raise PgClusterError(f"{path} exists and is not a directory")
        if st.st_uid != user.pw_uid:
            if st.st_uid != os.geteuid():
                raise PgClusterError(f"{path} is owned by uid {st.st_uid}, not {user.pw_name}; remove it")
            os.chown(path, user.pw_uid, user.pw_gid)
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(path, 0o700)

    # -- files ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        fd = os.open(self.data_dir / "pg.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _socket_dir(self) -> Path:
        preferred = self.data_dir / "pg-socket"
        if len(str(preferred / SOCKET_NAME).encode()) <= SOCKET_PATH_MAX:
            return preferred
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
        return Path(f"/tmp/tart-pg-{digest}")

    def _prepare_socket_dir(self, user: pwd.struct_passwd) -> Path:
        sock = self._socket_dir()
        self._owned_dir(sock, user)
        return sock

    def _cluster_major(self) -> str | None:
        try:
            return (self.pgdata / "PG_VERSION").read_text().strip()
        except OSError:
            return None

    def _check_version(self) -> None:
        assert self._bin is not None
        have, want = _pg_version_of(self._bin), self._cluster_major()
        if want and have != want:
            raise PgClusterError(
                f"the cluster in {self.pgdata} was created by PostgreSQL {want}, but the binaries in "
                f"{self._bin} are version {have}; install PostgreSQL {want} (or set TART_PG_BIN_DIR "
                f"to its bin directory), or upgrade the cluster with pg_upgrade")

    def _initdb(self, user: pwd.struct_passwd) -> None:
        # initdb into a scratch directory, renamed into place only when complete, so a tart killed
        # during initdb never leaves a half-made cluster that looks finished.
        tmp = self.data_dir / "pg.initdb-tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        self._owned_dir(tmp, user)
        self.log.info("creating PostgreSQL cluster", extra={"pgdata": str(self.pgdata), "user": user.pw_name})
        assert self._bin is not None
        self._run([str(self._bin / "initdb"), "-D", str(tmp), "-U", user.pw_name,
                   "--auth-local=trust", "--auth-host=reject", "-E", "UTF8", "--locale=C",
                   "--no-instructions"], timeout=600)
        with open(tmp / "postgresql.conf", "a") as f:
            f.write(f"\n# tart's settings, rewritten at every start by tart\ninclude = '{CONF_NAME}'\n")
        os.rename(tmp, self.pgdata)

    def _write_conf(self, sock: Path) -> None:
        settings = dict(self.settings)
        if settings.get("wal_compression") == "on" and self._has_lz4():
            settings["wal_compression"] = "lz4"
        # No TCP listener: the socket directory's permissions are the only way in.
        settings.update(listen_addresses="", port=str(PORT), unix_socket_directories=str(sock),
                        unix_socket_permissions="0700", password_encryption="scram-sha-256")
        lines = ["# Written by tart at every start: edits are lost. Override with ALTER SYSTEM.\n"]
        for k, v in settings.items():
            lines.append(f"{k} = '{v.replace(chr(39), chr(39) * 2)}'\n")
        user = self._run_user()
        path = self.pgdata / CONF_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        if os.geteuid() == 0:
            os.chown(tmp, user.pw_uid, user.pw_gid)
        os.replace(tmp, path)

    def _write_hba(self) -> bool:
        """Write pg_hba.conf (the owner: trust over the socket; everyone else: scram-sha-256;
        nothing over TCP). Returns whether it changed, i.e. a running server must reload it."""
        user = self._run_user()
        owner = '"' + user.pw_name.replace('"', '""') + '"'
        text = ("# Written by tart at every start: edits are lost.\n"
                "# The cluster's owner (the role tart connects as) over the private socket, whose 0700\n"
                "# directory admits only that user and root; every other role with a password.\n"
                f"local all {owner} trust\n"
                f"local replication {owner} trust\n"
                "local all all scram-sha-256\n")
        path = self.pgdata / "pg_hba.conf"
        with contextlib.suppress(OSError):
            if path.read_text() == text:
                return False
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o600)
        if os.geteuid() == 0:
            os.chown(tmp, user.pw_uid, user.pw_gid)
        os.replace(tmp, path)
        return True

    def _ensure_web_role(self) -> None:
        """Create ``tart_web`` if missing (the migrations grant its privileges) and give it the
        password kept in ``web_secret_path``. The verifier is computed here, so the password
        itself never reaches the server (nor its log)."""
        from tart.web.dbrole import WEB_ROLE, create_role_sql

        password = _read_or_create_secret(self.web_secret_path)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(create_role_sql(WEB_ROLE))
            verifier = conn.pgconn.encrypt_password(password.encode(), WEB_ROLE.encode(), b"scram-sha-256")
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(WEB_ROLE), sql.Literal(verifier.decode())))

    def _has_lz4(self) -> bool:
        assert self._bin is not None
        pg_config = self._bin / "pg_config"
        if not pg_config.is_file():
            return False
        r = subprocess.run([str(pg_config), "--configure"], capture_output=True, text=True)
        return "--with-lz4" in r.stdout

    def _clear_stale_locks(self, sock: Path) -> None:
        # A pid recycled since a killed postmaster wrote its lock file makes PostgreSQL refuse to
        # start ("lock file already exists"); a lock whose pid is not a postgres process is stale.
        for lockfile in (self.pgdata / "postmaster.pid", sock / f"{SOCKET_NAME}.lock"):
            pid = _pid_from_lockfile(lockfile)
            if lockfile.exists() and (pid is None or not _is_postmaster_of(pid, self.pgdata)):
                self.log.warning("removing stale lock file", extra={"path": str(lockfile), "pid": pid})
                with contextlib.suppress(FileNotFoundError):
                    lockfile.unlink()

    # -- commands ------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        # PG* variables (PGPORT, PGDATA, ...) would silently change what the server and tools do.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        env.pop("LANG", None)
        return env

    def _run(self, cmd: list[str], timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        user = self._run_user()
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", user.pw_name, "--", *cmd]
        r = subprocess.run(cmd, cwd="/tmp", env=self._env(), capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise PgClusterError(f"{' '.join(cmd)} failed (exit {r.returncode}): "
                                 f"{(r.stderr or r.stdout).strip()}")
        return r

    def _pg_ctl(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        assert self._bin is not None
        return self._run([str(self._bin / "pg_ctl"), "-D", str(self.pgdata), "-w", *args],
                         timeout=timeout, check=check)

    def _server_running(self) -> bool:
        r = self._pg_ctl("status", check=False, timeout=30)
        if r.returncode != 0:
            return False
        pid = _pid_from_lockfile(self.pgdata / "postmaster.pid")
        return pid is not None and _is_postmaster_of(pid, self.pgdata)

    def _pg_ctl_start(self) -> None:
        startup_log = self.pgdata / "log" / "startup.log"
        if not startup_log.parent.exists():
            self._run(["mkdir", "-p", str(startup_log.parent)])
        self.log.info("starting PostgreSQL", extra={"pgdata": str(self.pgdata)})
        r = self._pg_ctl("start", "-t", "120", "-l", str(startup_log), check=False)
        if r.returncode != 0:
            # Once the logging collector is up, the reason lands in its file, not in startup.log.
            logs = sorted(startup_log.parent.glob("*.log"), key=lambda p: p.stat().st_mtime)[-2:]
            tails = []
            for path in logs:
                with contextlib.suppress(OSError):
                    lines = path.read_text(errors="replace").splitlines()[-10:]
                    tails.append(f"{path}:\n" + "\n".join(lines))
            raise PgClusterError(f"PostgreSQL did not start (pg_ctl exit {r.returncode}): "
                                 f"{r.stderr.strip()}\n" + "\n".join(tails))

    def _ensure_database(self) -> None:
        admin = make_conninfo(self.dsn, dbname="postgres")
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg.connect(admin, autocommit=True)
                break
            except psycopg.OperationalError:
                # A postmaster adopted while still starting up refuses connections briefly.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
                return
            try:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
            except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                pass  # another process created it at the same moment


__all__ = ["DEFAULT_SETTINGS", "EmbeddedCluster", "PgClusterError", "find_pg_bin"]
