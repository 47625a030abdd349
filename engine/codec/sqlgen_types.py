"""SQL fragments for the codec's wire types, used by sqlgen.py.

A fixed-width type becomes SQL that reads the payload `p` at an offset and yields the value's JSON
text exactly as the Python codec renders it, plus the conditions its bytes must meet (bool 0/1,
enum in range). Offsets are `Off`
values so that the generated code stays readable: a constant, or variables plus a constant.

HELPERS_SQL holds the shared SQL functions. tart_utf8 is STABLE because `convert_from` is:
PostgreSQL inlines a SQL function only when its declared volatility is no stricter than its
body's, and inlining is what makes these small functions cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

from .types import BoolT, Bytes, Composite, CoreBits, CoreCounts, Enum, ImportSpecT, Int, PeerAddressT, Type

_KEY_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def lit(s: str) -> str:
    """A standard SQL string literal (no backslash escapes, so standard_conforming_strings is moot)."""
    return "'" + s.replace("'", "''") + "'"


@dataclass(frozen=True)
class Off:
    """A byte offset into the payload: the sum of SQL terms (variables) and a constant."""

    terms: tuple[str, ...] = ()
    k: int = 0

    def __add__(self, d: int) -> Off:
        return Off(self.terms, self.k + d)

    def sql(self) -> str:
        if not self.terms:
            return str(self.k)
        parts = " + ".join(self.terms)
        if self.k:
            parts += f" + {self.k}" if self.k > 0 else f" - {-self.k}"
        return parts if len(self.terms) == 1 and not self.k else f"({parts})"


class Json:
    """JSON text being built: constant pieces and SQL text expressions, joined with `||`.

    Text and one jsonb cast at the end, rather than nested jsonb_build_object calls: those look
    up every argument's type on every call and copy each nested object into its parent, which
    made decoding about twice as slow.
    """

    __slots__ = ("parts",)

    def __init__(self, parts: list[tuple[bool, str]] | None = None) -> None:
        self.parts = parts or []  # (is constant text, text or SQL expression)

    @staticmethod
    def text(s: str) -> Json:
        return Json([(True, s)])

    @staticmethod
    def sql(e: str) -> Json:
        return Json([(False, e)])

    def __add__(self, other: Json) -> Json:
        return Json(self.parts + other.parts)

    def render(self) -> str:
        merged: list[tuple[bool, str]] = []
        for const, s in self.parts:
            if const and merged and merged[-1][0]:
                merged[-1] = (True, merged[-1][1] + s)
            else:
                merged.append((const, s))
        return " || ".join(lit(s) if const else s for const, s in merged)


def key(name: str) -> str:
    # Every key in the schema is an identifier, so none needs JSON escaping.
    assert name and set(name) <= _KEY_CHARS, f"key {name!r} would need escaping"
    return '"' + name + '":'


def build(t: Composite, values: list[Json]) -> Json:
    """The JSON object (Struct) or array (Tuple) of already-built member values."""
    out = Json.text("{" if t.keyed else "[")
    for i, ((k, _), v) in enumerate(zip(t.members, values, strict=True)):
        out += Json.text(("," if i else "") + (key(k) if t.keyed else "")) + v
    return out + Json.text("}" if t.keyed else "]")


def c_sized(t: Type) -> bool:
    return isinstance(t, (CoreCounts, CoreBits))


def leaves(t: Type) -> list[Type]:
    if isinstance(t, Composite):
        return [leaf for _, m in t.members for leaf in leaves(m)]
    return [t]


def _hex(o: str, n: str) -> Json:
    return Json.text('"0x') + Json.sql(f"encode(substring(p FROM {o} + 1 FOR {n}), 'hex')") + Json.text('"')


def fixed_json(t: Type, off: Off) -> Json:
    o = off.sql()
    if isinstance(t, Int):
        if t.size == 8:
            return Json.sql(f"tart_u64_text(p, {o})")
        return Json.sql(f"get_byte(p, {o})::text" if t.size == 1 else f"tart_{t.label}(p, {o})::text")
    if isinstance(t, BoolT):
        return Json.sql(f"CASE get_byte(p, {o}) WHEN 1 THEN 'true' ELSE 'false' END")
    if isinstance(t, Enum):
        return Json.sql(f"(ARRAY[{', '.join(lit(chr(34) + n + chr(34)) for n in t.names)}])[get_byte(p, {o}) + 1]")
    if isinstance(t, Bytes):
        return _hex(o, str(t.size))
    if isinstance(t, PeerAddressT):
        return Json.sql(f"tart_peer_address_json(p, {o})")
    if isinstance(t, ImportSpecT):
        return Json.sql(f"tart_import_spec_json(p, {o})")
    if isinstance(t, Composite) and t.fixed:
        values = []
        for _, m in t.members:
            values.append(fixed_json(m, off))
            off += m.size
        return build(t, values)
    raise TypeError(f"no fixed-width SQL for {t.label}")


def fixed_checks(t: Type, off: Off) -> list[str]:
    """Conditions on the bytes (all in bounds by then) that the Python decoder would reject."""
    if isinstance(t, BoolT):
        return [f"get_byte(p, {off.sql()}) < 2"]
    if isinstance(t, Enum):
        return [f"get_byte(p, {off.sql()}) < {len(t.names)}"]
    if isinstance(t, Composite):
        out = []
        for _, m in t.members:
            out += fixed_checks(m, off)
            off += m.size
        return out
    return []


def c_sized_json(t: Type, off: Off, length: str) -> Json:
    """`[u8; C]` or the bitfield, `length` bytes long (the payload length minus the fixed fields)."""
    if isinstance(t, CoreCounts):
        return Json.text("[") + Json.sql(f"tart_u8_csv(p, {off.sql()}, {length})") + Json.text("]")
    assert isinstance(t, CoreBits)
    return _hex(off.sql(), length)


# Well-formed UTF-8 (RFC 3629: no overlongs, surrogates or code points above U+10FFFF, the same
# rules as Python's strict decoder), matched on the LATIN1 reading of the bytes, where each
# character stands for one byte. NUL is excluded: the caller splits on it first.
_UTF8_RE = (
    r"^(?:[\u0001-\u007f]|[\u00c2-\u00df][\u0080-\u00bf]|\u00e0[\u00a0-\u00bf][\u0080-\u00bf]"
    r"|[\u00e1-\u00ec\u00ee\u00ef][\u0080-\u00bf]{2}|\u00ed[\u0080-\u009f][\u0080-\u00bf]"
    r"|\u00f0[\u0090-\u00bf][\u0080-\u00bf]{2}|[\u00f1-\u00f3][\u0080-\u00bf]{3}"
    r"|\u00f4[\u0080-\u008f][\u0080-\u00bf]{2})*$"
)
UTF8_RE_SQL = "E" + lit(_UTF8_RE.replace("\\", "\\\\"))

_SQL_IMM = "LANGUAGE sql IMMUTABLE PARALLEL SAFE"
_SQL_STABLE = "LANGUAGE sql STABLE PARALLEL SAFE"
_PL_IMM = "LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE"

HELPERS_SQL = f"""
CREATE OR REPLACE FUNCTION tart_u16(p bytea, o integer) RETURNS integer {_SQL_IMM}
AS $$ SELECT get_byte(p, o) | (get_byte(p, o + 1) << 8) $$;

CREATE OR REPLACE FUNCTION tart_u32(p bytea, o integer) RETURNS bigint {_SQL_IMM}
AS $$ SELECT (get_byte(p, o) | (get_byte(p, o + 1) << 8) | (get_byte(p, o + 2) << 16))::bigint
             | (get_byte(p, o + 3)::bigint << 24) $$;

-- numeric: a u64 may exceed bigint.
CREATE OR REPLACE FUNCTION tart_u64(p bytea, o integer) RETURNS numeric {_SQL_IMM}
AS $$ SELECT tart_u32(p, o) + tart_u32(p, o + 4) * 4294967296::numeric $$;

-- The same as text, through bigint (cheaper than numeric) below 2^63.
CREATE OR REPLACE FUNCTION tart_u64_text(p bytea, o integer) RETURNS text {_SQL_IMM}
AS $$ SELECT CASE WHEN get_byte(p, o + 7) < 128 THEN ((tart_u32(p, o + 4) << 32) | tart_u32(p, o))::text
             ELSE (tart_u32(p, o) + tart_u32(p, o + 4) * 4294967296::numeric)::text END $$;

-- The n bytes at o as comma-separated decimal numbers.
CREATE OR REPLACE FUNCTION tart_u8_csv(p bytea, o integer, n integer) RETURNS text {_SQL_IMM}
AS $$ SELECT array_to_string(ARRAY(SELECT get_byte(p, i) FROM generate_series(o, o + n - 1) AS i), ',') $$;

-- Gray Paper natural number at o: (value, offset after it), both NULL when truncated or not in
-- its shortest form (the Python codec rejects both).
CREATE OR REPLACE FUNCTION tart_nat(p bytea, o integer, OUT val numeric, OUT next integer) {_PL_IMM}
AS $$
DECLARE
    b integer;
    l integer;
    v bigint;
BEGIN
    IF o < 0 OR o >= length(p) THEN RETURN; END IF;
    b := get_byte(p, o);
    IF b < 128 THEN val := b; next := o + 1; RETURN; END IF;
    l := CASE WHEN b < 192 THEN 1 WHEN b < 224 THEN 2 WHEN b < 240 THEN 3 WHEN b < 248 THEN 4
              WHEN b < 252 THEN 5 WHEN b < 254 THEN 6 WHEN b < 255 THEN 7 ELSE 8 END;
    IF o + 1 + l > length(p) THEN RETURN; END IF;
    IF l = 8 THEN
        val := tart_u64(p, o + 1);
    ELSE
        v := b & ((1 << (7 - l)) - 1);
        FOR k IN REVERSE l - 1..0 LOOP
            v := (v << 8) | get_byte(p, o + 1 + k);
        END LOOP;
        val := v;
    END IF;
    IF val < (1::bigint << (7 * l)) THEN val := NULL; RETURN; END IF;
    next := o + 1 + l;
END $$;

-- Python's ipaddress `compressed` form: the longest run (the first of equals) of two or more
-- zero hextets becomes "::".
CREATE OR REPLACE FUNCTION tart_ipv6_compressed(ip bytea) RETURNS text {_PL_IMM}
AS $$
DECLARE
    h text[];
    m text := '';
    s integer;
BEGIN
    FOR i IN 0..7 LOOP
        h[i + 1] := to_hex((get_byte(ip, 2 * i) << 8) | get_byte(ip, 2 * i + 1));
        m := m || CASE WHEN h[i + 1] = '0' THEN 'z' ELSE 'n' END;
    END LOOP;
    FOR l IN REVERSE 8..2 LOOP
        s := position(repeat('z', l) IN m);
        IF s > 0 THEN
            RETURN array_to_string(h[1:s - 1], ':') || '::' || array_to_string(h[s + l:8], ':');
        END IF;
    END LOOP;
    RETURN array_to_string(h, ':');
END $$;

-- IPv4-mapped addresses in dotted form, as tart.engine.codec.types.host_text.
CREATE OR REPLACE FUNCTION tart_ipv6_host(ip bytea) RETURNS text {_SQL_IMM}
AS $$ SELECT CASE WHEN substring(ip FROM 1 FOR 12) = decode('00000000000000000000ffff', 'hex')
             THEN '::ffff:' || get_byte(ip, 12)::text || '.' || get_byte(ip, 13)::text || '.'
                  || get_byte(ip, 14)::text || '.' || get_byte(ip, 15)::text
             ELSE tart_ipv6_compressed(ip) END $$;

-- JSON text of a Peer Address; the host text never needs escaping.
CREATE OR REPLACE FUNCTION tart_peer_address_json(p bytea, o integer) RETURNS text {_SQL_IMM}
AS $$ SELECT '{{"ipv6":"0x' || encode(substring(p FROM o + 1 FOR 16), 'hex') || '","port":'
             || tart_u16(p, o + 16)::text || ',"address":"[' || tart_ipv6_host(substring(p FROM o + 1 FOR 16))
             || ']:' || tart_u16(p, o + 16)::text || '"}}' $$;

-- JSON text of an Import Spec: bit 15 of the index picks the root kind and is not part of the index.
CREATE OR REPLACE FUNCTION tart_import_spec_json(p bytea, o integer) RETURNS text {_SQL_IMM}
AS $$ SELECT '{{"root_identifier":{{"'
             || CASE WHEN get_byte(p, o + 33) >= 128 THEN 'WorkPackageHash' ELSE 'SegmentsRoot' END
             || '":"0x' || encode(substring(p FROM o + 1 FOR 32), 'hex') || '"}},"export_index":'
             || (tart_u16(p, o + 32) & 32767)::text || '}}' $$;

-- Text with U+0000, which text and jsonb cannot hold, written as the 6 characters \\u0000
-- (tart.engine.copyfmt.escape_nul_json); NULL when a piece is not valid UTF-8.
CREATE OR REPLACE FUNCTION tart_utf8_nul(s bytea) RETURNS text {_PL_IMM}
AS $$
DECLARE
    r text := '';
    piece text;
    i integer;
BEGIN
    LOOP
        i := position(decode('00', 'hex') IN s);
        EXIT WHEN i = 0;
        piece := tart_utf8(substring(s FROM 1 FOR i - 1));
        IF piece IS NULL THEN RETURN NULL; END IF;
        r := r || piece || E'\\\\u0000';
        s := substring(s FROM i + 1);
    END LOOP;
    piece := tart_utf8(s);
    RETURN r || piece;
END $$;

-- Valid UTF-8 as text, else NULL. The regex test keeps convert_from from ever raising, which
-- would otherwise need a subtransaction (an EXCEPTION block) per string.
CREATE OR REPLACE FUNCTION tart_utf8(s bytea) RETURNS text {_SQL_STABLE}
AS $$ SELECT CASE WHEN position(decode('00', 'hex') IN s) > 0 THEN tart_utf8_nul(s)
             WHEN convert_from(s, 'LATIN1') ~ {UTF8_RE_SQL} THEN convert_from(s, 'UTF8') END $$;
"""
