"""tart-dash behind a TLS reverse proxy: --url https://... (and TART_URL) reaches REST over https
and the live stream over wss, through a real TLS proxy in front of a real tart. Also --version and
that the console imports nothing of the server."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from tartproc import TartProcess
from test_dash_tui import BIN, loadgen, tart, term_factory  # noqa: F401 - fixtures

import tart as tart_pkg


class TlsProxy(threading.Thread):
    """TLS in front, plain TCP to tart's API behind: what nginx/caddy do for tart in production."""

    def __init__(self, backend_port: int, cert: Path, key: Path) -> None:
        super().__init__(daemon=True)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.ctx = ctx
        self.backend_port = backend_port
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.https_requests = 0

    def run(self) -> None:
        while True:
            try:
                raw, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            front = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        self.https_requests += 1
        back = socket.create_connection(("127.0.0.1", self.backend_port))

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pipe, args=(back, front), daemon=True).start()
        pipe(front, back)


@pytest.fixture
def tls_cert(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.mark.parametrize("how", ["flag", "env"])
def test_dash_over_https_and_wss(tart: TartProcess, loadgen, term_factory, tls_cert, how: str) -> None:  # noqa: F811
    cert, key = tls_cert
    proxy = TlsProxy(tart.api_port, cert, key)
    proxy.start()
    url = f"https://localhost:{proxy.port}/"
    # The dash trusts the proxy's certificate the way a user would add a private CA: SSL_CERT_FILE.
    env = {"SSL_CERT_FILE": str(cert)}
    argv = [str(BIN / "tart-dash"), "--refresh-ms", "500"]
    if how == "flag":
        argv += ["--url", url]
    else:
        env["TART_URL"] = url
    term = term_factory(argv, 100, 30, env=env)
    screen = term.wait_for("4 connected / 4 total", timeout=30)
    assert "backend reachable" in screen and f"localhost:{proxy.port}" in screen
    # The Events screen fills from the WebSocket only: wss through the proxy works.
    for _ in range(3):
        term.keys("Tab")
    term.wait_for(lambda s: "Live events" in s and "Live events 0 shown" not in s, timeout=30)
    term.keys("q")
    assert term.exit_code() == 0
    assert proxy.https_requests >= 2  # REST polls and the WebSocket both went through TLS
    proxy.srv.close()


def test_bad_url_is_a_usage_error() -> None:
    r = subprocess.run([str(BIN / "tart-dash"), "--url", "ftp://x"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--url" in r.stderr


def test_version() -> None:
    r = subprocess.run([str(BIN / "tart-dash"), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"tart-dash {tart_pkg.__version__}"


SERVER_ONLY = ("psycopg", "psycopg_pool", "gunicorn", "uvloop", "falcon", "setproctitle", "tart.web",
               "tart.engine.writer", "tart.engine.acceptor", "tart.engine.supervisor", "tart.engine.db")


def test_console_imports_nothing_of_the_server() -> None:
    code = ("import sys, tart.dash.app\n"
            f"server = {SERVER_ONLY!r}\n"
            "print(' '.join(m for m in sys.modules if any(m == s or m.startswith(s + '.') for s in server)))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert r.stdout.strip() == "", f"tart-dash imports server-only modules: {r.stdout}"


def test_server_imports_no_urwid() -> None:
    code = ("import sys, tart.engine.supervisor, tart.engine.acceptor, tart.engine.writer, tart.web.app,"
            " tart.engine.export, tart.engine.loadgen\n"
            "print(' '.join(m for m in sys.modules if m.split('.')[0] in ('urwid', 'websockets')))\n")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True, env=env)
    assert r.stdout.strip() == ""
