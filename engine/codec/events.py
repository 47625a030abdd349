"""decode_event / encode_event, compiled once from the schema table.

Each discriminator gets one generated function (see types.py): straight-line code, one
struct.unpack_from per run of fixed-width fields, the JSON-ready dict built as a literal in
declaration order. Errors inside it become DecodeError naming the event and the field.
"""

from __future__ import annotations

import struct
from operator import itemgetter
from typing import Any

import orjson

from .errors import Bad, DecodeError
from .natural import nat
from .schema import EVENTS
from .types import HELPERS, Composite, CoreBits, CoreCounts, Gen, RunInfo, Type

EVENT_NAMES: dict[int, str] = {et: tag for et, (tag, _) in EVENTS.items()}
EVENT_TYPES: dict[str, int] = {tag: et for et, tag in EVENT_NAMES.items()}

_HEADER = struct.Struct("<QB")
_BODIES: dict[int, Composite] = {et: Composite(fields, keyed=True) for et, (_, fields) in EVENTS.items()}
# `{"Tag":` is constant per type, so json() concatenates instead of building a wrapper dict.
_JSON_PREFIX: dict[int, bytes] = {et: b'{"' + tag.encode() + b'":' for et, tag in EVENT_NAMES.items()}


def _fail(event_type: int, field: Any, off: int, buf: Any, exc: BaseException) -> DecodeError:
    tag = EVENT_NAMES.get(event_type)
    if isinstance(exc, Bad):
        return DecodeError(event_type, exc.field or _field_name(field, off, buf), exc.reason, tag)
    name = _field_name(field, off, buf)
    if isinstance(exc, (struct.error, IndexError)):
        reason = f"truncated: frame ends at byte {len(buf)} (field starts at {off})"
    elif isinstance(exc, UnicodeDecodeError):
        reason = f"invalid UTF-8 ({exc.reason} at byte {exc.start})"
    else:
        reason = f"internal decoder error {type(exc).__name__}: {exc}"
    return DecodeError(event_type, name, reason, tag)


def _field_name(field: Any, off: int, buf: Any) -> str:
    if isinstance(field, RunInfo):
        return field.locate(len(buf) - off)
    return str(field)


def _compile(event_type: int, body: Composite) -> Any:
    ns: dict[str, Any] = dict(HELPERS)
    ns.update(_nat=nat, _fail=_fail)
    g = Gen(ns)
    g.depth = 2
    exprs = body.member_exprs(g, "")
    g.emit("if off != len(buf): raise Bad(f'{len(buf) - off} trailing bytes after the last field', '(end)')")
    items = ", ".join(f"{k!r}: {e}" for (k, _), e in zip(body.members, exprs, strict=True))
    g.emit(f"return {{'timestamp': ts, {items}}}")
    src = "\n".join(
        [
            "def decode(buf, off, C, ts):",
            "    f = '(start)'",
            "    try:",
            *g.lines,
            "    except Exception as exc:",
            f"        raise _fail({event_type}, f, off, buf, exc) from None",
        ]
    )
    exec(compile(src, f"<jip3 event {event_type} {EVENT_NAMES[event_type]}>", "exec"), ns)
    fn = ns["decode"]
    fn.source = src
    return fn


_DECODERS = {et: _compile(et, body) for et, body in _BODIES.items()}


class Decoded(tuple):
    """One decoded event, a (timestamp, event_type, value) tuple with named fields.

    `value` is the inner JSON object ("timestamp" first, declaration order). A tuple subclass
    because decode_event builds one per frame and tuple construction is the cheapest there is.
    """

    __slots__ = ()

    def __new__(cls, timestamp: int, event_type: int, value: dict) -> Decoded:
        return _tuple_new(cls, (timestamp, event_type, value))

    timestamp = property(itemgetter(0), doc="raw JIP-3 timestamp (µs since the JAM Common Era)")
    event_type = property(itemgetter(1), doc="discriminator")
    value = property(itemgetter(2), doc="inner JSON-ready dict")

    @property
    def tag(self) -> str:
        return EVENT_NAMES[self[1]]

    def json(self) -> bytes:
        """`{"Tag": {...}}` as compact JSON bytes."""
        return _JSON_PREFIX[self[1]] + orjson.dumps(self[2]) + b"}"

    def __repr__(self) -> str:
        return f"Decoded(timestamp={self[0]}, event_type={self[1]}, value={self[2]!r})"


_tuple_new = tuple.__new__


def decode_event(buf: bytes, core_count: int) -> Decoded:
    """Decode one frame's content: u64 timestamp, u8 discriminator, the event's fields."""
    try:
        ts, et = _HEADER.unpack_from(buf, 0)
    except struct.error:
        raise DecodeError(None, "timestamp" if len(buf) < 8 else "discriminator",
                          f"frame of {len(buf)} bytes too short for timestamp and discriminator") from None
    except Exception as exc:  # not a bytes-like object at all
        raise DecodeError(None, "(frame)", f"cannot decode {type(buf).__name__}: {exc}") from None
    fn = _DECODERS.get(et)
    if fn is None:
        raise DecodeError(et, "discriminator", f"unknown event type {et}")
    return _tuple_new(Decoded, (ts, et, fn(buf, 9, core_count, ts)))


def _flatten(t: Type) -> list[Type]:
    members = getattr(t, "members", None)
    if members is None:
        return [t]
    return [leaf for _, m in members for leaf in _flatten(m)]


def _core_sized(body: Composite) -> tuple[int, int] | None:
    """(bytes of the other fields, bytes per core unit: 1 for [u8; C], 8 for a bitfield's C per
    byte) for an event with a C-sized field, else None. Such events are fixed-width apart from
    that one field, so a stored payload's length alone gives the field's size."""
    leaves = _flatten(body)
    sized = [t for t in leaves if isinstance(t, (CoreCounts, CoreBits))]
    if not sized:
        return None
    assert len(sized) == 1 and all(t.fixed for t in leaves if t is not sized[0]), "C-sized event not fixed-width"
    return sum(t.size for t in leaves if t is not sized[0]), 8 if isinstance(sized[0], CoreBits) else 1


_CORE_SIZED = {et: cs for et, body in _BODIES.items() if (cs := _core_sized(body)) is not None}


def decode_payload(event_type: int, timestamp: int, payload: bytes) -> Decoded:
    """Decode a stored payload (the frame after timestamp and discriminator) without the node's
    core count: the only events that need C are fixed-width apart from their C-sized field, so C
    follows from the payload's length. DecodeError as decode_event."""
    fn = _DECODERS.get(event_type)
    if fn is None:
        raise DecodeError(event_type, "discriminator", f"unknown event type {event_type}")
    cs = _CORE_SIZED.get(event_type)
    c = 0 if cs is None else max(0, len(payload) - cs[0]) * cs[1]
    return _tuple_new(Decoded, (timestamp, event_type, fn(payload, 0, c, timestamp)))


def payload_json(event_type: int, timestamp: int, payload: bytes) -> bytes:
    """`{"Tag": {...}}` of a stored payload, as the acceptor rendered it."""
    return _JSON_PREFIX[event_type] + orjson.dumps(decode_payload(event_type, timestamp, payload)[2]) + b"}"


def encode_event(event_type: int, value: dict, core_count: int) -> bytes:
    """Exact inverse of decode_event; ValueError when `value` does not fit the event's schema."""
    body = _BODIES.get(event_type)
    if body is None:
        raise ValueError(f"unknown event type {event_type}")
    if not isinstance(value, dict):
        raise ValueError(f"event value must be a dict, got {type(value).__name__}")
    expected = ["timestamp"] + [k for k, _ in body.members]
    if sorted(value) != sorted(expected):
        raise ValueError(f"event {event_type} ({EVENT_NAMES[event_type]}) needs keys {expected}, got {list(value)}")
    ts = value["timestamp"]
    out = bytearray()
    try:
        out += _HEADER.pack(ts, event_type)
        for key, t in body.members:
            t.enc(value[key], out, core_count)
    except (struct.error, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        raise ValueError(f"event {event_type} ({EVENT_NAMES[event_type]}): {exc}") from None
    return bytes(out)


def event_json(event_type: int, value: dict) -> bytes:
    """orjson of `{Tag: value}`."""
    return _JSON_PREFIX[event_type] + orjson.dumps(value) + b"}"


def event_schema(event_type: int) -> list[tuple[str, Type]]:
    """The (key, type) list of an event, for tools that walk the schema (tests, generators)."""
    return list(_BODIES[event_type].members)
