"""The device inventory: every device as its latest status describes it, with its desired
config version (config drift) and, where a rollout runs, its update's state.

Built from three topics: the device statuses (`trackside.device-status`, key
`{train_id}/{device_id}`, the firmware's status JSON), the desired configs
(`trackside.device-config`, gateway/devices_config.py) and the staged rollouts' progress
(`trackside.ota-progress`, gateway/ota/rollout.py: key `{rollout}/{train_id}/{device_id}`; a
device shows the newest record of any rollout). Invalid records are counted and skipped. The
reader thread applies records while the web server reads, so every method takes the lock.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from gateway.devices_config import drifts, parse_desired

__all__ = ["OTA_FIELDS", "STATUS_FIELDS", "Inventory"]

log = logging.getLogger(__name__)

# What the inventory shows of a device's rollout progress record.
OTA_FIELDS = ("rollout", "wave", "state", "detail", "at")
# What the inventory shows of a status, as the firmware sends it (docs/architecture.md).
STATUS_FIELDS = (
    "state", "board", "fw", "app", "slot", "boot_id", "uptime_s", "outbox", "dropped", "heap",
    "rssi", "cfg",
)


@dataclass
class _Device:
    train_id: str
    device_id: int
    status: dict[str, Any] = field(default_factory=dict)
    last_seen_ms: int | None = None
    desired: int | None = None
    ota: dict[str, Any] | None = None


class Inventory:
    """Every device seen in a status or named by a desired config."""

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected = 0
        self._devices: dict[tuple[str, int], _Device] = {}
        self._dirty: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def apply_status(self, key: bytes | None, value: bytes | None, timestamp_ms: int) -> bool:
        """A device-status record (a tombstone forgets the device's status)."""
        return self._apply(key, value, timestamp_ms, self._status)

    def apply_config(self, key: bytes | None, value: bytes | None, timestamp_ms: int) -> bool:
        """A desired-config record: the version the device should report."""
        return self._apply(key, value, timestamp_ms, self._config)

    def apply_ota(self, key: bytes | None, value: bytes | None, timestamp_ms: int) -> bool:
        """A rollout progress record: the device's update state, from the newest rollout
        (a tombstone clears it when it is that rollout's)."""
        rollout, _, device_key = (key or b"").partition(b"/")
        return self._apply(device_key, value, timestamp_ms, self._ota, rollout.decode())

    def _apply(
        self, key: bytes | None, value: bytes | None, timestamp_ms: int, how: Any, *extra: Any
    ) -> bool:
        try:
            train_id, device_text = (key or b"").decode().rsplit("/", 1)
            ident = (train_id, int(device_text))
            with self._lock:
                device = self._devices.get(ident) or _Device(*ident)
                applied = bool(how(device, value, timestamp_ms, *extra))
                if applied:
                    self._devices[ident] = device
                    self._dirty.add(ident)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.debug("skipped an inventory record: %s", exc)
            applied = False
        if applied:
            self.accepted += 1
        else:
            self.rejected += 1
        return applied

    @staticmethod
    def _status(device: _Device, value: bytes | None, timestamp_ms: int) -> bool:
        if value is None:
            device.status = {}
            return True
        status = json.loads(value)
        if not isinstance(status, dict) or not isinstance(status.get("state"), str):
            return False
        if status["state"] == "offline":  # the last will: the rest is what it had before
            device.status = {**device.status, "state": "offline"}
        else:
            device.status = {k: status[k] for k in STATUS_FIELDS if k in status}
            device.last_seen_ms = max(device.last_seen_ms or 0, timestamp_ms)
        return True

    @staticmethod
    def _config(device: _Device, value: bytes | None, _timestamp_ms: int) -> bool:
        desired = parse_desired(value)
        device.desired = desired.version if desired else None
        return True

    @staticmethod
    def _ota(device: _Device, value: bytes | None, _timestamp_ms: int, rollout: str) -> bool:
        if value is None:
            if device.ota is not None and device.ota.get("rollout") == rollout:
                device.ota = None
            return True
        record = json.loads(value)
        if not isinstance(record, dict) or not isinstance(record.get("state"), str):
            return False
        at = record.get("at")
        if device.ota is not None and isinstance(at, int | float) and at < device.ota.get("at", 0):
            return True  # an older rollout's record, read after a newer one
        device.ota = {k: record[k] for k in OTA_FIELDS if k in record}
        return True

    def _row(self, device: _Device) -> dict[str, Any]:
        reported = device.status.get("cfg")
        reported = reported if isinstance(reported, int) else None
        return {
            "key": f"{device.train_id}/{device.device_id}",
            "train_id": device.train_id,
            "device_id": device.device_id,
            **{name: device.status.get(name) for name in STATUS_FIELDS},
            "last_seen_ms": device.last_seen_ms,
            "config_desired": device.desired,
            "config_drift": drifts(device.desired, reported),
            "ota": device.ota,
        }

    def devices(self) -> list[dict[str, Any]]:
        """One row per device, by train and device id."""
        with self._lock:
            return [self._row(self._devices[ident]) for ident in sorted(self._devices)]

    def take_changes(self) -> list[dict[str, Any]]:
        """The rows that changed since the previous call."""
        with self._lock:
            rows = [self._row(self._devices[ident]) for ident in sorted(self._dirty)]
            self._dirty.clear()
        return rows
