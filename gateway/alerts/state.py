"""What the alert engine remembers, and its JSON form in the compacted topics.

`trackside.alert-state` holds one record per `{train_id}/{rule}/{device_id}/{sensor}` (a
`RuleState`: a train may carry several boards that measure the same channel, each judged on its
own) and one per `{train_id}/_seen/{device_id}` (a `DeviceSeen`: the newest reading of a device,
for duplicate removal and stale detection). `trackside.maintenance` holds one `Maintenance` per
train. Only records that changed are written, once per transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import TypeAdapter

__all__ = [
    "SEEN",
    "DeviceSeen",
    "Maintenance",
    "RuleState",
    "StateName",
    "StateStore",
    "rule_key",
    "seen_key",
]

log = logging.getLogger(__name__)

StateName = Literal["inactive", "pending", "firing", "resolved"]
SEEN = "_seen"  # the reserved rule part of a DeviceSeen key; rule names cannot start with "_"


def rule_key(train_id: str, rule: str, device_id: int, sensor: str) -> str:
    """The key of a rule's state and of its alert events."""
    return f"{train_id}/{rule}/{device_id}/{sensor}"


def seen_key(train_id: str, device_id: int) -> str:
    """The key of a device's newest reading in the state topic."""
    return f"{train_id}/{SEEN}/{device_id}"


@dataclass
class RuleState:
    """One rule for one sensor of one device: inactive -> pending -> firing -> resolved."""

    train_id: str
    rule: str
    device_id: int
    sensor: str
    state: StateName = "inactive"
    since_ms: int | None = None
    value: float | None = None
    ts_ms: int | None = None
    ref_ts_ms: int | None = None  # rate rules: the reading the next rise is measured from
    ref_value: float | None = None
    acked_by: str | None = None
    acked_at_ms: int | None = None
    fired_ms: int | None = None  # when it last fired: escalation looks back at it
    escalated: bool = False  # raised as critical: a second alarm of its train (policy)

    @property
    def key(self) -> str:
        """`{train_id}/{rule}/{device_id}/{sensor}`."""
        return rule_key(self.train_id, self.rule, self.device_id, self.sensor)


@dataclass
class DeviceSeen:
    """The newest reading of one device: duplicates are at or below (boot_id, seq)."""

    train_id: str
    device_id: int
    boot_id: int
    seq: int
    arrival_ms: int  # the Kafka record time, so stale detection needs no device clock
    disabled: bool = False  # silent on purpose (its status says so): never stale


@dataclass
class Maintenance:
    """A train's maintenance flag, as in `trackside.maintenance`."""

    train_id: str
    flagged: bool
    reason: str | None
    since_ms: int
    by: str
    disabled: bool = False


@dataclass
class StateStore:
    """Every rule state, device and maintenance flag, with the keys changed since `take_dirty`."""

    rules: dict[str, RuleState] = field(default_factory=dict)
    devices: dict[tuple[str, int], DeviceSeen] = field(default_factory=dict)
    maintenance: dict[str, Maintenance] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    # Counts the times states were replaced or dropped wholesale (a restore, a partition
    # moving away): the engine's shortcuts to the states of a device are then looked up again.
    generation: int = field(default=0, compare=False)

    def rule(self, train_id: str, rule: str, device_id: int, sensor: str) -> RuleState:
        """The state of `rule` for `sensor` of one device, inactive when never seen."""
        key = rule_key(train_id, rule, device_id, sensor)
        state = self.rules.get(key)
        if state is None:
            state = self.rules[key] = RuleState(train_id, rule, device_id, sensor)
        return state

    def touch(self, key: str) -> None:
        """Mark the state under `key` as changed."""
        self.dirty.add(key)

    def take_dirty(self) -> list[tuple[str, dict[str, Any]]]:
        """The changed state records as (key, value) and forget that they changed."""
        records: list[tuple[str, dict[str, Any]]] = []
        # A copy of the instance's fields (flat: numbers and strings), as `asdict` would
        # make, at a 25th of its cost: `asdict` recursed into every field and was 9-11 % of
        # the service's time over a backlog.
        for key in sorted(self.dirty):
            train_id, rule, sensor = key.split("/", 2)
            if rule == SEEN:
                records.append((key, dict(vars(self.devices[(train_id, int(sensor))]))))
            else:
                records.append((key, dict(vars(self.rules[key]))))
        self.dirty.clear()
        return records

    def restore_state(self, key: str, value: bytes) -> None:
        """Load one record of the alert-state topic (the newest per key wins).

        Raises ValueError, naming what is wrong, for a record that is not a state.
        """
        parts = key.split("/", 2)
        if len(parts) != 3:
            raise ValueError(f"key {key!r} is not train/rule/sensor")
        if parts[1] == SEEN:
            seen = _DEVICE_SEEN.validate_json(value)
            if seen_key(seen.train_id, seen.device_id) != key:
                raise ValueError(f"key {key!r} does not match its record")
            self.devices[(seen.train_id, seen.device_id)] = seen
        else:
            state = _RULE_STATE.validate_json(value)
            if state.key == key:
                self.generation += 1
                self.rules[key] = state
            else:  # written under an earlier key layout: its state is not this one's
                log.info("ignored the alert state under %r (key layout of an earlier release)", key)

    def update(self, other: StateStore) -> None:
        """Add the states of `other` (the partitions just restored) to these."""
        self.generation += 1
        self.rules.update(other.rules)
        self.devices.update(other.devices)
        self.maintenance.update(other.maintenance)

    def drop(self, gone: Callable[[str], bool]) -> None:
        """Forget every state of the trains for which `gone(train_id)` holds (their partition
        moved to another instance, which restores them from Kafka)."""
        self.generation += 1
        self.rules = {k: s for k, s in self.rules.items() if not gone(s.train_id)}
        self.devices = {k: d for k, d in self.devices.items() if not gone(d.train_id)}
        self.maintenance = {k: m for k, m in self.maintenance.items() if not gone(k)}
        self.dirty = {k for k in self.dirty if not gone(k.split("/", 1)[0])}

    def restore_maintenance(self, value: bytes) -> None:
        """Load one record of the maintenance topic; ValueError if it is not one."""
        flag = _MAINTENANCE.validate_json(value)
        self.maintenance[flag.train_id] = flag


# Restore validates types too: a record that loads with a wrong type would fail later, inside
# the engine, on every restart.
_DEVICE_SEEN = TypeAdapter(DeviceSeen)
_RULE_STATE = TypeAdapter(RuleState)
_MAINTENANCE = TypeAdapter(Maintenance)
