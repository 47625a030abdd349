"""A fresh machine: the checkout in a directory other users cannot enter (a clone in /root, 0700),
and the suite's root-only paths run from there, for real: anything they run as another user
(postgres, the embedded cluster's user) must be copied where that user can read it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Tests that run something as another user than root.
ROOT_ONLY = [
    "tests/test_ops_systemd.py::test_postgresql_setup_helper_creates_a_working_cluster",
    "tests/test_pgcluster.py::test_first_start_as_configured_creates_cluster_socket_only",
    "tests/test_pgcluster.py::test_root_fails_clearly_when_run_user_cannot_enter_data_dir",
]

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="root-only paths: run as root (CI does)"),
    pytest.mark.skipif(shutil.which("runuser") is None, reason="runuser missing"),
]


def _copy_checkout(dest: Path) -> None:
    """The working tree as git sees it (tracked and new files), as a clone would have it."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, check=True, timeout=60).stdout.split(b"\0")
    for rel in filter(None, files):
        src = REPO / os.fsdecode(rel)
        if src.is_file():
            target = dest / os.fsdecode(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def test_root_only_tests_pass_from_a_0700_checkout() -> None:
    home = Path(tempfile.mkdtemp(prefix="tart-home-"))  # like /root: mode 0700
    home.chmod(0o700)
    try:
        clone = home / "tart"
        _copy_checkout(clone)
        # The postgres user really cannot enter it: otherwise this test would prove nothing.
        probe = subprocess.run(["runuser", "-u", "nobody", "--", "test", "-x", str(clone)], timeout=30)
        assert probe.returncode != 0
        env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *ROOT_ONLY],
                           cwd=clone, capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
        assert "3 passed" in r.stdout, r.stdout[-3000:]
    finally:
        shutil.rmtree(home, ignore_errors=True)
