"""The SQL decoders (tart.engine.codec.sqlgen) against the Python codec, which is the reference.

For every event type, hypothesis values are encoded by the Python codec and decoded both ways;
the JSONB from tart_event_data must equal orjson.loads(escape_nul_json(Decoded.json())). Mutated
and random payloads must decode in SQL exactly when they decode in Python. Examples are sent in
batches (arrays in one query), so the whole module needs few round trips.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from strategies import INT_MAX, U64_MAX, event_value

from tart.engine.codec import (
    EVENT_NAMES,
    DecodeError,
    decode_event,
    encode_event,
    encode_natural,
    event_schema,
)
from tart.engine.codec.sqlgen import c_layout, decoder_sql
from tart.engine.codec.types import (
    BoolT,
    Bytes,
    Composite,
    CoreBits,
    CoreCounts,
    Enum,
    ImportSpecT,
    Int,
    Option,
    PeerAddressT,
    Seq,
    String,
    peer_address_text,
)
from tart.engine.copyfmt import escape_nul_json

ROOT = Path(__file__).resolve().parent.parent
_HEADER = struct.Struct("<QB")
BATCH = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def db(pg_server: str):
    """A database of this module's own with only the decoders in it (no migrations needed)."""
    name = f"tart_sqldec_{os.getpid()}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE template0')
    dsn = make_conninfo(pg_server, dbname=name)
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(decoder_sql())
    try:
        yield conn
    finally:
        conn.close()
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{conninfo_to_dict(dsn)["dbname"]}" WITH (FORCE)')


def sql_data(conn, rows: list[tuple[int, int, bytes]]) -> list:
    """tart_event_data over (event_type, timestamp, payload) rows, in one query."""
    if not rows:
        return []
    cur = conn.execute(
        "SELECT tart_event_data(et, ts::numeric, p) FROM unnest(%s::int[], %s::text[], %s::bytea[])"
        " WITH ORDINALITY AS t(et, ts, p, i) ORDER BY i",
        ([r[0] for r in rows], [str(r[1]) for r in rows], [r[2] for r in rows]),
    )
    return [r[0] for r in cur.fetchall()]


def py_data(et: int, ts: int, payload: bytes):
    """What the Python codec makes of a stored payload, None where it refuses it.

    The SQL decoder has no core count: it sizes the C field from the payload length, so the
    Python side is given the C that length implies.
    """
    if et not in EVENT_NAMES:
        return None
    c = 0
    layout = c_layout(et)
    if layout is not None:
        rest = len(payload) - layout[0]
        c = max(rest, 0) * (8 if isinstance(layout[1], CoreBits) else 1)
    try:
        d = decode_event(_HEADER.pack(ts, et) + payload, c)
    except DecodeError:
        return None
    return orjson.loads(escape_nul_json(d.json()))


def check(conn, rows: list[tuple[int, int, bytes]]) -> None:
    got = sql_data(conn, rows)
    for (et, ts, payload), g in zip(rows, got, strict=True):
        assert g == py_data(et, ts, payload), (et, ts, payload.hex())


# ---------------------------------------------------------------------------------------------
# Values, built by walking the schema as the codec does


def payload_of(et: int, value: dict, c: int) -> bytes:
    return encode_event(et, value, c)[9:]


def expected(et: int, value: dict, c: int):
    d = decode_event(encode_event(et, value, c), c)
    return orjson.loads(escape_nul_json(d.json()))


# ---------------------------------------------------------------------------------------------
# Every event type equals the Python codec


@pytest.mark.parametrize("et", sorted(EVENT_NAMES), ids=lambda et: f"{et}-{EVENT_NAMES[et]}")
@BATCH
@given(data=st.data())
def test_every_event_matches_the_python_codec(db, et, data):
    c = data.draw(st.sampled_from([0, 1, 2, 7, 8, 9, 341]), label="core_count")
    values = data.draw(st.lists(event_value(et, c), min_size=1, max_size=12), label="values")
    got = sql_data(db, [(et, v["timestamp"], payload_of(et, v, c)) for v in values])
    assert got == [expected(et, v, c) for v in values]


def _mutate(payload: bytes, kind: int, at: int, byte: int) -> bytes:
    if not payload:
        return bytes([byte])
    at %= len(payload) + 1
    if kind == 0:
        return payload[:at]
    if kind == 1:
        return payload + bytes([byte])
    if kind == 2:
        return payload[:at] + bytes([byte]) + payload[at:]
    at = min(at, len(payload) - 1)
    return payload[:at] + bytes([byte]) + payload[at + 1:]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_mutated_payloads_decode_exactly_when_python_decodes_them(db, data):
    """Truncations, extra and changed bytes: SQL gives NULL where Python raises, else the same."""
    rows = []
    for _ in range(30):
        et = data.draw(st.sampled_from(sorted(EVENT_NAMES)))
        c = data.draw(st.sampled_from([0, 3, 16]))
        payload = payload_of(et, data.draw(event_value(et, c)), c)
        edit = data.draw(st.tuples(st.integers(0, 3), st.integers(0, 10_000), st.integers(0, 255)))
        other = data.draw(st.sampled_from(sorted(EVENT_NAMES)))  # a payload under the wrong type
        rows += [(et, 7, _mutate(payload, *edit)), (other, 7, payload)]
    rows += [(data.draw(st.sampled_from(sorted(EVENT_NAMES))), 0, data.draw(st.binary(max_size=80)))
             for _ in range(20)]
    check(db, rows)


def test_every_prefix_and_a_trailing_byte(db):
    """Each strict prefix and each one-byte extension of a valid payload is rejected, except
    where it is a valid event itself (a C-sized field absorbs it; a Seq/String may end early)."""
    import random

    rng = random.Random(3)
    rows = []
    for et in sorted(EVENT_NAMES):
        # A deterministic, fully populated value: strings non-empty, sequences of two.
        value = _sample_value(et, rng, 9)
        payload = payload_of(et, value, 9)
        rows += [(et, 1, payload[:i]) for i in range(len(payload))]
        rows += [(et, 1, payload + b"\x00"), (et, 1, payload)]
    got = sql_data(db, rows)
    for (et, ts, payload), g in zip(rows, got, strict=True):
        assert g == py_data(et, ts, payload), (et, payload.hex())
    full = [g for (et, _, p), g in zip(rows, got, strict=True) if len(p) > 0]
    assert sum(g is not None for g in full) >= len(EVENT_NAMES)


def _sample_value(et: int, rng, c: int) -> dict:
    def gen(t):
        if isinstance(t, Int):
            return rng.randrange(INT_MAX[t.label] + 1)
        if isinstance(t, BoolT):
            return rng.random() < 0.5
        if isinstance(t, Enum):
            return rng.choice(t.names)
        if isinstance(t, Bytes):
            return "0x" + rng.randbytes(t.size).hex()
        if isinstance(t, PeerAddressT):
            return {"ipv6": "0x" + rng.randbytes(16).hex(), "port": rng.randrange(65536)}
        if isinstance(t, ImportSpecT):
            return {"root_identifier": {"WorkPackageHash": "0x" + rng.randbytes(32).hex()}, "export_index": 5}
        if isinstance(t, Composite):
            vals = [gen(m) for _, m in t.members]
            return dict(zip([k for k, _ in t.members], vals, strict=True)) if t.keyed else vals
        if isinstance(t, String):
            return "réason"
        if isinstance(t, Option):
            return gen(t.inner)
        if isinstance(t, Seq):
            return [gen(t.inner), gen(t.inner)]
        if isinstance(t, CoreCounts):
            return [rng.randrange(256) for _ in range(c)]
        if isinstance(t, CoreBits):
            return "0x" + rng.randbytes((c + 7) // 8).hex()
        raise AssertionError(t)

    return {"timestamp": rng.randrange(2**64), **{k: gen(t) for k, t in event_schema(et)}}


# ---------------------------------------------------------------------------------------------
# Edges, one by one


_NAT_EDGES = [0, 1, 127, 128, 255, 16383, 16384, 2**21 - 1, 2**21, 2**28, 2**35, 2**42, 2**49,
              2**56 - 1, 2**56, 2**63, U64_MAX]


def test_natural_numbers(db):
    encoded = [encode_natural(n) for n in _NAT_EDGES]
    cur = db.execute("SELECT (tart_nat(b || '\\xab'::bytea, 0)).* FROM unnest(%s::bytea[]) WITH ORDINALITY"
                     " AS t(b, i) ORDER BY i", (encoded,))
    assert cur.fetchall() == [(n, len(e)) for n, e in zip(_NAT_EDGES, encoded, strict=True)]
    # Longer forms than needed, and truncated ones, are not numbers.
    bad = [b"\x80\x05", b"\xc0\x7f\x00", b"\xff" + (2**56 - 1).to_bytes(8, "little"), b"\x80", b"\xc0\x00",
           b"\xff" + bytes(7), b""]
    cur = db.execute("SELECT (tart_nat(b, 0)).* FROM unnest(%s::bytea[]) WITH ORDINALITY AS t(b, i) ORDER BY i",
                     (bad,))
    assert cur.fetchall() == [(None, None)] * len(bad)


def test_lengths_at_the_natural_number_edges(db):
    rows = []
    for count in (0, 1, 127, 128, 129, 16383, 16384):
        value = {"timestamp": 5, "submission_id": count, "segments": [i & 0xFFFF for i in range(count)]}
        rows.append((172, 5, payload_of(172, value, 0)))
    for size in (0, 127, 128):
        rows.append((28, 6, payload_of(28, {"timestamp": 6, "peer": "0x" + "11" * 32, "reason": "r" * size}, 0)))
    # Claimed lengths that cannot fit: Python and SQL both refuse them.
    for n in (129, 16384, 2**56, U64_MAX):
        rows.append((28, 6, bytes(32) + encode_natural(n) + b"r" * 129))
        rows.append((172, 6, bytes(8) + encode_natural(n) + bytes(64)))
    got = sql_data(db, rows)
    assert all(g is not None for g in got[:10])
    assert all(g is None for g in got[10:])
    check(db, rows)


def test_u64_max_everywhere(db):
    rows = [(0, U64_MAX, struct.pack("<QQ", U64_MAX, U64_MAX)), (0, 0, bytes(16)),
            (45, 2**63, struct.pack("<Q", 2**63)), (45, 2**63 - 1, struct.pack("<Q", 2**63 - 1))]
    got = sql_data(db, rows)
    assert got[0] == {"Dropped": {"timestamp": U64_MAX, "last_timestamp": U64_MAX, "num": U64_MAX}}
    assert got[2] == {"BlockVerified": {"timestamp": 2**63, "importing_id": 2**63}}
    check(db, rows)


_STRINGS = ["", "plain", "a\x00b", "\x00", "\x00\x00", "x\x00", "\x00y", "é\x00€\x00🦀", "\\u0000", "\\\x00",
            'quote " and \\ backslash', "\t\n\r\x01\x1f\x7f", "€" * 42, "🦀" * 32, "\U0010ffff", "\ud7ff\ue000",
            "\ufffe\uffff", "\x80\xff"]


def test_strings(db):
    rows = [(28, 9, payload_of(28, {"timestamp": 9, "peer": "0x" + "00" * 32, "reason": s}, 0)) for s in _STRINGS]
    got = sql_data(db, rows)
    assert got[2]["PeerMisbehaved"]["reason"] == "a\\u0000b"
    assert got[7]["PeerMisbehaved"]["reason"] == "é\\u0000€\\u0000🦀"
    check(db, rows)


_BAD_UTF8 = [b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xc2", b"\xe0\x80\x80", b"\xe0\x9f\xbf",
             b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xe2\x82", b"\xf0\x80\x80\x80", b"\xf0\x8f\xbf\xbf",
             b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xfe", b"\xff",
             b"ok\x00\xc3", b"\xc3\x00\xa9", b"\xe2\x82\x00", b"a\x00b\x00\xff"]
_GOOD_UTF8 = [b"\x7f", b"\xc2\x80", b"\xdf\xbf", b"\xe0\xa0\x80", b"\xed\x9f\xbf", b"\xee\x80\x80",
              b"\xef\xbf\xbf", b"\xf0\x90\x80\x80", b"\xf4\x8f\xbf\xbf", b"\x00\xf0\x9f\xa6\x80\x00"]


def test_invalid_utf8_is_null_and_valid_edges_are_not(db):
    rows = [(28, 1, bytes(32) + encode_natural(len(b)) + b) for b in _BAD_UTF8 + _GOOD_UTF8]
    got = sql_data(db, rows)
    assert got[:len(_BAD_UTF8)] == [None] * len(_BAD_UTF8)
    assert None not in got[len(_BAD_UTF8):]
    check(db, rows)


def test_bad_bool_option_and_enum_bytes(db):
    peer = bytes(32)
    rows = [(13, 1, b"\x00"), (13, 1, b"\x01"), (13, 1, b"\x02"), (13, 1, b"\xff"),
            (27, 1, peer + b"\x00\x00"), (27, 1, peer + b"\x01\x01\x00"), (27, 1, peer + b"\x02\x00"),
            (27, 1, peer + b"\x01\x02\x00"), (27, 1, peer + b"\x01"), (27, 1, peer + b"\x01\x00"),
            (63, 1, peer * 2 + b"\x01" + bytes(4)), (63, 1, peer * 2 + b"\x02" + bytes(4)),
            (192, 1, bytes(40) + b"\x05"), (192, 1, bytes(40) + b"\x06"), (113, 1, bytes(36) + b"\x00\x04"),
            (113, 1, bytes(36) + b"\x00\x05"), (162, 1, bytes(40) + b"\x02\x00"), (162, 1, bytes(40) + b"\x01\x00")]
    got = sql_data(db, rows)
    assert [g is not None for g in got] == [True, True, False, False, True, True, False, False, False, False,
                                            True, False, True, False, True, False, False, True]
    check(db, rows)


def test_unknown_types_and_null_arguments(db):
    unknown = [et for et in range(-1, 300) if et not in EVENT_NAMES]
    assert sql_data(db, [(et, 1, bytes(8)) for et in unknown]) == [None] * len(unknown)
    row = db.execute("SELECT tart_event_data(NULL, 1, '\\x00'), tart_event_data(13, NULL, '\\x00'),"
                     " tart_event_data(13, 1, NULL), tart_frame_data(NULL)").fetchone()
    assert row == (None, None, None, None)


@pytest.mark.parametrize("c", [0, 1, 2, 7, 8, 9, 16, 17, 341, 1023, 1024])
def test_status_and_assurance_of_any_core_count(db, c):
    status = {"timestamp": 3, "num_peers": 1, "num_val_peers": 2, "num_sync_peers": 3,
              "num_guarantees": [i % 256 for i in range(c)], "num_shards": U64_MAX % 2**32,
              "shards_size": U64_MAX, "num_preimages": 4, "preimages_size": 5}
    assurance = {"timestamp": 4, "statement": {"anchor": "0x" + "ab" * 32, "bitfield": "0x" + "f1" * ((c + 7) // 8)}}
    got = sql_data(db, [(10, 3, payload_of(10, status, c)), (126, 4, payload_of(126, assurance, c))])
    assert got == [{"Status": status}, {"DistributingAssurance": assurance}]
    short = [(10, 1, bytes(31)), (126, 1, bytes(31))]
    assert sql_data(db, short) == [None, None]


def test_frame_data(db):
    frames = [encode_event(11, {"timestamp": 42, "slot": 7, "hash": "0x" + "cd" * 32}, 0),
              encode_event(27, {"timestamp": U64_MAX, "peer": "0x" + "01" * 32, "terminator": "Remote",
                                "reason": "bye\x00"}, 0),
              encode_event(10, {"timestamp": 1, "num_peers": 1, "num_val_peers": 2, "num_sync_peers": 3,
                                "num_guarantees": [9] * 341, "num_shards": 4, "shards_size": 5, "num_preimages": 6,
                                "preimages_size": 7}, 341)]
    bad = [b"", bytes(8), bytes(8) + b"\x0e", bytes(8) + b"\x0b" + bytes(35), frames[0] + b"\x00"]
    cur = db.execute("SELECT tart_frame_data(f) FROM unnest(%s::bytea[]) WITH ORDINALITY AS t(f, i) ORDER BY i",
                     (frames + bad,))
    got = [r[0] for r in cur.fetchall()]
    assert got[:3] == [orjson.loads(escape_nul_json(decode_event(f, 341).json())) for f in frames]
    assert got[3:] == [None] * len(bad)


_ADDRESSES = ["::", "::1", "1::", "1::1", "1:0:0:1:0:0:0:1", "1:0:0:0:1:0:0:1", "0:0:1:0:0:1:0:0",
              "1:2:3:4:5:6:7:8", "1:0:1:0:1:0:1:0", "0:1:0:1:0:1:0:1", "::ffff:1.2.3.4", "::ffff:0.0.0.0",
              "::ffff:255.255.255.255", "::1.2.3.4", "::fffe:1.2.3.4", "::1:ffff:1.2.3.4", "fe80::1",
              "2001:db8::ff00:42:8329", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "0:0:0:1::"]


def test_peer_address_text(db):
    ips = [ipaddress.IPv6Address(a).packed for a in _ADDRESSES]
    rows = [(20, 1, ip + struct.pack("<H", port)) for ip, port in zip(ips, range(0, 65536, 3000), strict=False)]
    got = sql_data(db, rows)
    for (_, _, p), g in zip(rows, got, strict=True):
        port = struct.unpack("<H", p[16:])[0]
        assert g["ConnectionRefused"]["from"]["address"] == peer_address_text(p[:16], port)
    check(db, rows)


# ---------------------------------------------------------------------------------------------
# The generated text itself


def test_sql_text_is_deterministic_and_idempotent(db):
    sql = decoder_sql()
    assert sql == decoder_sql()
    code = "import sys; from tart.engine.codec.sqlgen import decoder_sql; sys.stdout.write(decoder_sql())"
    for seed in ("0", "12345"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        assert out == sql
    db.execute(sql)  # a second install replaces, never fails
    assert sql_data(db, [(13, 1, b"\x01")]) == [{"SyncStatusChanged": {"timestamp": 1, "synced": True}}]
    names = {r[0] for r in db.execute("SELECT proname FROM pg_proc WHERE proname LIKE 'tart\\_%'")}
    assert {f"tart_ev_{et}" for et in EVENT_NAMES} | {"tart_event_data", "tart_frame_data"} <= names


def test_generator_files_are_ruff_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff not installed")
    files = ["engine/codec/sqlgen.py", "engine/codec/sqlgen_types.py", "tests/test_sql_decoder.py",
             "bench/sql_decoder.py"]
    subprocess.run([ruff, "check", *[f for f in files if (ROOT / f).exists()]], cwd=ROOT, check=True)
