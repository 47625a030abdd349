"""SQL decoders for stored event payloads, generated from the same schema table as the Python codec.

`decoder_sql()` returns one idempotent script (CREATE OR REPLACE FUNCTION only) that defines:

- `tart_event_data(event_type integer, ts_jce numeric, payload bytea) -> jsonb`: the JSON the
  Python codec gives for that event (`orjson.loads(escape_nul_json(Decoded.json()))`), or NULL
  when the type is unknown or the payload does not decode exactly (NOTES.md "Strictness").
- `tart_frame_data(frame bytea) -> jsonb`: the same for a whole frame (timestamp, type, payload).
- one `tart_ev_<type>(ts numeric, p bytea)` per event type, and the helpers of sqlgen_types.

Plain SQL and PL/pgSQL only, for PostgreSQL 13+ without extensions; needs a UTF8 database.

An event whose fields are all fixed-width becomes one SQL expression (a LANGUAGE sql function,
inlined into the dispatcher). The C-sized fields (Status `[u8; C]`, the assurance bitfield) do
not change that: their events are fixed-width apart from that one field, so its length is the
payload length minus the rest; decoding needs no core count. Events with strings, options or
sequences become straight-line PL/pgSQL that tracks the offset; only loops over `len++[T]` items
repeat. Everything that can fail is tested before it is read, so nothing raises: `get_byte` out
of range and `convert_from` of invalid UTF-8 would abort the caller's whole query.
"""

from __future__ import annotations

from .schema import EVENTS
from .sqlgen_types import (
    HELPERS_SQL,
    Json,
    Off,
    build,
    c_sized,
    c_sized_json,
    fixed_checks,
    fixed_json,
    key,
    leaves,
)
from .types import Composite, Option, Seq, String, Type

# A count above any payload length (a bytea holds at most 1 GB) stands in for larger naturals.
_NAT_CLAMP = 2**31 - 1


def _body(fields: list[tuple[str, Type]]) -> Composite:
    return Composite(fields, keyed=True)


def c_layout(event_type: int) -> tuple[int, Type] | None:
    """(bytes of the other fields, the C-sized field's type) for an event with one, else None."""
    body = _body(EVENTS[event_type][1])
    fixed_bytes = _c_layout(body)
    if fixed_bytes is None:
        return None
    return fixed_bytes, next(t for t in leaves(body) if c_sized(t))


def _c_layout(body: Composite) -> int | None:
    """Bytes of the fixed fields of an event with a C-sized field, else None.

    Asserts what makes the payload length enough to size that field: it is the only one, and
    every other field is fixed-width.
    """
    all_leaves = leaves(body)
    sized = [t for t in all_leaves if c_sized(t)]
    if not sized:
        return None
    assert len(sized) == 1, "more than one C-sized field"
    others = [t for t in all_leaves if not c_sized(t)]
    assert all(t.fixed for t in others), "C-sized field next to a variable-length field"
    return sum(t.size for t in others)


def _wrap(tag: str, body: Composite, values: list[Json]) -> str:
    """`("{"Tag":{"timestamp":ts,...}}")::jsonb`: one parse of the whole text."""
    out = Json.text("{" + key(tag) + "{" + key("timestamp")) + Json.sql("ts::text")
    for (k, _), v in zip(body.members, values, strict=True):
        out += Json.text("," + key(k)) + v
    return f"({(out + Json.text('}}')).render()})::jsonb"


def _guarded(conditions: list[str], value: str) -> str:
    # CASE, not AND, so that the length test is certain to come before any read.
    if not conditions:
        return value
    return f"CASE WHEN {' AND '.join(conditions)} THEN {value} END"


def _sql_event(et: int, tag: str, body: Composite, fixed_bytes: int, has_c: bool) -> str:
    """A fixed-width event (up to one C-sized field) as a single inlinable SQL expression."""
    checks: list[str] = []

    def walk(t: Type, off: Off) -> tuple[Json, Off]:
        if c_sized(t):
            assert not off.terms
            # Everything after this field sits at a fixed distance from the payload's end.
            return c_sized_json(t, off, f"length(p) - {fixed_bytes}"), Off(("length(p)",), off.k - fixed_bytes)
        if isinstance(t, Composite) and not t.fixed:
            values = []
            for _, m in t.members:
                v, off = walk(m, off)
                values.append(v)
            return build(t, values), off
        checks.extend(fixed_checks(t, off))
        return fixed_json(t, off), off + t.size

    values = []
    off = Off()
    for _, t in body.members:
        v, off = walk(t, off)
        values.append(v)
    length_ok = f"length(p) >= {fixed_bytes}" if has_c else f"length(p) = {fixed_bytes}"
    value = _guarded(checks, _wrap(tag, body, values))
    return (
        f"CREATE OR REPLACE FUNCTION tart_ev_{et}(ts numeric, p bytea) RETURNS jsonb\n"
        "LANGUAGE sql IMMUTABLE PARALLEL SAFE\n"
        f"AS $$ SELECT CASE WHEN {length_ok} THEN {value} END $$;\n"
    )


class _Pl:
    """Straight-line PL/pgSQL for one variable-length event.

    Offsets are never reassigned outside loops: each variable-length field starts a new offset
    variable, so fixed-width fields can be read late, all in the final expression. Inside an
    option or a loop body the values are built as soon as the scope ends.
    """

    def __init__(self) -> None:
        self.decls: dict[str, str] = {}
        self.lines: list[str] = []
        self.depth = 1
        self.checks: list[str] = []

    def var(self, stem: str, typ: str) -> str:
        name = f"{stem}{len(self.decls) + 1}"
        self.decls[name] = typ
        return name

    def emit(self, line: str) -> None:
        self.lines.append("    " * self.depth + line)

    def nat(self, off: Off) -> tuple[str, str]:
        """Read a natural number at `off`: (count variable, offset-after variable)."""
        c, o, at = self.var("c", "integer"), self.var("o", "integer"), off.sql()
        self.emit(f"{c} := CASE WHEN {at} < n THEN get_byte(p, {at}) ELSE -1 END;")
        self.emit(f"{o} := {at} + 1;")
        # Lengths of 128 or more (two or more bytes) are rare: a function call is fine there.
        self.emit(f"IF {c} >= 128 OR {c} < 0 THEN")
        self.emit(f"    IF {c} < 0 THEN RETURN NULL; END IF;")
        self.emit(f"    SELECT CASE WHEN r.val > {_NAT_CLAMP} THEN {_NAT_CLAMP} ELSE r.val END, r.next")
        self.emit(f"        INTO {c}, {o} FROM tart_nat(p, {at}) AS r;")
        self.emit(f"    IF {c} IS NULL THEN RETURN NULL; END IF;")
        self.emit("END IF;")
        return c, o

    def dec(self, t: Type, off: Off) -> tuple[Json, Off]:
        """Emit what decoding `t` at `off` needs; return its JSON text and the next offset."""
        if t.fixed:
            self.checks += fixed_checks(t, off)
            return fixed_json(t, off), off + t.size
        if isinstance(t, Composite):
            values = []
            for _, m in t.members:
                v, off = self.dec(m, off)
                values.append(v)
            return build(t, values), off
        if isinstance(t, String):
            c, o = self.nat(off)
            s = self.var("s", "text")
            self.emit(f"{s} := CASE WHEN {c} <= {t.bound} AND {c} <= n - {o}"
                      f" THEN to_json(tart_utf8(substring(p FROM {o} + 1 FOR {c})))::text END;")
            self.emit(f"IF {s} IS NULL THEN RETURN NULL; END IF;")
            return Json.sql(s), Off((o, c))
        if isinstance(t, Option):
            return self._option(t, off)
        if isinstance(t, Seq):
            return self._seq(t, off)
        raise TypeError(f"no SQL decoder for {t.label}")

    def _close(self, value: Json, end: Off, bounded: bool) -> str:
        """End of a scope: test bounds and pending checks, then return `value` as SQL."""
        if not bounded:
            self.emit(f"IF {end.sql()} > n THEN RETURN NULL; END IF;")
        if self.checks:
            self.emit(f"IF NOT ({' AND '.join(self.checks)}) THEN RETURN NULL; END IF;")
        self.checks = []
        return value.render()

    def _option(self, t: Option, off: Off) -> tuple[Json, Off]:
        b, v, o, at = self.var("b", "integer"), self.var("v", "text"), self.var("o", "integer"), off.sql()
        self.emit(f"{b} := CASE WHEN {at} < n THEN get_byte(p, {at}) ELSE -1 END;")
        self.emit(f"IF {b} = 0 THEN")
        self.emit(f"    {v} := 'null'; {o} := {at} + 1;")
        self.emit(f"ELSIF {b} = 1 THEN")
        self.depth += 1
        outer, self.checks = self.checks, []
        e, end = self.dec(t.inner, off + 1)
        self.emit(f"{v} := {self._close(e, end, False)}; {o} := {end.sql()};")
        self.checks = outer
        self.depth -= 1
        self.emit("ELSE RETURN NULL; END IF;")
        return Json.sql(v), Off((o,))

    def _seq(self, t: Seq, off: Off) -> tuple[Json, Off]:
        c, o = self.nat(off)
        item = t.inner
        if item.fixed:
            self.emit(f"IF {c} > (n - {o}) / {item.size} THEN RETURN NULL; END IF;")
        else:
            self.emit(f"IF {c} > n - {o} THEN RETURN NULL; END IF;")  # every item takes a byte or more
        a, q, v = self.var("a", "text[]"), self.var("q", "integer"), self.var("v", "text")
        self.emit(f"{a} := '{{}}'; {q} := {o};")
        self.emit(f"FOR i IN 1..{c} LOOP")
        self.depth += 1
        outer, self.checks = self.checks, []
        e, end = self.dec(item, Off((q,)))
        self.emit(f"{a} := array_append({a}, {self._close(e, end, item.fixed)}); {q} := {end.sql()};")
        self.checks = outer
        self.depth -= 1
        self.emit("END LOOP;")
        self.emit(f"{v} := '[' || array_to_string({a}, ',') || ']';")
        return Json.sql(v), Off((q,))


def _pl_event(et: int, tag: str, body: Composite) -> str:
    g = _Pl()
    values = []
    off = Off()
    for _, t in body.members:
        v, off = g.dec(t, off)
        values.append(v)
    g.emit(f"IF {off.sql()} <> n THEN RETURN NULL; END IF;")
    g.emit(f"RETURN {_guarded(g.checks, _wrap(tag, body, values))};")
    decls = "".join(f"    {name} {typ};\n" for name, typ in g.decls.items())
    return (
        f"CREATE OR REPLACE FUNCTION tart_ev_{et}(ts numeric, p bytea) RETURNS jsonb\n"
        "LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE\n"
        "AS $$\nDECLARE\n    n integer := length(p);\n"
        f"{decls}BEGIN\n" + "\n".join(g.lines) + "\nEND $$;\n"
    )


def event_function_sql(et: int) -> str:
    """The CREATE statement of `tart_ev_<et>`."""
    tag, fields = EVENTS[et]
    body = _body(fields)
    fixed_bytes = _c_layout(body)
    if fixed_bytes is not None:
        return _sql_event(et, tag, body, fixed_bytes, True)
    if body.fixed:
        return _sql_event(et, tag, body, body.size, False)
    return _pl_event(et, tag, body)


def _dispatch(types: list[int]) -> str:
    """A balanced tree of CASEs: a handful of comparisons per row instead of up to 115."""
    if len(types) <= 4:
        whens = " ".join(f"WHEN {et} THEN tart_ev_{et}(ts_jce, payload)" for et in types)
        return f"CASE event_type {whens} END"
    mid = len(types) // 2
    return (f"CASE WHEN event_type < {types[mid]} THEN {_dispatch(types[:mid])}"
            f"\n        ELSE {_dispatch(types[mid:])} END")


def decoder_sql() -> str:
    """The whole SQL script; deterministic, so its hash can name a migration."""
    parts = ["-- Generated by tart.engine.codec.sqlgen from the codec's schema table. Do not edit.\n",
             HELPERS_SQL]
    parts += [event_function_sql(et) for et in sorted(EVENTS)]
    # PL/pgSQL, so that the dispatch expression with every inlined event body is planned once
    # per session rather than in every query that calls it. IMMUTABLE (for expression indexes):
    # the STABLE parts are convert_from and to_json(text), stable only through the database
    # encoding. A timestamp outside the u64 range (NaN included) would not be valid JSON text.
    parts.append(
        "CREATE OR REPLACE FUNCTION tart_event_data(event_type integer, ts_jce numeric, payload bytea)\n"
        "RETURNS jsonb LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE\n"
        "AS $$\nBEGIN\n"
        f"    IF NOT (ts_jce >= 0 AND ts_jce <= {2**64 - 1}) THEN RETURN NULL; END IF;\n"
        f"    RETURN {_dispatch(sorted(EVENTS))};\nEND $$;\n"
    )
    parts.append(
        "CREATE OR REPLACE FUNCTION tart_frame_data(frame bytea) RETURNS jsonb\n"
        "LANGUAGE sql IMMUTABLE PARALLEL SAFE\n"
        "AS $$ SELECT CASE WHEN length(frame) >= 9\n"
        "             THEN tart_event_data(get_byte(frame, 8), tart_u64(frame, 0), substring(frame FROM 10)) END $$;\n"
    )
    return "\n".join(parts)
