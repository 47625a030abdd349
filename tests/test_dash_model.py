"""The console's data side without a terminal: Prometheus parsing, rates from counter deltas,
node sorting/filtering, event hand-off and the sparkline, fed with real library output."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from tart.dash import fmt
from tart.dash import metrics as m
from tart.dash.feed import Inbox, Live, Snapshot, normalize_event
from tart.dash.model import Model, NodeRow, RateMeter
from tart.dash.nodes import matches, sort_rows
from tart.dash.widgets import spark_lines


def scrape(received: float, dropped: dict[str, float], lag: float) -> dict[str, float]:
    reg = CollectorRegistry()
    c = Counter("telemetry_events_received", "r", registry=reg)
    c.inc(received)
    d = Counter("telemetry_events_dropped", "d", ["reason"], registry=reg)
    for reason, n in dropped.items():
        d.labels(reason).inc(n)
    Gauge("telemetry_writer_lag_seconds", "l", registry=reg).set(lag)
    text = generate_latest(reg).decode()
    # /metrics also repeats reference counters under their bare names (untyped): never double count.
    text += "# TYPE telemetry_events_received untyped\ntelemetry_events_received %s\n" % received
    return m.parse_metrics(text)


def test_parse_metrics_sums_label_sets_and_ignores_bare_aliases() -> None:
    got = scrape(1234, {"ring_full": 5, "too_large": 2}, 0.25)
    assert got[m.RECEIVED] == 1234
    assert got[m.DROPPED] == 7
    assert got[m.WRITER_LAG] == 0.25
    assert m.parse_metrics("garbage{{{ 1\n") == {}


def snap(at: float, received: float, nodes: list[dict] | None = None) -> Snapshot:
    return Snapshot(at=at, ok=True, health={"status": "ok"},
                    metrics=scrape(received, {}, 0.0), nodes=nodes)


def node(nid: str, count: int, name: str = "PolkaJam", connected: bool = True) -> dict:
    return {"node_id": nid, "peer_id": nid, "implementation_name": name, "event_count": count,
            "is_connected": connected, "last_seen_at": "2026-01-01T00:00:00Z"}


def test_rates_come_from_counter_deltas_and_restart_resets_them() -> None:
    model = Model()
    model.apply(snap(100.0, 1000, [node("aa" * 32, 10)]), Live())
    assert model.rate is None  # one sample is no rate
    model.apply(snap(102.0, 1400, [node("aa" * 32, 50)]), Live())
    assert model.rate == 200.0
    assert model.nodes["aa" * 32].rate == 20.0
    assert len(model.history) == 1
    # The backend restarted: its counter starts again from zero; no negative rate.
    model.apply(snap(103.0, 10, [node("aa" * 32, 51)]), Live())
    assert model.rate is None
    # The node's stored count did not reset; its rate spans the whole 5 s window of polls.
    assert model.nodes["aa" * 32].rate == (51 - 10) / 3


def test_unreachable_then_back() -> None:
    model = Model()
    assert model.apply(snap(1.0, 1), Live()) is False
    model.apply(Snapshot(at=2.0, ok=False, error="Connection refused"), Live())
    assert model.reachable is False and model.error == "Connection refused" and model.down_since == 2.0
    assert model.apply(snap(3.0, 1), Live()) is True
    assert model.reachable is True and model.down_since is None


def test_rate_meter_smooths_batched_counters_over_its_window() -> None:
    meter = RateMeter(window=4.0)
    # A counter that moves by 200 every other poll (a batching writer) reads as a steady 100/s.
    values = [0, 0, 200, 200, 400, 400, 600, 600, 800]
    rates = [meter.add(float(t), v) for t, v in enumerate(values)]
    assert rates[0] is None
    assert all(abs(r - 100.0) <= 50.0 for r in rates[4:])


def test_sort_and_filter_nodes() -> None:
    rows = [NodeRow("01" * 32, node("01" * 32, 5, "Zeta")), NodeRow("02" * 32, node("02" * 32, 50, "alpha")),
            NodeRow("03" * 32, {"node_id": "03" * 32})]
    rows[0].rate, rows[1].rate = 1.0, 9.0
    assert [r.node_id[:2] for r in sort_rows(rows, 4, False)] == ["02", "01", "03"]  # events, busiest first
    assert [r.node_id[:2] for r in sort_rows(rows, 4, True)] == ["01", "02", "03"]  # missing stays last
    assert [r.node_id[:2] for r in sort_rows(rows, 0, False)] == ["02", "01", "03"]  # names, a-z
    assert [r.node_id for r in rows if matches(r, "ZET")] == ["01" * 32]
    assert [r.node_id for r in rows if matches(r, "0303")] == ["03" * 32]


def test_inbox_hands_events_across_threads_and_tracks_blocks() -> None:
    wakes = []
    inbox = Inbox(lambda: wakes.append(1))
    nid = "ab" * 32

    def produce() -> None:
        for slot in range(1, 101):
            inbox.put_ws_message({"type": "event", "timestamp": "2026-01-01T00:00:00.5Z", "data": {
                "id": slot, "node_id": nid, "event_type": 11,
                "event": {"BestBlockChanged": {"timestamp": 1, "slot": slot, "hash": "0x" + "00" * 32}}}})
        inbox.put_ws_message({"type": "event", "data": {
            "id": 101, "node_id": nid, "event_type": 10, "event": {"Status": {"timestamp": 2, "num_peers": 7}}}})

    t = threading.Thread(target=produce)
    t.start()
    t.join()
    snapshot, live = inbox.take()
    assert snapshot is None
    assert [e["id"] for e in live.events] == list(range(1, 102))
    assert live.best[nid] == 100 and live.status[nid]["num_peers"] == 7
    assert wakes, "the UI was woken"
    assert inbox.take()[1].events == []  # taken once

    model = Model()
    model.select_node(nid)
    model.apply(None, live)
    assert model.detail_breakdown() == {11: 100, 10: 1}
    assert model.detail_status()["num_peers"] == 7
    assert model.detail_recent(2)[0]["id"] == 101


def test_rest_and_ws_envelopes_normalize_alike() -> None:
    rest = normalize_event({"id": 5, "node_id": "n", "event_type": 11, "data": {"X": {}},
                            "received_at": "2026-01-01T00:00:01Z", "timestamp": "2025-01-01T12:00:00Z"})
    ws = normalize_event({"id": 5, "node_id": "n", "event_type": 11, "event": {"X": {}}})
    assert rest["event"] == ws["event"] == {"X": {}}
    assert rest["time"] == "2026-01-01T00:00:01Z"


def test_sparkline_scales_to_its_max_and_leaves_gaps_blank() -> None:
    lines = spark_lines([0.0, None, 50.0, 100.0], 2, " ▁▂▃▄▅▆▇█")
    assert lines == ["   █", "  ██"]


def test_formatting_never_fails_on_missing_values() -> None:
    assert fmt.num(None) == fmt.rate(None) == fmt.seconds("x") == fmt.since(None) == fmt.clock(None) == "-"
    assert fmt.num(1234567) == "1,234,567"
    assert fmt.clock(1_500_000) == "12:00:01.500"  # JIP-3 µs since the JAM Common Era
    assert fmt.event_name(11) == "BestBlockChanged" and fmt.event_name(250) == "250"
    assert fmt.event_type_from_name("blockchanged") == {11, 12}
    assert fmt.event_summary({"BestBlockChanged": {"timestamp": 1, "slot": 42, "hash": "0x" + "ab" * 32}}) \
        == "slot=42 hash=ababababab…"
