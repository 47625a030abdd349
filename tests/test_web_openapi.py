"""/api/openapi.json stays true: every documented route answers as documented, every route is documented."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from test_web_support import (  # noqa: F401 - module_dsn is a fixture
    TestRing,
    WebServer,
    insert_events,
    insert_node,
    module_dsn,
    running_server,
)

from tart.engine.config import Settings
from tart.web.app import create_app
from tart.web.openapi import EXAMPLE_NODE_ID


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, module_dsn: str) -> Iterator[WebServer]:  # noqa: F811
    ring = TestRing(0)
    try:
        insert_node(module_dsn, EXAMPLE_NODE_ID)
        stored = [ring.event(EXAMPLE_NODE_ID, 10 + i % 3, ts=1_000_000 * i) for i in range(20)]
        ring.write(stored)
        insert_events(module_dsn, stored)
        ring.commit_all()
        ring.write([ring.event(EXAMPLE_NODE_ID, 11, ts=99_000_000)])  # one not yet stored
        with running_server(tmp_path_factory.mktemp("openapi"), module_dsn, [ring.name], workers=1) as srv:
            yield srv
    finally:
        ring.close()


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = doc
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _check(doc: dict[str, Any], schema: dict[str, Any], value: Any, where: str) -> None:
    """The subset of JSON Schema the document uses: type, required, properties, items, enum, pattern."""
    schema = _resolve(doc, schema)
    types = schema.get("type")
    if types is not None:
        allowed = types if isinstance(types, list) else [types]
        py = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
              "integer": int, "number": (int, float)}
        assert any(isinstance(value, py[t]) and not (t in ("integer", "number") and isinstance(value, bool))
                   for t in allowed), f"{where}: {value!r} is not {allowed}"
    if "enum" in schema:
        assert value in schema["enum"], where
    if isinstance(value, str) and "pattern" in schema:
        assert re.search(schema["pattern"], value), f"{where}: {value!r} !~ {schema['pattern']}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing {key}"
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                _check(doc, sub, value[key], f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(doc, schema["items"], item, f"{where}[{i}]")


def _url(path: str, params: list[dict[str, Any]], overrides: dict[str, str] | None = None) -> tuple[str, dict]:
    query = {}
    for p in params:
        value = (overrides or {}).get(p["name"], p.get("example"))
        if p["in"] == "path":
            path = path.replace("{" + p["name"] + "}", str(value))
        elif value is not None:
            query[p["name"]] = value
    return path, query


def _assert_documented(doc: dict[str, Any], op: dict[str, Any], resp: requests.Response, where: str) -> None:
    documented = op["responses"].get(str(resp.status_code))
    assert documented is not None, f"{where}: undocumented status {resp.status_code}: {resp.text[:200]}"
    content = documented.get("content", {})
    if "application/json" in content:
        assert resp.headers["content-type"].startswith("application/json"), where
        _check(doc, content["application/json"]["schema"], resp.json(), where)
    elif "text/plain" in content:
        assert resp.headers["content-type"].startswith("text/plain"), where


def test_every_documented_route_answers_as_documented(server: WebServer) -> None:
    (server.data_dir / "writer.health").write_text('{"pid": 1, "lag_seconds": 0, "pending": 0, "pg_ok": true}')
    doc = server.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    checked = 0
    for path, item in doc["paths"].items():
        op = item["get"]
        params = op.get("parameters", [])
        # With every example parameter, and with none of the optional ones.
        for use_all in (True, False):
            chosen = params if use_all else [p for p in params if p.get("required")]
            url, query = _url(path, chosen)
            resp = server.get(url, params=query)
            _assert_documented(doc, op, resp, f"GET {path} {query}")
            if path != "/api/ws":
                assert resp.status_code in (200, 503), f"{path}: {resp.status_code} {resp.text[:200]}"
            checked += 1
        if path.endswith("/events"):
            assert server.get(_url(path, params)[0], params=_url(path, params)[1]).json()["events"]
        # Each documented error status can be provoked, and its body matches the Error schema.
        for status in op["responses"]:
            if status == "400" and any(p["in"] == "path" for p in params):
                url, query = _url(path, params, {"node_id": "not-hex"})
            elif status == "400" and params:
                url, query = _url(path, params, {"limit": "0"})
            elif status == "404":
                url, query = _url(path, params, {"node_id": "0f" * 32})
            else:
                continue
            resp = server.get(url, params=query)
            assert resp.status_code == int(status), f"{path} expected {status}, got {resp.status_code}"
            _assert_documented(doc, op, resp, f"GET {path} -> {status}")
            checked += 1
    assert checked >= 20


def _routes(app: Any) -> set[str]:
    out: set[str] = set()

    def walk(nodes: list) -> None:
        for n in nodes:
            if n.resource is not None:
                out.add(n.uri_template)
            walk(n.children)

    walk(app._router._roots)
    return out


def test_every_route_is_documented() -> None:
    from tart.web.openapi import DOCUMENT

    app = create_app(Settings(), "host=/nonexistent", [])
    assert _routes(app) == set(DOCUMENT["paths"])
