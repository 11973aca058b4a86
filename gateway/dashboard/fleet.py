"""The fleet view model: the state of every train, built from the records of four topics.

`Fleet.apply` takes one Kafka record (topic kind, key, value bytes, record timestamp) and
updates the view; invalid records are counted and skipped, never raised. Memory is bounded:
`history` values per channel and train, and before them an hour at `COARSE_S` resolution (the
lowest and the highest value of each 30 s, so the train page's hour-long chart keeps every peak
for 2 x 120 points a channel); `ALERT_HISTORY` alert events per train. The reader thread
applies records while the web server reads snapshots, so every method takes the lock.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.dashboard.levels import RuleBook

__all__ = ["ACTIVE_STATES", "ALERT_HISTORY", "Changes", "Fleet", "RecordKind", "alert_order"]

log = logging.getLogger(__name__)

RecordKind = Literal["telemetry", "status", "alerts", "maintenance"]
ACTIVE_STATES = frozenset({"firing", "acknowledged"})
ALERT_HISTORY = 200
SEVERITY_ORDER = ("info", "warning", "critical")

JsonObject = dict[str, Any]


COARSE_S = 30  # one bucket of the hour before the recent values
COARSE_BUCKETS = 120  # an hour of them


@dataclass
class _Bucket:
    """The lowest and the highest value of one channel in one COARSE_S stretch."""

    start_ms: int
    low: tuple[int, float]
    high: tuple[int, float]

    def add(self, at_ms: int, value: float) -> None:
        if value < self.low[1]:
            self.low = (at_ms, value)
        if value > self.high[1]:
            self.high = (at_ms, value)

    def points(self) -> list[tuple[int, float]]:
        return sorted({self.low, self.high})


@dataclass
class _Train:
    train_id: str
    devices: dict[int, str] = field(default_factory=dict)
    last_seen_ms: int | None = None
    latest: dict[str, float] = field(default_factory=dict)
    channels: dict[str, deque[tuple[int, float]]] = field(default_factory=dict)
    coarse: dict[str, deque[_Bucket]] = field(default_factory=dict)
    maintenance: JsonObject | None = None
    alert_history: deque[JsonObject] = field(default_factory=lambda: deque(maxlen=ALERT_HISTORY))
    active: dict[str, JsonObject] = field(default_factory=dict)  # firing or acknowledged, by key
    # Recent (device_id, boot_id, seq): redelivered readings are not drawn twice.
    recent: deque[tuple[int, int, int]] = field(default_factory=deque)
    recent_set: set[tuple[int, int, int]] = field(default_factory=set)


@dataclass(frozen=True)
class Changes:
    """What changed since the last `take_changes`: train summaries and alert events."""

    trains: list[JsonObject]
    alerts: list[JsonObject]

    def __bool__(self) -> bool:
        return bool(self.trains or self.alerts)


class Fleet:
    """Trains, their devices, recent values, maintenance flags and alerts."""

    def __init__(self, history: int = 120, rules: RuleBook | None = None) -> None:
        self.history = history
        self.rules = rules
        self.accepted = 0
        self.rejected = 0
        self._trains: dict[str, _Train] = {}
        self._alerts: dict[str, JsonObject] = {}
        self._dirty_trains: set[str] = set()
        self._dirty_alerts: set[str] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._trains)

    def apply(
        self, kind: RecordKind, key: bytes | None, value: bytes | None, timestamp_ms: int
    ) -> bool:
        """Apply one record; False (and counted) when it does not fit the contract."""
        try:
            record = None if value is None else json.loads(value)
            text_key = None if key is None else key.decode()
            with self._lock:
                applied = _APPLY[kind](self, text_key, record, timestamp_ms)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.debug("skipped a %s record: %s", kind, exc)
            applied = False
        if applied:
            self.accepted += 1
        else:
            self.rejected += 1
        return applied

    def _train(self, train_id: str) -> _Train:
        if not isinstance(train_id, str) or not train_id:
            raise ValueError("train id missing")
        train = self._trains.get(train_id)
        if train is None:
            train = self._trains[train_id] = _Train(train_id)
        self._dirty_trains.add(train_id)
        return train

    def _apply_reading(self, _key: str | None, reading: Any, timestamp_ms: int) -> bool:
        values = {str(channel): float(raw) for channel, raw in reading["values"].items()}
        if not all(map(math.isfinite, values.values())):
            return False  # NaN and infinity have no JSON form for the page
        ident = (int(reading["device_id"]), int(reading["boot_id"]), int(reading["seq"]))
        at_ms = int(reading["ts_ms"]) if reading.get("wall_clock") else timestamp_ms
        train = self._train(reading["train_id"])
        if ident in train.recent_set:
            return True
        train.recent.append(ident)
        train.recent_set.add(ident)
        if len(train.recent) > 4 * self.history:
            train.recent_set.discard(train.recent.popleft())
        train.last_seen_ms = max(train.last_seen_ms or 0, timestamp_ms)
        train.devices.setdefault(ident[0], "online")
        for channel, number in values.items():
            train.latest[channel] = number
            points = train.channels.get(channel)
            if points is None:
                points = train.channels[channel] = deque(maxlen=self.history)
            points.append((at_ms, number))
            _add_coarse(train.coarse, channel, at_ms, number)
        return True

    def _apply_status(self, key: str | None, status: Any, timestamp_ms: int) -> bool:
        if key is None or "/" not in key:
            return False
        train_id, device_text = key.rsplit("/", 1)
        device = int(device_text)
        if status is None:
            self._train(train_id).devices.pop(device, None)
            return True
        state = status["state"]
        if state not in ("online", "offline", "disabled"):
            return False
        train = self._train(train_id)
        train.devices[device] = state
        if state == "online":
            train.last_seen_ms = max(train.last_seen_ms or 0, timestamp_ms)
        return True

    def _apply_alert(self, _key: str | None, event: Any, _timestamp_ms: int) -> bool:
        alert_key = event["key"]
        if event["state"] not in ("firing", "resolved", "acknowledged"):
            return False
        if not isinstance(alert_key, str) or not isinstance(event["train_id"], str):
            return False
        train = self._train(event["train_id"])
        if self.rules is not None:
            reading = _value_at(train, event["sensor"], event.get("ts_ms"))
            event = self.rules.complete(event, reading)
        train.alert_history.append(event)
        if event["state"] in ACTIVE_STATES:
            train.active[alert_key] = event
        else:
            train.active.pop(alert_key, None)
        self._alerts[alert_key] = event
        self._dirty_alerts.add(alert_key)
        return True

    def _apply_maintenance(self, key: str | None, record: Any, _timestamp_ms: int) -> bool:
        if record is None:
            if key is None:
                return False
            self._train(key).maintenance = None
            return True
        if not isinstance(record["flagged"], bool):
            return False
        self._train(record["train_id"]).maintenance = record
        return True

    def _summary(self, train: _Train) -> JsonObject:
        active = train.active
        severities = [a.get("severity") for a in active.values()]
        ranked = [s for s in SEVERITY_ORDER if s in severities]
        maintenance = train.maintenance
        return {
            "train_id": train.train_id,
            "status": _train_status(train.devices),
            "devices": {str(d): s for d, s in sorted(train.devices.items())},
            "last_seen_ms": train.last_seen_ms,
            "values": dict(train.latest),
            "flagged": bool(maintenance and maintenance["flagged"]),
            "maintenance": maintenance,
            "active_alerts": len(active),
            "worst_severity": ranked[-1] if ranked else None,
        }

    def fleet(self) -> list[JsonObject]:
        """A summary of every train, by train id."""
        with self._lock:
            return [self._summary(self._trains[t]) for t in sorted(self._trains)]

    def train(self, train_id: str) -> JsonObject | None:
        """One train in full: summary, value history per channel, alert events newest first."""
        with self._lock:
            train = self._trains.get(train_id)
            if train is None:
                return None
            return {
                **self._summary(train),
                "channels": {
                    c: [list(p) for p in _chart_points(train, c)] for c in sorted(train.channels)
                },
                "alert_history": list(reversed(train.alert_history)),
            }

    def alerts(self, active_only: bool = True) -> list[JsonObject]:
        """The latest event of each alert key (only firing or acknowledged ones by default)."""
        with self._lock:
            events = [
                e for e in self._alerts.values() if not active_only or e["state"] in ACTIVE_STATES
            ]
        return sorted(events, key=alert_order)

    def alert(self, key: str) -> JsonObject | None:
        """The latest event of one alert key."""
        with self._lock:
            return self._alerts.get(key)

    def take_changes(self) -> Changes:
        """What changed since the previous call (summaries and latest alert events)."""
        with self._lock:
            trains = [self._summary(self._trains[t]) for t in sorted(self._dirty_trains)]
            alerts = [self._alerts[k] for k in sorted(self._dirty_alerts)]
            self._dirty_trains.clear()
            self._dirty_alerts.clear()
        return Changes(trains, alerts)


def alert_order(event: JsonObject) -> tuple[int, int, str]:
    """Sort key of alerts for the desk: most severe first, then the newest first."""
    severity = event.get("severity")
    rank = SEVERITY_ORDER.index(severity) if severity in SEVERITY_ORDER else -1
    return (-rank, -int(event.get("since_ms") or 0), str(event["key"]))


def _add_coarse(coarse: dict[str, deque[_Bucket]], channel: str, at_ms: int, value: float) -> None:
    buckets = coarse.get(channel)
    if buckets is None:
        buckets = coarse[channel] = deque(maxlen=COARSE_BUCKETS)
    start_ms = at_ms - at_ms % (COARSE_S * 1000)
    if buckets and buckets[-1].start_ms == start_ms:
        buckets[-1].add(at_ms, value)
    elif not buckets or start_ms > buckets[-1].start_ms:  # a late reading only updates "now"
        buckets.append(_Bucket(start_ms, (at_ms, value), (at_ms, value)))


def _chart_points(train: _Train, channel: str) -> list[tuple[int, float]]:
    """The hour before the recent values at COARSE_S resolution, then the recent values."""
    recent = train.channels[channel]
    first_ms = recent[0][0] if recent else None
    older = [
        point
        for bucket in train.coarse.get(channel, ())
        for point in bucket.points()
        if first_ms is None or point[0] < first_ms
    ]
    return older + list(recent)


def _value_at(train: _Train, sensor: Any, ts_ms: Any) -> float | None:
    """The sensor's own reading at `ts_ms`, if it is still among the kept values."""
    points = train.channels.get(sensor) if isinstance(sensor, str) else None
    for at_ms, value in reversed(points or ()):
        if at_ms == ts_ms:
            return value
    return None


def _train_status(devices: dict[int, str]) -> str:
    states = set(devices.values())
    for state in ("online", "disabled", "offline"):
        if state in states:
            return state
    return "unknown"


_APPLY = {
    "telemetry": Fleet._apply_reading,
    "status": Fleet._apply_status,
    "alerts": Fleet._apply_alert,
    "maintenance": Fleet._apply_maintenance,
}
