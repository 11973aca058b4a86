"""The alert rules as the desk sees them: the levels drawn on each channel's chart, and alert
events completed with the rule's unit, description and runbook.

The alert service puts `unit`, `description`, `runbook` and `clear` into its alert events; older
events (and services) lack them, so `RuleBook.complete` fills what is missing from the rule
file the dashboard loads itself. Nothing here changes a field an event already carries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.alerts.rules import (
    UNITS,
    PairRule,
    RateRule,
    RuleError,
    StaleRule,
    ThresholdRule,
    load_rules,
)
from gateway.dashboard import DashboardError

__all__ = ["CHANNEL_NAMES", "RuleBook", "load_rule_book"]

JsonObject = dict[str, Any]
AnyRule = ThresholdRule | RateRule | PairRule | StaleRule

# What the desk calls each wire channel (docs/wire-format.md), for the plain-language line.
CHANNEL_NAMES = {
    "engine_temp": "Engine",
    "bearing_left_temp": "Left axle-box bearing",
    "bearing_right_temp": "Right axle-box bearing",
    "vibration_rms": "Vibration",
    "speed": "Speed",
    "supply_voltage": "Supply voltage",
    "ambient_temp": "Ambient",
}


def _name(channel: str) -> str:
    return CHANNEL_NAMES.get(channel, channel)


def _number(value: float) -> str:
    """131.2 -> `131`, 2.35 -> `2.4`: the precision a desk reads at a glance."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


class RuleBook:
    """The rules of one rule file, by name and by channel."""

    def __init__(self, rules: list[AnyRule]) -> None:
        self.by_name = {rule.name: rule for rule in rules}

    def levels(self) -> JsonObject:
        """`GET /api/rules`: per channel, the levels of the rules that watch its value, and per
        rule its description and runbook."""
        channels: dict[str, list[JsonObject]] = {channel: [] for channel in UNITS}
        for rule in self.by_name.values():
            # Rates (per minute) and pair differences are not on a channel's scale.
            if isinstance(rule, ThresholdRule):
                for channel in rule.channels:
                    channels.setdefault(channel, []).append(
                        {
                            "rule": rule.name,
                            "severity": rule.severity,
                            "side": "above" if rule.above is not None else "below",
                            "level": rule.threshold,
                            "clear": rule.clear,
                            "relative_to": rule.relative_to,
                        }
                    )
        return {
            "channels": channels,
            "units": dict(UNITS),
            "names": dict(CHANNEL_NAMES),
            "rules": {
                rule.name: {
                    "kind": rule.kind,
                    "severity": rule.severity,
                    "description": rule.description,
                    "runbook": rule.runbook,
                }
                for rule in self.by_name.values()
            },
        }

    def complete(self, event: JsonObject, reading: float | None) -> JsonObject:
        """The event with `unit`, `description`, `runbook`, `clear` filled from its rule where
        missing, and `headline`: one line for people. `reading` is the sensor's own value at
        the event's time, when known (shown next to a value relative to ambient)."""
        rule = self.by_name.get(str(event.get("rule")))
        sensor = str(event.get("sensor") or "")
        filled = dict(event)
        if rule is not None:
            filled.setdefault("description", rule.description)
            filled.setdefault("runbook", rule.runbook)
            if not isinstance(rule, StaleRule):
                filled.setdefault("clear", rule.clear)
        filled.setdefault("unit", _unit(rule, sensor))
        filled["headline"] = _headline(rule, filled, reading)
        return filled


def _unit(rule: AnyRule | None, sensor: str) -> str:
    if isinstance(rule, StaleRule):
        return "s"
    unit = UNITS.get(sensor.split("-", 1)[0], "")
    return f"{unit}/min" if isinstance(rule, RateRule) and unit else unit


def _headline(rule: AnyRule | None, event: JsonObject, reading: float | None) -> str:
    """`Left axle-box bearing 136 degC, 111 over ambient - stop and inspect`."""
    value, unit, sensor = event.get("value"), str(event.get("unit") or ""), str(event["sensor"])
    if isinstance(rule, StaleRule) or not isinstance(value, int | float):
        line = str(event.get("message") or "")
    elif isinstance(rule, PairRule):
        first, _, second = sensor.partition("-")
        line = f"{_name(first)} and {_name(second).lower()} differ by {_number(value)} {unit}"
    elif isinstance(rule, RateRule):
        line = f"{_name(sensor)} rising {_number(value)} {unit}"
    elif isinstance(rule, ThresholdRule) and rule.relative_to is not None:
        relative = _name(rule.relative_to).lower()
        if reading is None:
            line = f"{_name(sensor)} {_number(value)} {unit} over {relative}"
        else:
            line = f"{_name(sensor)} {_number(reading)} {unit}, {_number(value)} over {relative}"
    else:
        line = f"{_name(sensor)} {_number(value)} {unit}".rstrip()
    runbook = str(event.get("runbook") or "")
    return f"{line} - {runbook}" if runbook and line else line or runbook


def load_rule_book(path: Path) -> RuleBook:
    """The rule file at `path`; DashboardError (naming file and key) when it is invalid."""
    try:
        rules = load_rules(path)
    except RuleError as exc:
        hint = "the dashboard draws its levels: fix it or give another --rules-file"
        raise DashboardError(f"{exc} ({hint})") from exc
    return RuleBook(list(rules.rules))
