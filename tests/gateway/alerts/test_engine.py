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
    out = _feed(engine, _series(L, [130, 100, 130]))  # disabled after the first: no second
    assert [a["state"] for a in out.alerts] == ["firing", "resolved"]
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
    engine.action({"action": "maintenance_window", "train_id": "T1", "by": "maria"})
    (acked,) = engine.drain().alerts
    assert "acked by maria" in acked.pop("message")
    firing.pop("message")
    assert acked == {
        **firing,
        "state": "acknowledged",
        "acked_by": "maria",
        "acked_at_ms": 5000,
        "at_ms": 5000,  # the history shows the ack at its own time, not the alert's
    }


def _reading(engine: Engine, seq: int, seconds: float, value: float) -> None:
    ts_ms = int(seconds * 1000)
    engine.reading(Reading("T1", 7, 1, seq, ts_ms, {L: value}), ts_ms)


def test_a_disabled_train_keeps_no_rule_pending_and_a_clear_starts_afresh() -> None:
    """The README's story: flagged and disabled, cooled, cleared, enabled, and it stays so."""
    slow = {**HOT, "name": "slow", "for": "5s", "flag": False}  # pending when the train stops
    engine = _engine({**HOT, "severity": "critical"}, slow, disable_train=True)
    _reading(engine, 0, 0, 130)
    _reading(engine, 1, 1, 130)  # in flight after the disable: starts nothing new
    out = engine.drain()
    assert [(a["rule"], a["state"]) for a in out.alerts] == [("hot", "firing")]
    assert [c["op"] for c in out.commands] == ["disable"]
    assert engine.store.rule("T1", "slow", 7, L).state == "inactive"
    engine.status("T1", 7, {"state": "disabled"}, 2_000)
    engine.action({"action": "clear", "train_id": "T1", "by": "maria", "at_ms": 300_000})
    out = engine.drain()
    (resolved,) = out.alerts
    assert (resolved["state"], resolved["cleared_by"], resolved["cleared_at_ms"]) == (
        "resolved",
        "maria",
        300_000,
    )
    assert "cleared by maria" in resolved["message"]
    assert [c["op"] for c in out.commands] == ["enable"]
    engine.status("T1", 7, {"state": "online"}, 301_000)
    for seq, seconds in enumerate(range(302, 320), start=2):
        _reading(engine, seq, seconds, 40)  # it cooled while it stood: enabled, and stays so
    assert not engine.drain()


def test_a_condition_still_there_after_the_clear_fires_again_linked_to_it() -> None:
    engine = _engine({**HOT, "for": "5s", "severity": "critical"}, disable_train=True)
    for seq in range(6):
        _reading(engine, seq, seq, 130)
    engine.drain()
    engine.action({"action": "clear", "train_id": "T1", "by": "maria", "at_ms": 10_000})
    engine.drain()
    for seq, seconds in enumerate(range(11, 17), start=6):
        _reading(engine, seq, seconds, 130)
    (again,) = engine.drain().alerts
    # from fresh rule state: `for` counted from the first reading after the clear
    assert (again["state"], again["ts_ms"], again["since_ms"]) == ("firing", 16_000, 11_000)
    assert again["after_clear_ms"] == 10_000
    assert "again after the clear by maria" in again["message"]


def test_a_disabled_device_keeps_no_rule_pending() -> None:
    engine = _engine({**HOT, "for": "5s"})
    _reading(engine, 0, 0, 130)
    assert engine.store.rule("T1", "hot", 7, L).state == "pending"
    engine.status("T1", 7, {"state": "disabled"}, 1_000)
    assert engine.store.rule("T1", "hot", 7, L).state == "inactive"
    _reading(engine, 1, 2, 130)  # still in flight
    engine.status("T1", 7, {"state": "online"}, 100_000)
    _reading(engine, 2, 100, 130)
    assert not engine.drain().alerts  # pending since 100 s, not since 0 s
    _reading(engine, 3, 105, 130)
    assert [a["since_ms"] for a in engine.drain().alerts] == [100_000]


TWO_RULES = ({**HOT, "flag": False}, {**HOT, "name": "hotter", "above": 125, "flag": False})
# (case, policy, readings of the left bearing at 0, 1, 2... s, escalated per firing event)
ESCALATION: list[tuple[str, dict[str, Any], list[float], list[bool]]] = [
    ("no policy: never", {}, [130, 100, 130], [False, False, False, False]),
    ("one burst of two rules is one alarm", {"escalate_within": "1h"}, [130], [False, False]),
    (
        "a second alarm within the window",
        {"escalate_within": "1h"},
        [130, 100, 122],
        [False, False, True],
    ),
    (
        "a second alarm after the window",
        {"escalate_within": "1s"},
        [130, 100, 100, 122],
        [False, False, False],
    ),
]


@pytest.mark.parametrize(
    ("policy", "left", "escalated"), [c[1:] for c in ESCALATION], ids=[c[0] for c in ESCALATION]
)
def test_escalation(policy: dict[str, Any], left: list[float], escalated: list[bool]) -> None:
    engine = _engine(*TWO_RULES, **policy)
    firing = [a for a in _feed(engine, _series(L, left)).alerts if a["state"] == "firing"]
    assert [a["escalated"] for a in firing] == escalated
    assert [a["severity"] for a in firing] == ["critical" if e else "warning" for e in escalated]


def test_an_escalated_alarm_flags_and_disables_the_train() -> None:
    engine = _engine(*TWO_RULES, escalate_within="30m", disable_train=True)
    out = _feed(engine, _series(L, [130, 100, 122]))
    assert [m["reason"] for m in out.maintenance] == ["T1/hot/7/bearing_left_temp"]
    assert [c["op"] for c in out.commands] == ["disable"]
    assert "escalated: second alarm of T1 within 1800 s" in out.alerts[-1]["message"]


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
