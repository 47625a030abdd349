"""`tart-backend`: the supervisor (arbiter) of every tart process.

Modelled on gunicorn's arbiter: the parent does no request work; it prepares what the children
share (database, rings, one SO_REUSEPORT listening socket per acceptor, kept across acceptor
restarts), forks them, and then only reacts to signals and child deaths. Children: N acceptors and
TART_WRITERS writers (forked, so each acceptor inherits its own listening socket and the imported code), and the web tier (gunicorn, exec'd, since it runs its own arbiter).

Shutdown order matters for "nothing accepted is lost": acceptors stop first (they flush what
they decoded into their rings), then the writer drains every ring into PostgreSQL, then the web
tier and the embedded PostgreSQL stop.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import random
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tart import add_version_flag
from tart.engine import config as config_mod
from tart.engine import logs
from tart.engine import reload as reload_mod

log = logging.getLogger("tart.supervisor")

SHUTDOWN_GRACE = {"acceptor": 4.0, "writer": 8.0, "web": 5.0}
# How often the embedded postmaster's liveness is checked, and the longest wait between
# restart attempts when it keeps failing to start.
POSTGRES_CHECK_S = 2.0
POSTGRES_BACKOFF_MAX_S = 30.0


@dataclass
class Child:
    role: str  # "acceptor" | "writer" | "web"
    index: int = 0
    pid: int = 0
    popen: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    next_start: float = 0.0  # backoff: earliest time it may be started again
    started_wall: float = 0.0  # unix time of the last start, for the heartbeat check
    killed_hung: bool = False
    stopping: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}" if self.role in ("acceptor", "writer") else self.role


# Taken out of the environment by main(): only the supervisor may speak to systemd
# (NotifyAccess=main). Children that inherit NOTIFY_SOCKET send their own, premature READY=1
# (gunicorn's arbiter does; so does a postmaster built --with-systemd), which systemd rejects
# with a warning in the journal.
_notify_socket: str | None = None


def sd_notify(message: str) -> bool:
    """Send a systemd notification (READY=1, STOPPING=1, STATUS=...) if NOTIFY_SOCKET is set."""
    addr = _notify_socket if _notify_socket is not None else os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):  # abstract namespace
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(message.encode())
        return True
    except OSError as e:
        log.warning("sd_notify failed", extra={"error": str(e)})
        return False


def _raise_malloc_trim_threshold(value: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, value)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def writer_rings(ring_names: list[str], writers: int, index: int) -> list[str]:
    """The rings writer ``index`` of ``writers`` owns: every writers-th, so each gets a share."""
    return ring_names[index::writers]


def set_title(title: str) -> None:
    """What ps shows for this process (`tart: acceptor 0`); a no-op without setproctitle."""
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)


def _stale_rings() -> list[str]:
    """Rings of a supervisor that died without cleaning up (named tart<pid>r<i>...). Only our own
    user's: /dev/shm is shared by every local user, who may use the same names."""
    uid = os.getuid()
    out = []
    for path in sorted(Path("/dev/shm").glob("tart*r*")):
        pid_text = path.name[4:].split("r", 1)[0]
        if not pid_text.isdigit() or Path(f"/proc/{pid_text}").exists():
            continue
        try:
            if path.stat().st_uid == uid:
                out.append(path.name)
        except OSError:
            continue
    return out


def _drain_and_remove_stale_rings(dsn: str, settings: config_mod.Settings) -> None:
    """What a killed run's acceptors had accepted but its writers not yet committed is still in
    its rings: store it (exactly once: the rings' cursors are in ring_cursors), then remove them.
    A ring that cannot be attached or drained is left in place and reported, never unlinked
    with events in it."""
    from tart.engine.ring import Ring
    from tart.engine.writer import drain_rings

    names = _stale_rings()
    attachable = []
    for name in names:
        try:
            Ring.attach(name).close()
            attachable.append(name)
        except (OSError, ValueError) as e:
            log.warning("stale ring unreadable, left in place", extra={"ring": name, "error": str(e)})
    if attachable:
        stored = drain_rings(attachable, dsn, settings)
        log.info("drained a previous run's rings", extra={"rings": ",".join(attachable), "bytes": stored})
    for name in attachable:
        try:
            if Ring.remove(name):
                log.info("removed stale ring", extra={"ring": name})
        except OSError as e:
            log.debug("stale ring not removed", extra={"ring": name, "error": str(e)})


def create_rings(tag: str, count: int, capacity: int) -> tuple[list, list[str]]:
    """One ring per acceptor, named `<tag>r<i>`; a name that already exists in /dev/shm (another
    user's segment, or a reused pid's leftover we may not remove) gets a random suffix instead."""
    from tart.engine.ring import Ring

    rings, names = [], []
    for i in range(count):
        name = f"{tag}r{i}"
        for _attempt in range(8):
            try:
                rings.append(Ring.create(name, capacity, i))
                break
            except FileExistsError:
                taken, name = name, f"{tag}r{i}x{secrets.token_hex(4)}"
                log.warning("ring name taken, using another", extra={"taken": taken, "ring": name})
        else:
            raise RuntimeError(f"no free ring name for acceptor {i} in /dev/shm")
        names.append(name)
    return rings, names


def child_heartbeat(child: Child, rings: list, health_path: Path) -> float:
    """Unix time of `child`'s last heartbeat, or 0.0 if it has written none (yet): acceptors in
    their ring's header, the writer in writer.health (which names its pid: a predecessor's
    file says nothing about this incarnation)."""
    if child.role == "acceptor":
        ring = rings[child.index]
        return ring.heartbeat_at if ring.producer_pid == child.pid else 0.0
    if child.role == "writer":
        try:
            st = health_path.stat()
            import orjson

            doc = orjson.loads(health_path.read_bytes())
        except (OSError, ValueError):
            return 0.0
        return st.st_mtime if isinstance(doc, dict) and doc.get("pid") == child.pid else 0.0
    return 0.0


def _listen_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """One listening socket per acceptor, all on the same port with SO_REUSEPORT.

    The kernel then spreads new connections evenly over the acceptors (one shared socket lets
    whichever process wakes first take them all). The supervisor keeps the sockets, so the
    backlog of a dead acceptor waits for its replacement instead of being reset.
    """
    socks = [_listen_socket(host, port)]
    port = socks[0].getsockname()[1]
    socks.extend(_listen_socket(host, port) for _ in range(count - 1))
    return socks


def _listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(self, settings: config_mod.Settings) -> None:
        self.settings = settings
        self.children: list[Child] = []
        self.cluster = None
        self.dsn = ""
        self.rings: list = []
        self.ring_names: list[str] = []
        self.listen_socks: list[socket.socket] = []
        self.signal_queue: list[int] = []
        self.pipe_r, self.pipe_w = os.pipe()
        for fd in (self.pipe_r, self.pipe_w):
            os.set_blocking(fd, False)
        self.stopping = False
        self.ready_sent = False
        self.started = time.time()
        self.pg_next_check = 0.0
        self.pg_failures = 0

    # --- setup --------------------------------------------------------------------------
    def prepare(self) -> None:
        s = self.settings
        data = s.data_path
        data.mkdir(parents=True, exist_ok=True)
        metrics_dir = data / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        # Many small orjson outputs held in batches make glibc trim the heap constantly
        # (performance-facts.md). The environment variable reaches exec'd children (gunicorn);
        # forked children inherit the allocator state set here with mallopt.
        os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "268435456")
        _raise_malloc_trim_threshold(268435456)

        from tart.engine.db import resolve_database
        from tart.engine.migrate import ensure_partitions, migrate

        self.dsn, self.cluster = resolve_database(s)
        applied = migrate(self.dsn)
        from tart.engine.db import connect
        from tart.engine.derived import RESET_ALL_CONNECTIONS_SQL

        with connect(self.dsn) as conn:
            ensure_partitions(conn)
            conn.execute(RESET_ALL_CONNECTIONS_SQL)
            conn.commit()
        with connect(self.dsn, autocommit=True) as conn:
            from tart.engine.writer.rollups import recover

            # Counts that a killed run's writers had not flushed (no writer runs yet).
            recovered = recover(conn)
            if recovered:
                log.info("rollups recovered", extra={"events": recovered})
        log.info("database ready", extra={"embedded": self.cluster is not None, "migrations_applied": len(applied)})

        _drain_and_remove_stale_rings(self.dsn, s)
        self.rings, self.ring_names = create_rings(f"tart{os.getpid()}", s.acceptor_count, s.ring_bytes)

        host, port = s.telemetry_bind
        self.listen_socks = _listen_sockets(host, port, s.acceptor_count)
        log.info("telemetry listening", extra={"bind": f"{host}:{self.listen_socks[0].getsockname()[1]}"})

        self.children = [Child("acceptor", i) for i in range(s.acceptor_count)]
        self.children.extend(Child("writer", i) for i in range(s.writer_count))
        self.children.append(Child("web"))

    # --- signals ------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame) -> None:
        self.signal_queue.append(signum)
        try:
            os.write(self.pipe_w, b".")
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EINTR):
                raise

    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)

    # --- children -----------------------------------------------------------------------
    def spawn(self, child: Child) -> None:
        child.started_at = time.monotonic()
        child.started_wall = time.time()
        child.killed_hung = False
        child.stopping = False
        if child.role == "web":
            self._spawn_web(child)
            return
        pid = os.fork()
        if pid:
            child.pid = pid
            log.info("started", extra={"child": child.name, "pid": pid})
            return
        # --- in the child ---
        code = 0
        try:
            os.close(self.pipe_r)
            os.close(self.pipe_w)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            # Until the role installs its reload handler, a SIGHUP must not kill the child.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            logs.setup(child.name, self.settings.log_level)
            set_title(f"tart: {child.role} {child.index}")
            if child.role == "acceptor":
                from tart.engine.acceptor import run_acceptor

                mine = self.listen_socks[child.index]
                for other in self.listen_socks:
                    if other is not mine:
                        other.close()
                run_acceptor(child.index, mine, self.ring_names[child.index], self.settings)
            else:
                from tart.engine.writer import run_writer

                for sock in self.listen_socks:
                    sock.close()
                run_writer(writer_rings(self.ring_names, self.settings.writer_count, child.index), self.dsn,
                           self.settings, child.index)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            logging.getLogger("tart").exception("child crashed")
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)

    def _spawn_web(self, child: Child) -> None:
        s = self.settings
        host, port = s.api_bind
        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        env = dict(os.environ)
        env.pop("TART_DB_PASSWORD_FILE", None)
        if self.cluster is not None:
            # The read-only role; its password travels as a file path, never on a command line.
            web_dsn = self.cluster.web_dsn
            env["TART_DB_PASSWORD_FILE"] = str(self.cluster.web_secret_path)
        else:
            web_dsn = s.web_database_url or self.dsn
        env.update(
            TART_DSN=web_dsn,
            TART_RINGS=",".join(self.ring_names),
            TART_DATA_DIR=str(s.data_path),
            TART_LOG=s.log_level,
            TART_STARTED_AT=str(self.started),
        )
        gunicorn = [sys.executable, "-m", "gunicorn"]
        cmd = [
            *gunicorn,
            "-k", "asgi",
            "--asgi-loop", "uvloop",
            "-w", str(s.web_workers),
            "-b", bind,
            "--config", "python:tart.web.gunicorn_conf",
            "--name", "tart: web",  # ps: "gunicorn: master [tart: web]"
            "tart.web.asgi:app",
        ]
        child.popen = subprocess.Popen(cmd, env=env, pass_fds=())
        child.pid = child.popen.pid
        log.info("started", extra={"child": "web", "pid": child.pid, "bind": bind})

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for child in self.children:
                if child.pid == pid:
                    self._child_exited(child, status)
                    break

    def _child_exited(self, child: Child, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        child.pid = 0
        if child.popen is not None:
            child.popen.returncode = code
            child.popen = None
        self._mark_dead_metrics_pid()
        if self.stopping or child.stopping:
            log.info("stopped", extra={"child": child.name, "code": code})
            return
        uptime = time.monotonic() - child.started_at
        # Backoff: a child that keeps dying right after start is restarted ever more slowly.
        if uptime > 30:
            child.restarts = 0
        delay = min(30.0, 0.5 * (2 ** child.restarts)) * (0.75 + random.random() / 2)
        child.restarts += 1
        child.next_start = time.monotonic() + delay
        log.warning("died, restarting", extra={"child": child.name, "code": code, "uptime_s": round(uptime, 1),
                                                 "restart_in_s": round(delay, 2)})
        try:
            from tart.engine.metrics import PROCESS_RESTARTS

            PROCESS_RESTARTS.labels(child.role).inc()
        except Exception:  # metrics must never stop supervision
            pass

    def check_heartbeats(self) -> None:
        """Kill a child whose heartbeat is older than TART_HEARTBEAT_TIMEOUT (gunicorn's
        murder_workers): a hung acceptor holds its nodes and its ring, a hung writer all
        ingest. Its death is then handled like any other: restarted with backoff."""
        timeout = self.settings.heartbeat_timeout
        now = time.time()
        from tart.engine.writer.health import health_file_name

        for child in self.children:
            if not child.pid or child.stopping or child.killed_hung or child.role == "web":
                continue
            try:
                health = self.settings.data_path / health_file_name(child.index)
                beat = child_heartbeat(child, self.rings, health)
            except Exception:  # a bad health file must never stop supervision
                continue
            silent = now - max(beat, child.started_wall)
            if silent <= timeout:
                continue
            child.killed_hung = True
            log.error("hung, killing", extra={"child": child.name, "pid": child.pid, "silent_s": round(silent, 1),
                                              "heartbeat_timeout_s": timeout})
            try:
                from tart.engine.metrics import PROCESS_HUNG

                PROCESS_HUNG.labels(child.role).inc()
            except Exception:
                pass
            self._signal(child, signal.SIGKILL)

    def check_postgres(self) -> None:
        """Restart the embedded postmaster if it died (kill -9, OOM killer), with backoff. Writers
        wait out the outage (their rings hold what arrives meanwhile) and the web tier answers
        503 until it is back. With DATABASE_URL tart does not own the server: nothing to do."""
        if self.cluster is None or self.stopping:
            return
        now = time.monotonic()
        if now < self.pg_next_check:
            return
        self.pg_next_check = now + POSTGRES_CHECK_S
        try:
            if self.cluster.postmaster_alive():
                self.pg_failures = 0
                return
        except Exception:  # a check that cannot read /proc must never stop supervision
            return
        log.error("PostgreSQL is not running, restarting it", extra={"pgdata": str(self.cluster.pgdata)})
        try:
            started = self.cluster.restart_dead()
        except Exception as e:
            self.pg_failures += 1
            delay = min(POSTGRES_BACKOFF_MAX_S, POSTGRES_CHECK_S * 2 ** self.pg_failures)
            self.pg_next_check = time.monotonic() + delay
            log.error("PostgreSQL restart failed", extra={"error": f"{type(e).__name__}: {e}"[:2000],
                                                          "retry_in_s": round(delay, 1)})
            return
        if not started:
            return  # the dead postmaster's processes are still exiting: the next check retries
        self.pg_failures = 0
        log.warning("PostgreSQL restarted", extra={"pgdata": str(self.cluster.pgdata)})
        try:
            from tart.engine.metrics import POSTGRES_RESTARTS

            POSTGRES_RESTARTS.inc()
        except Exception:  # metrics must never stop supervision
            pass

    def _mark_dead_metrics_pid(self) -> None:
        try:
            from prometheus_client import multiprocess

            live = {c.pid for c in self.children if c.pid}
            for f in Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob("gauge_live*_*.db"):
                pid = int(f.stem.rsplit("_", 1)[1])
                if pid not in live and pid != os.getpid():
                    multiprocess.mark_process_dead(pid)
        except Exception:
            pass

    def start_due_children(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if not child.pid and not self.stopping and now >= child.next_start:
                self.spawn(child)

    # --- main loop ----------------------------------------------------------------------
    def run(self) -> int:
        self.install_signals()
        self.start_due_children()
        while True:
            self._wait(1.0)
            while self.signal_queue:
                sig = self.signal_queue.pop(0)
                if sig == signal.SIGCHLD:
                    self.reap()
                elif sig in (signal.SIGTERM, signal.SIGINT):
                    log.info("shutdown requested", extra={"signal": signal.Signals(sig).name})
                    return self.shutdown()
                elif sig == signal.SIGHUP:
                    self.reload()
            self.reap()
            self.check_heartbeats()
            self.check_postgres()
            self.start_due_children()
            if not self.ready_sent:
                self._check_ready()

    def _wait(self, timeout: float) -> None:
        try:
            ready, _, _ = select.select([self.pipe_r], [], [], timeout)
            if ready:
                while os.read(self.pipe_r, 4096):
                    pass
        except (InterruptedError, BlockingIOError):
            pass
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EINTR):
                raise

    def _check_ready(self) -> None:
        if not all(c.pid for c in self.children):
            return
        host, port = self.settings.api_bind
        host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
        url = f"http://[{host}]:{port}/api/health" if ":" in host else f"http://{host}:{port}/api/health"
        try:
            with urllib.request.urlopen(url, timeout=0.5) as resp:
                if resp.status != 200:
                    return
        except OSError:
            return
        self.ready_sent = True
        log.info("ready", extra={"telemetry": "%s:%d" % self.settings.telemetry_bind,
                                 "api": "%s:%d" % self.settings.api_bind,
                                 "acceptors": self.settings.acceptor_count})
        sd_notify(f"READY=1\nSTATUS=tart ready: {self.settings.acceptor_count} acceptors\nMAINPID={os.getpid()}")

    def reload(self) -> None:
        # What is live, restart-only or web-only comes from the option table (engine/config.py).
        try:
            got = reload_mod.reread_all(self.settings)
        except config_mod.ConfigError as e:
            log.error("reload rejected: invalid configuration", extra={"error": str(e)})
            return
        if got.needs_restart:
            log.warning("reload: these options need a restart and were not applied",
                        extra={"options": ",".join(got.needs_restart)})
        self.settings = got.settings
        logs.setup("supervisor", got.settings.log_level)
        sd_notify("RELOADING=1")
        # Acceptors and the writer re-read configuration on SIGHUP; gunicorn replaces its workers.
        for child in self.children:
            if child.pid:
                self._signal(child, signal.SIGHUP)
        log.info("configuration reloaded", extra={"changed": ",".join(got.applied) or "nothing"})
        sd_notify("READY=1")

    def _signal(self, child: Child, sig: int) -> None:
        try:
            os.kill(child.pid, sig)
        except ProcessLookupError:
            pass

    def _stop_role(self, role: str) -> None:
        group = [c for c in self.children if c.role == role and c.pid]
        for c in group:
            c.stopping = True
            self._signal(c, signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_GRACE[role]
        while any(c.pid for c in group) and time.monotonic() < deadline:
            self._wait(0.05)
            self.reap()
        for c in group:
            if c.pid:
                log.warning("did not stop in time, killing", extra={"child": c.name})
                self._signal(c, signal.SIGKILL)
        while any(c.pid for c in group):
            self._wait(0.05)
            self.reap()

    def shutdown(self) -> int:
        self.stopping = True
        sd_notify("STOPPING=1")
        for sock in self.listen_socks:
            sock.close()
        self._stop_role("acceptor")
        self._stop_role("writer")
        self._stop_role("web")
        self.cleanup()
        log.info("stopped", extra={"uptime_s": round(time.time() - self.started, 1)})
        return 0

    def cleanup(self) -> None:
        for ring in self.rings:
            try:
                ring.close()
                ring.unlink()
            except Exception:
                pass
        self.rings = []
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None


def main(argv: list[str] | None = None) -> int:
    # Plain text here: the module docstring's first line carries reST markup for readers of the code.
    parser = argparse.ArgumentParser(
        prog="tart-backend",
        description="Run tart: the supervisor, N acceptors, the writer and the web tier.",
        epilog="Configuration comes from the environment and the TART_CONFIG file (conf/tart.env lists every "
               "option); SIGHUP reloads it, SIGTERM stops tart after draining every accepted event.")
    add_version_flag(parser)
    parser.add_argument("--check-config", action="store_true", help="validate configuration and exit")
    parser.add_argument("--print-config", action="store_true", help="print the effective configuration and exit")
    args = parser.parse_args(argv)
    global _notify_socket
    _notify_socket = os.environ.pop("NOTIFY_SOCKET", None) or ""
    try:
        settings = config_mod.load()
    except config_mod.ConfigError as e:
        print(f"tart-backend: invalid configuration: {e}", file=sys.stderr)
        return 2
    if args.print_config or args.check_config:
        if args.print_config:
            for name, value in sorted(vars(settings).items()):
                if name != "sources":
                    print(f"{name} = {value!r}  ({settings.sources.get(name)})")
        return 0
    logs.setup("supervisor", settings.log_level)
    set_title("tart: supervisor")
    if settings.acceptor_count > 64:
        print("tart-backend: TART_ACCEPTORS must be <= 64", file=sys.stderr)
        return 2
    sup = Supervisor(settings)
    try:
        sup.prepare()
    except Exception as e:
        log.error("startup failed", extra={"error": f"{type(e).__name__}: {e}"})
        log.debug("startup failure detail", exc_info=True)
        sup.cleanup()
        return 1
    try:
        return sup.run()
    finally:
        sup.cleanup()


if __name__ == "__main__":
    sys.exit(main())
