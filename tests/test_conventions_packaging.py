"""Packaging: extras per kind of user (a real console-only install), constraints that pin every
dependency, one version shown by every command."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

import tart

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _name(req: str) -> str:
    return re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, ver = line.partition("==")
            pins[name.lower().replace("_", "-")] = ver
    return pins


@pytest.mark.parametrize("cmd", ["tart-backend", "tart-dash", "tart-loadgen", "tart-export"])
def test_every_command_shows_the_package_version(cmd: str) -> None:
    r = subprocess.run([str(BIN / cmd), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{cmd} {tart.__version__}"
    assert tart.__version__ == version("tart-backend") == PYPROJECT["project"]["version"]


def test_metadata_urls_and_classifiers() -> None:
    project = PYPROJECT["project"]
    assert {"Homepage", "Source", "Issues", "Documentation"} <= set(project["urls"])
    assert any(c.startswith("Programming Language :: Python :: 3.11") for c in project["classifiers"])
    extras = project["optional-dependencies"]
    server = {_name(r) for r in extras["server"]}
    console = {_name(r) for r in extras["console"]}
    assert {"psycopg", "gunicorn", "uvloop"} <= server and not {"psycopg", "gunicorn", "uvloop"} & console
    assert "urwid" in console and "urwid" not in server
    assert not {_name(r) for r in project["dependencies"]} & (server | console) - {"orjson"}


def test_constraints_pin_every_dependency_and_this_venv_uses_them() -> None:
    pins = _constraints()
    project = PYPROJECT["project"]
    reqs = list(project["dependencies"]) + [r for rs in project["optional-dependencies"].values() for r in rs]
    for req in reqs:
        name = _name(req)
        if name == "tart-backend":
            continue
        assert name in pins, f"{name} is not in constraints.txt: run bash scripts/refresh-constraints.sh"
    # scripts/bootstrap.sh installs with -c constraints.txt: what is installed is what is pinned.
    for name, pinned in pins.items():
        try:
            got = version(name)
        except PackageNotFoundError:
            continue
        assert got == pinned, f"{name} {got} installed, constraints.txt pins {pinned}"


def test_console_only_install_has_no_server_dependencies(tmp_path: Path) -> None:
    """A real venv with `pip install '.[console]'`: tart-dash runs; psycopg, gunicorn, uvloop and
    falcon are absent."""
    src = tmp_path / "src"
    src.mkdir()
    # Build from a copy: setuptools leaves build/ and *.egg-info in whatever tree it builds in.
    subprocess.run(f"tar --exclude=__pycache__ -cf - pyproject.toml README.md constraints.txt tart engine web "
                   f"dash sql | tar -xf - -C {src}", shell=True, cwd=REPO, check=True, timeout=60)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                        "-c", str(src / "constraints.txt"), f"{src}[console]"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    listed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=freeze", "--disable-pip-version-check"],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    installed = {_name(line) for line in listed.splitlines()}
    assert "urwid" in installed and "tart-backend" in installed
    assert not {"psycopg", "psycopg-binary", "gunicorn", "uvloop", "falcon"} & installed, installed
    r = subprocess.run([str(venv / "bin" / "tart-dash"), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"tart-dash {tart.__version__}", r.stderr
