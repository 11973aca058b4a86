"""Rule evaluation, table-driven: each case is a rule, a list of readings and the transitions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from gateway.alerts.engine import Effects, Engine, Reading
from gateway.alerts.rules import RuleSet
from gateway.alerts.state import StateStore

# (seconds, {channel: value}) per reading of device 7 of train T1; ts_ms = seconds * 1000
Steps = list[tuple[float, dict[str, float]]]


def _engine(*rules: dict[str, Any], **policy: Any) -> Engine:
    return Engine(RuleSet.model_validate({"rules": list(rules), "policy": policy}))


def _feed(engine: Engine, steps: Steps) -> Effects:
    """Feed readings of device 7 with seq 0.. and return everything they caused."""
    for seq, (seconds, values) in enumerate(steps):
        ts_ms = int(seconds * 1000)
        engine.reading(Reading("T1", 7, 1, seq, ts_ms, values), ts_ms)
    return engine.drain()


def _transitions(effects: Effects) -> list[tuple[str, str, float]]:
    return [(a["state"], a["sensor"], a["ts_ms"] / 1000) for a in effects.alerts]


def _series(channel: str, values: Sequence[float], every_s: float = 1.0) -> Steps:
    return [(i * every_s, {channel: v}) for i, v in enumerate(values)]


HOT = {"name": "hot", "kind": "threshold", "channels": ["bearing_left_temp"], "above": 120}
LOW = {"name": "low", "kind": "threshold", "channels": ["supply_voltage"], "below": 21.0}
L, R = "bearing_left_temp", "bearing_right_temp"

CASES: list[tuple[str, dict[str, Any], Steps, list[tuple[str, str, float]]]] = [
    (
        "threshold fires on the first reading above and resolves below",
        HOT,
        _series(L, [100, 130, 125, 119]),
        [("firing", L, 1), ("resolved", L, 3)],
    ),
    (
        "at the level is not above it",
        HOT,
        _series(L, [120, 120, 120]),
        [],
    ),
    (
        "`for` fires only once the level held that long",
        {**HOT, "for": "10s"},
        _series(L, [130] * 13),
        [("firing", L, 10)],
    ),
    (
        "`for` starts again after one reading below",
        {**HOT, "for": 10},
        _series(L, [130] * 6 + [110] + [130] * 11),
        [("firing", L, 17)],
    ),
    (
        "flapping around the level without hysteresis fires and resolves each time",
        HOT,
        _series(L, [121, 119, 121, 119]),
        [("firing", L, 0), ("resolved", L, 1), ("firing", L, 2), ("resolved", L, 3)],
    ),
    (
        "hysteresis: flapping between clear and threshold fires once",
        {**HOT, "clear": 110},
        _series(L, [121, 119, 121, 115, 121, 111, 109, 121]),
        [("firing", L, 0), ("resolved", L, 6), ("firing", L, 7)],
    ),
    (
        "flapping shorter than `for` never fires",
        {**HOT, "for": "5s"},
        _series(L, [121, 119] * 10),
        [],
    ),
    (
        "`below` with a clear level above it",
        {**LOW, "clear": 22.0},
        _series("supply_voltage", [24.0, 20.5, 21.5, 21.9, 22.5]),
        [("firing", "supply_voltage", 1), ("resolved", "supply_voltage", 4)],
    ),
    (
        "above ambient: the ambient channel of the same reading is subtracted",
        {**HOT, "above": 94, "relative_to": "ambient_temp"},
        [(0, {L: 120, "ambient_temp": 30}), (1, {L: 130, "ambient_temp": 30}), (2, {L: 200})],
        [("firing", L, 1)],
    ),
    (
        "every listed channel has its own state",
        {**HOT, "channels": [L, R]},
        [(0, {L: 130, R: 50}), (1, {L: 50, R: 130})],
        [("firing", L, 0), ("resolved", L, 1), ("firing", R, 1)],
    ),
    (
        "pair: the difference of the two bearings of one axle",
        {"name": "axle", "kind": "pair", "pairs": [[L, R]], "above": 53, "clear": 45},
        [(0, {L: 60, R: 20}), (1, {L: 80, R: 20}), (2, {L: 70, R: 20}), (3, {L: 20, R: 70})],
        [("firing", f"{L}-{R}", 1)],
    ),
    (
        "pair resolves past the clear level, either bearing hot",
        {"name": "axle", "kind": "pair", "pairs": [[L, R]], "above": 53, "clear": 45},
        [(0, {L: 20, R: 80}), (1, {L: 40, R: 80}), (2, {L: 40})],
        [("firing", f"{L}-{R}", 0), ("resolved", f"{L}-{R}", 1)],
    ),
    (
        "rate: a slow rise stays quiet, a fast rise fires (East Palestine)",
        {"name": "rising", "kind": "rate", "channels": [L], "window_s": 60, "above": 5},
        _series(L, [40 + 0.5 * i for i in range(13)] + [46 + 2 * i for i in range(1, 13)], 10),
        [("firing", L, 180)],
    ),
    (
        "rate resolves once the rise per minute drops below the clear level",
        {"name": "rising", "kind": "rate", "channels": [L], "window_s": "1m", "above": 5},
        _series(L, [40, 50, 60, 61, 61], 60),
        [("firing", L, 60), ("resolved", L, 180)],
    ),
]


@pytest.mark.parametrize(
    ("rule", "steps", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rule_transitions(
    rule: dict[str, Any], steps: Steps, expected: list[tuple[str, str, float]]
) -> None:
    assert _transitions(_feed(_engine(rule), steps)) == expected


def test_a_redelivered_reading_is_evaluated_once() -> None:
    engine = _engine(HOT)
    hot = Reading("T1", 7, 1, 5, 1000, {L: 130})
    cool = Reading("T1", 7, 1, 6, 2000, {L: 100})
    for reading in (hot, cool, hot, cool):
        engine.reading(reading, 0)
    assert [a["state"] for a in engine.drain().alerts] == ["firing", "resolved"]
    assert engine.duplicates == 2
    # After a reboot the same seq is a new reading.
    assert engine.reading(Reading("T1", 7, 2, 5, 3000, {L: 130}), 0)
    assert [a["state"] for a in engine.drain().alerts] == ["firing"]


def test_stale_data_by_timer_and_by_last_will() -> None:
    engine = _engine({"name": "stale", "kind": "stale", "after_s": 30})
    engine.reading(Reading("T1", 7, 1, 0, 0, {L: 20}), arrival_ms=1_000)
    engine.tick(30_000)
    assert engine.drain().alerts == []
    engine.tick(31_000)
    engine.tick(40_000)  # already firing: no second event
    (firing,) = engine.drain().alerts
    assert (firing["state"], firing["key"], firing["value"]) == (
        "firing",
        "T1/stale/7/readings",
        30,
    )
    assert firing["since_ms"] == 1_000
    engine.reading(Reading("T1", 7, 1, 1, 41_000, {L: 20}), arrival_ms=41_000)
    assert [a["state"] for a in engine.drain().alerts] == ["resolved"]
    engine.status("T1", 7, {"state": "offline"}, 42_000)
    (will,) = engine.drain().alerts
    assert will["state"] == "firing"
    assert "last will" in will["message"]


def test_a_disabled_device_is_silent_on_purpose_not_stale() -> None:
    engine = _engine({"name": "stale", "kind": "stale", "after_s": 30})
    engine.reading(Reading("T1", 7, 1, 0, 0, {L: 20}), arrival_ms=1_000)
    engine.status("T1", 7, {"state": "disabled"}, 2_000)
    engine.tick(100_000)
    assert engine.drain().alerts == []
    engine.status("T1", 7, {"state": "online"}, 200_000)  # enabled: silence counts from here
    engine.tick(220_000)
    assert engine.drain().alerts == []
    engine.tick(231_000)
    (firing,) = engine.drain().alerts
    assert (firing["state"], firing["since_ms"]) == ("firing", 200_000)


def test_policy_flags_the_train_disables_it_and_a_clear_enables_it() -> None:
    engine = _engine({**HOT, "severity": "critical"}, disable_train=True)
    out = _feed(engine, _series(L, [130, 100, 130]))  # fires twice; one flag, one disable
    assert [a["state"] for a in out.alerts] == ["firing", "resolved", "firing"]
    assert out.maintenance == [
        {
            "train_id": "T1",
            "flagged": True,
            "reason": "T1/hot/7/bearing_left_temp",
            "since_ms": 0,
            "by": "alerts",
            "disabled": True,
        }
    ]
    assert out.commands == [
        {"train_id": "T1", "device_id": None, "op": "disable", "id": "alerts-T1-disable-0"}
    ]
    engine.action({"action": "clear", "train_id": "T1", "by": "maria", "at_ms": 50_000})
    out = engine.drain()
    assert [(m["flagged"], m["by"], m["disabled"]) for m in out.maintenance] == [
        (False, "maria", False)
    ]
    assert [c["op"] for c in out.commands] == ["enable"]
    engine.action({"action": "clear", "train_id": "T1", "by": "maria", "at_ms": 51_000})
    assert not engine.drain()  # nothing to clear twice


def test_a_warning_does_not_flag_unless_the_rule_says_so() -> None:
    engine = _engine(HOT, {**HOT, "name": "hot_flag", "flag": True})
    out = _feed(engine, _series(L, [130]))
    assert [m["reason"] for m in out.maintenance] == ["T1/hot_flag/7/bearing_left_temp"]
    assert out.commands == []  # disable_train is off by default


def test_ack_repeats_the_firing_event_with_who_and_when() -> None:
    engine = _engine(HOT)
    (firing,) = _feed(engine, _series(L, [130])).alerts
    engine.action({"action": "ack", "key": firing["key"], "by": "maria", "at_ms": 5000})
    engine.action({"action": "ack", "key": "T1/nope/x", "by": "maria", "at_ms": 5000})
    engine.action({"action": "bogus"})
    (acked,) = engine.drain().alerts
    assert "acked by maria" in acked.pop("message")
    firing.pop("message")
    assert acked == {**firing, "state": "acknowledged", "acked_by": "maria", "acked_at_ms": 5000}


def test_restored_state_continues_where_it_stopped() -> None:
    rules = [{**HOT, "for": 5}, {"name": "r", "kind": "rate", "channels": [L], "above": 5}]
    first = _engine(*rules)
    _feed(first, _series(L, [130, 130, 130], 1))  # pending, rate reference set
    restored = StateStore()
    for key, value in first.store.take_dirty():
        restored.restore_state(key, json.dumps(value).encode())
    second = Engine(first.rules, restored)
    # seq 2 again is a duplicate; the pending `for` keeps its start; the rate has its reference
    second.reading(Reading("T1", 7, 1, 2, 2000, {L: 130}), 0)
    second.reading(Reading("T1", 7, 1, 3, 5000, {L: 130}), 0)
    second.reading(Reading("T1", 7, 1, 4, 60_000, {L: 150}), 0)
    assert [(a["rule"], a["state"], a["ts_ms"]) for a in second.drain().alerts] == [
        ("hot", "firing", 5000),
        ("r", "firing", 60_000),
    ]
    assert second.duplicates == 1


def test_two_boards_of_one_train_are_judged_each_on_its_own() -> None:
    engine = _engine(HOT)
    engine.reading(Reading("T1", 7, 1, 0, 0, {L: 130}), 0)  # board 7: a hot bearing
    engine.reading(Reading("T1", 8, 1, 0, 500, {L: 40}), 500)  # board 8: its own is cool
    engine.reading(Reading("T1", 7, 1, 1, 1000, {L: 131}), 1000)
    (firing,) = engine.drain().alerts  # board 8's cool reading did not resolve board 7's
    assert (firing["key"], firing["device_id"], firing["state"]) == (
        "T1/hot/7/bearing_left_temp",
        7,
        "firing",
    )
    engine.reading(Reading("T1", 8, 1, 1, 1500, {L: 125}), 1500)
    assert [(a["device_id"], a["state"]) for a in engine.drain().alerts] == [(8, "firing")]


def test_state_under_an_earlier_key_layout_is_not_restored() -> None:
    store = StateStore()
    old = {"train_id": "T1", "rule": "hot", "device_id": 7, "sensor": L, "state": "firing"}
    store.restore_state("T1/hot/bearing_left_temp", json.dumps(old).encode())
    store.restore_state("T1/hot/7/bearing_left_temp", json.dumps(old).encode())
    assert list(store.rules) == ["T1/hot/7/bearing_left_temp"]


def test_reading_from_json_rejects_what_is_not_a_reading() -> None:
    good = {
        "train_id": "T1",
        "device_id": 7,
        "boot_id": 1,
        "seq": 0,
        "ts_ms": 5,
        "wall_clock": True,
        "values": {L: 20},
    }
    assert Reading.from_json(json.dumps(good).encode()).values == {L: 20.0}
    for bad in (b"{}", b"[]", b"not json", json.dumps({**good, "values": 3}).encode()):
        with pytest.raises(ValueError):
            Reading.from_json(bad)
