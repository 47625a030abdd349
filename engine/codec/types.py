"""Composable JIP-3 wire types.

Each type knows how to encode a JSON-ready value (interpreted, `enc`) and how to emit Python source
that decodes it (`emit_dec`). schema.py composes them into the event table; events.py compiles the
table once at import time into one plain function per event, so the hot decode path runs straight-
line code with one `struct.unpack_from` per run of fixed-width fields.

Fixed-width types (`fixed = True`) expose `fmt` (struct format without byte order), `n` (how many
struct items they consume) and `expr(items, path, g)` (a source expression building the value).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from typing import Any

from .errors import Bad
from .natural import encode_natural

# ---------------------------------------------------------------------------------------------
# Helpers called by generated code. Validation helpers raise Bad with the field path, so the
# generated code need not track which field of a struct run it is converting.


def _bad_bool(x: int, path: str) -> bool:
    raise Bad(f"bool byte {x} is not 0 or 1", path)


def _bad_enum(x: int, count: int, path: str) -> str:
    raise Bad(f"enum byte {x} out of range 0..{count - 1}", path)


def _bad_option(x: int, path: str) -> None:
    raise Bad(f"option byte {x} is not 0 or 1", path)


_ADDR_CACHE: dict[bytes, str] = {}


def host_text(ipv6: bytes) -> str:
    """IPv6 text; IPv4-mapped addresses in dotted form, as NOTES.md's example `[::ffff:1.2.3.4]`."""
    addr = ipaddress.IPv6Address(bytes(ipv6))
    mapped = addr.ipv4_mapped
    if mapped is not None:
        return f"::ffff:{mapped}"
    return addr.compressed


def peer_address_text(ipv6: bytes, port: int) -> str:
    """`[host]:port`: the one text form of a JIP-3 Peer Address used throughout tart."""
    host = _ADDR_CACHE.get(ipv6)
    if host is None:
        host = host_text(ipv6)
        if len(_ADDR_CACHE) > 4096:
            _ADDR_CACHE.clear()
        _ADDR_CACHE[bytes(ipv6)] = host
    return f"[{host}]:{port}"


def _peer_addr(ip: bytes, port: int) -> dict:
    return {"ipv6": "0x" + ip.hex(), "port": port, "address": peer_address_text(ip, port)}


def _import_spec(root: bytes, index: int) -> dict:
    if index & 0x8000:
        return {"root_identifier": {"WorkPackageHash": "0x" + root.hex()}, "export_index": index & 0x7FFF}
    return {"root_identifier": {"SegmentsRoot": "0x" + root.hex()}, "export_index": index}


HELPERS: dict[str, Any] = {
    "Bad": Bad,
    "_bad_bool": _bad_bool,
    "_bad_enum": _bad_enum,
    "_bad_option": _bad_option,
    "_peer_addr": _peer_addr,
    "_import_spec": _import_spec,
}


# ---------------------------------------------------------------------------------------------
# Source generator


class Gen:
    """Collects lines of one generated function plus the constants it refers to."""

    def __init__(self, ns: dict[str, Any]) -> None:
        self.lines: list[str] = []
        self.depth = 1
        self.ns = ns
        self.count = 0

    def tmp(self, stem: str = "v") -> str:
        self.count += 1
        return f"_{stem}{self.count}"

    def const(self, obj: Any, stem: str = "K") -> str:
        name = f"{stem}{len(self.ns)}"
        self.ns[name] = obj
        return name

    def emit(self, line: str) -> None:
        self.lines.append("    " * self.depth + line)

    def emit_nat(self, target: str) -> None:
        # Inline the one-byte case: almost every length on the wire is < 128.
        self.emit(f"{target} = buf[off]")
        self.emit(f"if {target} < 128: off += 1")
        self.emit(f"else: {target}, off = _nat(buf, off)")


class RunInfo:
    """Attached to `f` while a struct run is unpacked, to name the field a truncation hits."""

    __slots__ = ("ends",)

    def __init__(self, ends: list[tuple[str, int]]) -> None:
        self.ends = ends

    def locate(self, remaining: int) -> str:
        for path, end in self.ends:
            if end > remaining:
                return path
        return self.ends[-1][0]


# ---------------------------------------------------------------------------------------------
# Types


class Type:
    fixed = False
    fmt = ""
    n = 0
    size = 0
    label = "?"

    def expr(self, items: Sequence[str], path: str, g: Gen) -> str:
        raise NotImplementedError

    def emit_dec(self, g: Gen, path: str) -> str:
        """Emit statements decoding at `off` (advancing it); return an expression for the value."""
        names = [g.tmp("a") for _ in range(self.n)]
        s = g.const(struct.Struct("<" + self.fmt), "S")
        g.emit(f"f = {g.const(RunInfo(self.field_ends(path)), 'R')}")
        g.emit(f"{', '.join(names)}, = {s}.unpack_from(buf, off)")
        g.emit(f"off += {self.size}")
        value = g.tmp()
        g.emit(f"{value} = {self.expr(names, path, g)}")
        return value

    def field_ends(self, path: str, base: int = 0) -> list[tuple[str, int]]:
        return [(path, base + self.size)]

    def enc(self, v: Any, out: bytearray, c: int) -> None:
        raise NotImplementedError


class Int(Type):
    fixed = True
    n = 1

    def __init__(self, fmt: str, label: str) -> None:
        self.fmt = fmt
        self.size = struct.calcsize("<" + fmt)
        self.label = label
        self._s = struct.Struct("<" + fmt)

    def expr(self, items, path, g):
        return items[0]

    def enc(self, v, out, c):
        if type(v) is not int:
            raise ValueError(f"{self.label} needs an int, got {v!r}")
        out += self._s.pack(v)


U8 = Int("B", "u8")
U16 = Int("H", "u16")
U32 = Int("I", "u32")
U64 = Int("Q", "u64")


class BoolT(Type):
    fixed = True
    fmt = "B"
    n = 1
    size = 1
    label = "bool"

    def expr(self, items, path, g):
        x = items[0]
        return f"({x} == 1 if {x} < 2 else _bad_bool({x}, {path!r}))"

    def enc(self, v, out, c):
        if type(v) is not bool:
            raise ValueError(f"bool needs True/False, got {v!r}")
        out.append(1 if v else 0)


Bool = BoolT()


class Enum(Type):
    """A single byte naming one of `names` (JSON: the name string)."""

    fixed = True
    fmt = "B"
    n = 1
    size = 1

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.label = "enum " + "|".join(self.names)

    def expr(self, items, path, g):
        x = items[0]
        k = len(self.names)
        return f"({g.const(self.names, 'E')}[{x}] if {x} < {k} else _bad_enum({x}, {k}, {path!r}))"

    def enc(self, v, out, c):
        try:
            out.append(self.index[v])
        except (KeyError, TypeError):
            raise ValueError(f"{v!r} is not one of {self.names}") from None


def _hex_bytes(v: Any, size: int | None) -> bytes:
    if not isinstance(v, str) or not v.startswith("0x"):
        raise ValueError(f"byte string must be '0x' hex, got {v!r}")
    raw = bytes.fromhex(v[2:])
    if size is not None and len(raw) != size:
        raise ValueError(f"byte string of {len(raw)} bytes, need {size}")
    if v[2:] != raw.hex():
        raise ValueError(f"byte string must be lowercase hex: {v!r}")
    return raw


class Bytes(Type):
    """[u8; N]: JSON lowercase 0x-hex."""

    fixed = True
    n = 1

    def __init__(self, size: int) -> None:
        self.size = size
        self.fmt = f"{size}s"
        self.label = f"[u8; {size}]"

    def expr(self, items, path, g):
        return f'"0x" + {items[0]}.hex()'

    def enc(self, v, out, c):
        out += _hex_bytes(v, self.size)


Hash = Bytes(32)


class PeerAddressT(Type):
    """[u8; 16] ++ u16 -> {"ipv6": hex, "port": n, "address": "[host]:port"}."""

    fixed = True
    fmt = "16sH"
    n = 2
    size = 18
    label = "Peer Address"

    def expr(self, items, path, g):
        return f"_peer_addr({items[0]}, {items[1]})"

    def field_ends(self, path, base=0):
        return [(path + ".ipv6", base + 16), (path + ".port", base + 18)]

    def enc(self, v, out, c):
        ip = _hex_bytes(v["ipv6"], 16)
        port = v["port"]
        # "address" is derived; it may be left out, but a stale one would not survive decode.
        if "address" in v and v["address"] != peer_address_text(ip, port):
            raise ValueError(f"address {v['address']!r} does not match ipv6/port")
        out += ip
        U16.enc(port, out, c)


PeerAddress = PeerAddressT()


class ImportSpecT(Type):
    """Root Identifier ++ u16; bit 15 of the index picks the root kind and is stripped in JSON."""

    fixed = True
    fmt = "32sH"
    n = 2
    size = 34
    label = "Import Spec"

    def expr(self, items, path, g):
        return f"_import_spec({items[0]}, {items[1]})"

    def field_ends(self, path, base=0):
        return [(path + ".root_identifier", base + 32), (path + ".export_index", base + 34)]

    def enc(self, v, out, c):
        root = v["root_identifier"]
        if not isinstance(root, dict) or len(root) != 1:
            raise ValueError(f"root_identifier must be one-key object, got {root!r}")
        ((kind, digest),) = root.items()
        if kind not in ("SegmentsRoot", "WorkPackageHash"):
            raise ValueError(f"unknown root_identifier {kind!r}")
        index = v["export_index"]
        if type(index) is not int or not 0 <= index < 0x8000:
            raise ValueError(f"export_index {index!r} outside 0..32767")
        out += _hex_bytes(digest, 32)
        U16.enc(index | (0x8000 if kind == "WorkPackageHash" else 0), out, c)


ImportSpec = ImportSpecT()


class Composite(Type):
    """Struct (JSON object, keys in declaration order) or Tuple (JSON array)."""

    def __init__(self, members: Sequence[tuple[str | None, Type]], keyed: bool) -> None:
        self.members = list(members)
        self.keyed = keyed
        self.fixed = all(t.fixed for _, t in self.members)
        if self.fixed:
            self.fmt = "".join(t.fmt for _, t in self.members)
            self.n = sum(t.n for _, t in self.members)
            self.size = sum(t.size for _, t in self.members)
        self.label = "struct" if keyed else "tuple"

    def _sub(self, path: str, key: str | None, i: int) -> str:
        part = key if self.keyed else str(i)
        return f"{path}.{part}" if path else str(part)

    def _literal(self, exprs: list[str]) -> str:
        if self.keyed:
            return "{" + ", ".join(f"{k!r}: {e}" for (k, _), e in zip(self.members, exprs, strict=True)) + "}"
        return "[" + ", ".join(exprs) + "]"

    def expr(self, items, path, g):
        exprs, i = [], 0
        for j, (key, t) in enumerate(self.members):
            exprs.append(t.expr(items[i : i + t.n], self._sub(path, key, j), g))
            i += t.n
        return self._literal(exprs)

    def field_ends(self, path, base=0):
        ends = []
        for j, (key, t) in enumerate(self.members):
            ends += t.field_ends(self._sub(path, key, j), base)
            base += t.size
        return ends

    def member_exprs(self, g: Gen, path: str) -> list[str]:
        """Emit decoding of all members (fixed runs batched); return one expression per member."""
        exprs: list[str] = []
        j = 0
        members = self.members
        while j < len(members):
            key, t = members[j]
            if not t.fixed:
                sub = self._sub(path, key, j)
                g.emit(f"f = {sub!r}")
                exprs.append(t.emit_dec(g, sub))
                j += 1
                continue
            run = []
            while j < len(members) and members[j][1].fixed:
                run.append((j, members[j][0], members[j][1]))
                j += 1
            fmt = "".join(t.fmt for _, _, t in run)
            size = sum(t.size for _, _, t in run)
            ends: list[tuple[str, int]] = []
            base = 0
            for jj, k, t in run:
                ends += t.field_ends(self._sub(path, k, jj), base)
                base += t.size
            names = [g.tmp("a") for _ in range(sum(t.n for _, _, t in run))]
            g.emit(f"f = {g.const(RunInfo(ends), 'R')}")
            g.emit(f"{', '.join(names)}, = {g.const(struct.Struct('<' + fmt), 'S')}.unpack_from(buf, off)")
            g.emit(f"off += {size}")
            i = 0
            for jj, k, t in run:
                exprs.append(t.expr(names[i : i + t.n], self._sub(path, k, jj), g))
                i += t.n
        return exprs

    def emit_dec(self, g, path):
        if self.fixed:
            return super().emit_dec(g, path)
        value = g.tmp()
        g.emit(f"{value} = {self._literal(self.member_exprs(g, path))}")
        return value

    def enc(self, v, out, c):
        if self.keyed:
            if not isinstance(v, dict) or len(v) != len(self.members):
                raise ValueError(f"expected object with keys {[k for k, _ in self.members]}, got {v!r}")
            for key, t in self.members:
                t.enc(v[key], out, c)
        else:
            if not isinstance(v, (list, tuple)) or len(v) != len(self.members):
                raise ValueError(f"expected {len(self.members)}-element array, got {v!r}")
            for (_, t), item in zip(self.members, v, strict=True):
                t.enc(item, out, c)


def Struct(*fields: tuple[str, Type]) -> Composite:  # noqa: N802 - reads as a type constructor
    return Composite(fields, keyed=True)


def Tuple(*types: Type) -> Composite:  # noqa: N802
    return Composite([(None, t) for t in types], keyed=False)


class String(Type):
    """String<N>: natural length then UTF-8 bytes; over-bound and invalid UTF-8 are errors."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.label = f"String<{bound}>"

    def emit_dec(self, g, path):
        n, end, value = g.tmp("n"), g.tmp("e"), g.tmp()
        g.emit_nat(n)
        g.emit(f"if {n} > {self.bound}: raise Bad(f'string of {{{n}}} bytes over bound {self.bound}')")
        g.emit(f"{end} = off + {n}")
        g.emit(f"if {end} > len(buf): raise Bad(f'length prefix {{{n}}} larger than remaining {{len(buf) - off}} bytes')")
        g.emit(f"{value} = str(buf[off:{end}], 'utf-8')")
        g.emit(f"off = {end}")
        return value

    def enc(self, v, out, c):
        if not isinstance(v, str):
            raise ValueError(f"{self.label} needs a str, got {v!r}")
        raw = v.encode("utf-8")
        if len(raw) > self.bound:
            raise ValueError(f"string of {len(raw)} bytes over bound {self.bound}")
        out += encode_natural(len(raw))
        out += raw


class Option(Type):
    def __init__(self, inner: Type) -> None:
        self.inner = inner
        self.label = f"Option<{inner.label}>"

    def emit_dec(self, g, path):
        b, value = g.tmp("b"), g.tmp()
        g.emit(f"{b} = buf[off]")
        g.emit("off += 1")
        g.emit(f"if {b} == 0: {value} = None")
        g.emit(f"elif {b} == 1:")
        g.depth += 1
        g.emit(f"{value} = {self.inner.emit_dec(g, path)}")
        g.depth -= 1
        g.emit(f"else: _bad_option({b}, {path!r})")
        return value

    def enc(self, v, out, c):
        if v is None:
            out.append(0)
        else:
            out.append(1)
            self.inner.enc(v, out, c)


class Seq(Type):
    """len++[T]: JSON array."""

    def __init__(self, inner: Type) -> None:
        self.inner = inner
        self.label = f"len++[{inner.label}]"

    def emit_dec(self, g, path):
        n, value = g.tmp("n"), g.tmp()
        t = self.inner
        g.emit_nat(n)
        if t.fixed:
            total = g.tmp("t")
            g.emit(f"{total} = {n} * {t.size}")
            g.emit(
                f"if {total} > len(buf) - off: raise Bad(f'length prefix {{{n}}} x {t.size} bytes larger than "
                f"remaining {{len(buf) - off}} bytes')"
            )
            names = [g.tmp("a") for _ in range(t.n)]
            s = g.const(struct.Struct("<" + t.fmt), "S")
            if t is U16 or t is U32 or t is U8:
                # Plain integers: iter_unpack's tuples unwrap straight into the list.
                g.emit(f"{value} = [{names[0]} for {names[0]}, in {s}.iter_unpack(buf[off:off + {total}])]")
            else:
                item = t.expr(names, path, g)
                g.emit(f"{value} = [{item} for {', '.join(names)}, in {s}.iter_unpack(buf[off:off + {total}])]")
            g.emit(f"off += {total}")
            return value
        g.emit(
            f"if {n} > len(buf) - off: raise Bad(f'length prefix {{{n}}} larger than remaining {{len(buf) - off}} bytes')"
        )
        g.emit(f"{value} = []")
        loop = g.tmp("i")
        g.emit(f"for {loop} in range({n}):")
        g.depth += 1
        item = t.emit_dec(g, path)
        g.emit(f"{value}.append({item})")
        g.depth -= 1
        return value

    def enc(self, v, out, c):
        if not isinstance(v, list):
            raise ValueError(f"{self.label} needs a list, got {v!r}")
        out += encode_natural(len(v))
        for item in v:
            self.inner.enc(item, out, c)


class CoreCounts(Type):
    """[u8; C] of counts (Status num_guarantees): JSON array of ints."""

    label = "[u8; C]"

    def emit_dec(self, g, path):
        end, value = g.tmp("e"), g.tmp()
        g.emit(f"{end} = off + C")
        g.emit(f"if {end} > len(buf): raise Bad(f'truncated: [u8; C] needs {{C}} bytes, {{len(buf) - off}} left')")
        g.emit(f"{value} = list(buf[off:{end}])")
        g.emit(f"off = {end}")
        return value

    def enc(self, v, out, c):
        if not isinstance(v, list) or len(v) != c:
            raise ValueError(f"[u8; C] needs a list of {c} ints, got {v!r}")
        out += bytes(v)


class CoreBits(Type):
    """[u8; ceil(C/8)] availability bitfield: JSON 0x-hex."""

    label = "[u8; ceil(C/8)]"

    def emit_dec(self, g, path):
        end, value = g.tmp("e"), g.tmp()
        g.emit(f"{end} = off + ((C + 7) >> 3)")
        g.emit(f"if {end} > len(buf): raise Bad(f'truncated: bitfield needs {{(C + 7) >> 3}} bytes, {{len(buf) - off}} left')")
        g.emit(f'{value} = "0x" + buf[off:{end}].hex()')
        g.emit(f"off = {end}")
        return value

    def enc(self, v, out, c):
        out += _hex_bytes(v, (c + 7) >> 3)
