"""Rule evaluation: readings, device statuses, operator actions and clock ticks in, records out.

Pure: no I/O. Time comes from the readings (`ts_ms`) for `for` durations and rates, and from
the caller (`tick(now_ms)`, the Kafka record time of a reading) for stale data. The same inputs
on the same restored state give the same outputs, which is what makes a replay after a crash
produce exactly the records the aborted transaction would have written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from gateway.alerts.rules import (
    UNITS,
    LevelRule,
    PairRule,
    RateRule,
    RuleSet,
    StaleRule,
    ThresholdRule,
)
from gateway.alerts.state import (
    DeviceSeen,
    Maintenance,
    RuleState,
    StateStore,
    rule_key,
    seen_key,
)

__all__ = ["Effects", "Engine", "Reading"]

log = logging.getLogger(__name__)

STALE_SENSOR = "readings"  # the sensor of a stale rule's state: what stopped coming
# Operator actions the dashboard records for maintenance windows (its silences).
WINDOW_ACTIONS = ("maintenance_window", "maintenance_window_end")
_LIVE = ("pending", "firing")  # rule states a reading may change without crossing a level


class Reading(NamedTuple):
    """One telemetry record, as the bridge's JSON converter writes it."""

    train_id: str
    device_id: int
    boot_id: int
    seq: int
    ts_ms: int
    values: dict[str, float]

    @classmethod
    def from_json(cls, data: bytes) -> Reading:
        """Parse a telemetry record; ValueError when it is not a reading."""
        try:
            try:
                raw = orjson.loads(data)
            except orjson.JSONDecodeError:  # NaN or Infinity, which only Python's json takes
                raw = json.loads(data)
            values = raw["values"]
            # The bridge writes floats; anything else is converted, or refused if it cannot be.
            if type(values) is not dict or not all(type(v) is float for v in values.values()):
                values = {str(k): float(v) for k, v in values.items()}
            return cls(
                str(raw["train_id"]),
                int(raw["device_id"]),
                int(raw["boot_id"]),
                int(raw["seq"]),
                int(raw["ts_ms"]),
                values,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a reading: {exc!r}") from exc


@dataclass
class Effects:
    """Records to write in one transaction (the changed states come from the store)."""

    alerts: list[dict[str, Any]] = field(default_factory=list)
    maintenance: list[dict[str, Any]] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.alerts or self.maintenance or self.commands)


class _Check(NamedTuple):
    """One quantity one rule measures in each reading: a channel (less `other`, for a
    threshold relative to it), the difference of a pair (`channel`, `other`), or a rise."""

    rule: ThresholdRule | RateRule | PairRule
    sensor: str  # the sensor part of its state's key
    channel: str
    other: str | None
    pair: bool
    rate: bool
    above: bool
    level: float  # the threshold


def _checks(rules: list[ThresholdRule | RateRule | PairRule]) -> list[_Check]:
    """The rules flattened to what each reading is checked for, in the rules' order."""
    checks: list[_Check] = []
    for rule in rules:
        level = (rule.above is not None, rule.threshold)
        if isinstance(rule, PairRule):
            checks += [_Check(rule, f"{a}-{b}", a, b, True, False, *level) for a, b in rule.pairs]
        elif isinstance(rule, RateRule):
            checks += [_Check(rule, c, c, None, False, True, *level) for c in rule.channels]
        else:
            checks += [
                _Check(rule, c, c, rule.relative_to, False, False, *level) for c in rule.channels
            ]
    return checks


@dataclass
class _Device:
    """A device's state keys and rule states, found once instead of on every reading."""

    seen_key: str
    stale_keys: list[str]
    states: list[RuleState | None]  # one per check, made on the first reading that has it


class Engine:
    """Evaluates every rule of a `RuleSet` against a `StateStore`; collects `Effects`."""

    def __init__(self, rules: RuleSet, store: StateStore | None = None) -> None:
        self.rules = rules
        self.store = store if store is not None else StateStore()
        self.level_rules = [r for r in rules.rules if not isinstance(r, StaleRule)]
        self.stale_rules = [r for r in rules.rules if isinstance(r, StaleRule)]
        self.by_name = {r.name: r for r in rules.rules}
        self.duplicates = 0
        self._out = Effects()
        self._checks = _checks(self.level_rules)
        self._devices: dict[tuple[str, int], _Device] = {}
        self._generation = self.store.generation

    def drain(self) -> Effects:
        """The effects collected since the last drain."""
        out, self._out = self._out, Effects()
        return out

    # -- inputs ---------------------------------------------------------------------------

    def reading(self, reading: Reading, arrival_ms: int) -> bool:
        """Evaluate one reading; False when it is a duplicate (same device, boot id, seq)."""
        store = self.store
        train_id, device_id, boot_id, seq, ts_ms, values = reading
        device = (train_id, device_id)
        seen = store.devices.get(device)
        if seen is None:
            seen = store.devices[device] = DeviceSeen(train_id, device_id, boot_id, seq, arrival_ms)
        elif seen.boot_id == boot_id and seq <= seen.seq:
            self.duplicates += 1
            return False
        else:
            seen.boot_id, seen.seq, seen.arrival_ms = boot_id, seq, arrival_ms
        mine = self._device(device)
        store.touch(mine.seen_key)
        # A disabled device's readings (still in flight when it stopped) may resolve alerts but
        # start none: its rules must not sit pending and fire on the first reading after enable.
        armed = not seen.disabled and not self._train_disabled(train_id)
        states = mine.states
        for i, (rule, sensor, channel, second, pair, rate, above, level) in enumerate(self._checks):
            measure = values.get(channel)
            if measure is None:
                continue
            if second is not None:
                other = values.get(second)
                if other is None:
                    continue
                measure = abs(measure - other) if pair else measure - other
            state = states[i]
            if state is None:
                state = states[i] = store.rule(train_id, rule.name, device_id, sensor)
            if rate:
                rise = self._rise(rule, state, measure, ts_ms)  # type: ignore[arg-type]
                if rise is None:
                    continue
                measure = rise
            # The usual reading: nothing pending or firing, nothing past the level.
            if state.state not in _LIVE and not (
                armed and (measure > level if above else measure < level)
            ):
                continue
            self._step(rule, state, measure, ts_ms, armed)
        for stale, key in zip(self.stale_rules, mine.stale_keys, strict=True):
            stale_state = store.rules.get(key)
            if stale_state is not None and stale_state.state == "firing":
                self._resolve(stale, stale_state, 0.0, ts_ms, "reports again")
        return True

    def _device(self, device: tuple[str, int]) -> _Device:
        if self._generation != self.store.generation:  # states restored or dropped
            self._devices.clear()
            self._generation = self.store.generation
        mine = self._devices.get(device)
        if mine is None:
            train_id, device_id = device
            mine = self._devices[device] = _Device(
                seen_key(train_id, device_id),
                [rule_key(train_id, r.name, device_id, STALE_SENSOR) for r in self.stale_rules],
                [None] * len(self._checks),
            )
        return mine

    def status(self, train_id: str, device_id: int, status: dict[str, Any], now_ms: int) -> None:
        """A device status; the last will (`offline`) fires the stale rules at once, and a
        disabled device is silent on purpose, so it is not stale while disabled."""
        seen = self.store.devices.get((train_id, device_id))
        if seen is not None and seen.disabled != (status.get("state") == "disabled"):
            seen.disabled = not seen.disabled
            seen.arrival_ms = now_ms  # silence counts from here, not from before it was disabled
            self.store.touch(seen_key(train_id, device_id))
            self._restart_rules(train_id, device_id)
        if status.get("state") != "offline":
            return
        silent_s = (now_ms - seen.arrival_ms) / 1000 if seen is not None else 0.0
        for rule in self.stale_rules:
            if rule.on_last_will:
                state = self.store.rule(train_id, rule.name, device_id, STALE_SENSOR)
                if state.state != "firing":
                    state.since_ms = seen.arrival_ms if seen is not None else now_ms
                    self._fire(rule, state, silent_s, now_ms, "went offline (last will)")

    def tick(self, now_ms: int) -> None:
        """Fire stale rules for devices silent for longer than their `after_s`."""
        for rule in self.stale_rules:
            after_ms = rule.after_s * 1000
            for seen in self.store.devices.values():
                silent_ms = now_ms - seen.arrival_ms
                if silent_ms < after_ms or seen.disabled:
                    continue
                state = self.store.rule(
                    seen.train_id, rule.name, seen.device_id, STALE_SENSOR
                )
                if state.state != "firing":
                    state.since_ms = seen.arrival_ms
                    self._fire(rule, state, silent_ms / 1000, now_ms, "sent nothing")

    def action(self, action: dict[str, Any]) -> None:
        """An operator action: `ack` an alert or `clear` a train's maintenance flag."""
        try:
            if action["action"] == "ack":
                self._ack(str(action["key"]), str(action["by"]), int(action["at_ms"]))
            elif action["action"] == "clear":
                self._clear(str(action["train_id"]), str(action["by"]), int(action["at_ms"]))
            elif action["action"] in WINDOW_ACTIONS:
                pass  # the record of who set a window; Alertmanager holds the silence itself
            else:
                log.warning("ignored an operator action of unknown kind %r", action["action"])
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignored a malformed operator action %r: %r", action, exc)

    # -- rules ----------------------------------------------------------------------------

    def _rise(self, rule: RateRule, state: RuleState, value: float, ts_ms: int) -> float | None:
        """Rise per minute since the reference reading, once `window_s` has passed."""
        ref_ts, ref_value = state.ref_ts_ms, state.ref_value
        if ref_ts is not None and ref_value is not None and ts_ms >= ref_ts:
            elapsed = ts_ms - ref_ts
            if elapsed < rule.window_s * 1000:
                return None
            rise: float | None = (value - ref_value) * 60_000 / elapsed
        else:
            rise = None  # the first reading, or the device clock went back: start again
        state.ref_ts_ms, state.ref_value = ts_ms, value
        self.store.touch(state.key)
        return rise

    def _step(
        self, rule: LevelRule, state: RuleState, measure: float, ts_ms: int, armed: bool
    ) -> None:
        if state.state == "firing":
            if rule.cleared(measure):
                self._resolve(rule, state, measure, ts_ms, "")
            return
        if not armed or not rule.raised(measure):
            if state.state == "pending":
                state.state, state.since_ms = "inactive", None
                self.store.touch(state.key)
            return
        if state.state != "pending" or state.since_ms is None or ts_ms < state.since_ms:
            state.state, state.since_ms = "pending", ts_ms
            self.store.touch(state.key)
        if ts_ms - state.since_ms >= rule.for_s * 1000:
            self._fire(rule, state, measure, ts_ms, "")

    # -- transitions ----------------------------------------------------------------------

    def _fire(
        self,
        rule: LevelRule | StaleRule,
        state: RuleState,
        value: float,
        ts_ms: int,
        what: str,
    ) -> None:
        escalated = not isinstance(rule, StaleRule) and self._second_alarm(state, ts_ms)
        state.state, state.value, state.ts_ms = "firing", value, ts_ms
        state.acked_by = state.acked_at_ms = None
        state.fired_ms, state.escalated = ts_ms, escalated
        self.store.touch(state.key)
        extra: dict[str, Any] = {}
        notes = [what] if what else []
        if escalated:
            window = self.rules.policy.escalate_within_s
            notes.append(f"escalated: second alarm of {state.train_id} within {window:g} s")
        cleared = self.store.maintenance.get(state.train_id)
        if cleared is not None and not cleared.flagged and cleared.by != "alerts":
            extra["after_clear_ms"] = cleared.since_ms  # the history links the two
            notes.append(f"again after the clear by {cleared.by}")
        message = _describe(rule, state, value, "; ".join(notes))
        self._alert(rule, state, "firing", message, ts_ms, extra)
        if self.rules.policy.flags(rule, escalated):
            self._flag(state.train_id, state.key, ts_ms)

    def _resolve(
        self,
        rule: LevelRule | StaleRule,
        state: RuleState,
        value: float,
        ts_ms: int,
        what: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        state.state, state.value, state.ts_ms = "resolved", value, ts_ms
        self.store.touch(state.key)
        message = _describe(rule, state, value, what or "back")
        self._alert(rule, state, "resolved", message, ts_ms, extra or {})

    def _alert(
        self,
        rule: LevelRule | StaleRule,
        state: RuleState,
        name: str,
        message: str,
        at_ms: int,
        extra: dict[str, Any],
    ) -> None:
        if isinstance(rule, StaleRule):
            threshold, clear, unit = rule.after_s, None, "s"
        else:
            threshold, clear = rule.threshold, rule.clear_level
            unit = UNITS.get(state.sensor.split("-", 1)[0], "")
            unit += "/min" if isinstance(rule, RateRule) else ""
        self._out.alerts.append(
            {
                "key": state.key,
                "train_id": state.train_id,
                "device_id": state.device_id,
                "rule": state.rule,
                "sensor": state.sensor,
                "severity": "critical" if state.escalated else rule.severity,
                "escalated": state.escalated,
                "flags": self.rules.policy.flags(rule, state.escalated),
                "state": name,
                "value": round(state.value, 3) if state.value is not None else None,
                "threshold": threshold,
                "clear": clear,
                "unit": unit,
                "ts_ms": state.ts_ms,
                "since_ms": state.since_ms,
                "at_ms": at_ms,  # when this event happened (an ack's own time, a clear's)
                "message": message,
                "description": rule.description,
                "runbook": rule.runbook,
                "acked_by": state.acked_by,
                "acked_at_ms": state.acked_at_ms,
                **extra,
            }
        )

    def _flag(self, train_id: str, reason: str, ts_ms: int) -> None:
        current = self.store.maintenance.get(train_id)
        if current is not None and current.flagged:
            return
        disable = self.rules.policy.disable_train
        flag = Maintenance(train_id, True, reason, ts_ms, "alerts", disable)
        self.store.maintenance[train_id] = flag
        self._out.maintenance.append(_flag_record(flag))
        if disable:
            self._command(train_id, "disable", ts_ms)

    def _ack(self, key: str, by: str, at_ms: int) -> None:
        state = self.store.rules.get(key)
        rule = self.by_name.get(state.rule) if state is not None else None
        if state is None or rule is None or state.state != "firing":
            log.warning("ignored an ack of %s: no such alert is firing", key)
            return
        state.acked_by, state.acked_at_ms = by, at_ms
        self.store.touch(key)
        value = state.value if state.value is not None else 0.0
        message = _describe(rule, state, value, f"acked by {by}")
        self._alert(rule, state, "acknowledged", message, at_ms, {})

    def _clear(self, train_id: str, by: str, at_ms: int) -> None:
        current = self.store.maintenance.get(train_id)
        if current is None or not current.flagged:
            log.warning("ignored a clear of train %s: it has no maintenance flag", train_id)
            return
        # The desk has dealt with the train: its alerts end here, under who cleared them, and
        # its rules start afresh; a condition still there fires again as a new alert.
        cleared = {"cleared_by": by, "cleared_at_ms": at_ms}
        for state in self._train_states(train_id):
            rule = self.by_name.get(state.rule)
            if rule is None or isinstance(rule, StaleRule):
                continue
            if state.state == "firing":
                value = state.value if state.value is not None else 0.0
                self._resolve(rule, state, value, at_ms, f"cleared by {by}", cleared)
            self._restart(state)
        flag = Maintenance(train_id, False, current.reason, at_ms, by, False)
        self.store.maintenance[train_id] = flag
        self._out.maintenance.append(_flag_record(flag))
        if current.disabled:
            self._command(train_id, "enable", at_ms)

    def _train_states(self, train_id: str) -> list[RuleState]:
        return [s for s in self.store.rules.values() if s.train_id == train_id]

    def _train_disabled(self, train_id: str) -> bool:
        flag = self.store.maintenance.get(train_id)
        return flag is not None and flag.flagged and flag.disabled

    def _restart(self, state: RuleState) -> None:
        """Forget a rule's pending start and rate reference (a firing state stays firing)."""
        if state.state == "pending":
            state.state, state.since_ms = "inactive", None
        state.ref_ts_ms = state.ref_value = None
        self.store.touch(state.key)

    def _restart_rules(self, train_id: str, device_id: int) -> None:
        for state in self._train_states(train_id):
            if state.device_id == device_id and state.sensor != STALE_SENSOR:
                self._restart(state)

    def _second_alarm(self, state: RuleState, ts_ms: int) -> bool:
        """True when `state` firing now is a new alarm of its train (nothing else of the train
        fires: not the rest of one burst) and the train had an alarm within the window."""
        window_s = self.rules.policy.escalate_within_s
        if window_s is None:
            return False
        others = [
            s for s in self._train_states(state.train_id) if s.sensor != STALE_SENSOR
        ]
        if any(s.state == "firing" for s in others if s is not state):
            return False
        return any(
            s.fired_ms is not None and 0 <= ts_ms - s.fired_ms <= window_s * 1000 for s in others
        )

    def _command(self, train_id: str, op: str, ts_ms: int) -> None:
        # The id is derived from the input, so a replay after a crash writes the same command.
        command_id = f"alerts-{train_id}-{op}-{ts_ms}"
        self._out.commands.append(
            {"train_id": train_id, "device_id": None, "op": op, "id": command_id}
        )


def _flag_record(flag: Maintenance) -> dict[str, Any]:
    return {
        "train_id": flag.train_id,
        "flagged": flag.flagged,
        "reason": flag.reason,
        "since_ms": flag.since_ms,
        "by": flag.by,
        "disabled": flag.disabled,
    }


def _describe(
    rule: LevelRule | StaleRule,
    state: RuleState,
    value: float,
    what: str,
) -> str:
    """One line for people: `bearing_left_temp 131.2 degC above 120.0 for 10 s`."""
    if isinstance(rule, StaleRule):
        device = f"device {state.device_id} of {state.train_id}"
        return f"{device} {what}" + (f" for {value:.0f} s" if what == "sent nothing" else "")
    if isinstance(rule, PairRule):
        unit = UNITS[state.sensor.split("-", 1)[0]]
        subject = f"{state.sensor.replace('-', ' vs ', 1)} differ by {value:.1f} {unit}"
    elif isinstance(rule, RateRule):
        subject = f"{state.sensor} rising {value:.1f} {UNITS[state.sensor]}/min"
    else:
        relative = rule.relative_to if isinstance(rule, ThresholdRule) else None
        over = f" over {relative}" if relative else ""
        subject = f"{state.sensor} {value:.1f} {UNITS[state.sensor]}{over}"
    side = "above" if rule.above is not None else "below"
    if what == "back":
        return f"{subject}, back past {rule.clear_level:g}"
    held = f" for {rule.for_s:g} s" if rule.for_s else ""
    line = f"{subject} {side} {rule.threshold:g}{held}"
    return f"{line} ({what})" if what else line
