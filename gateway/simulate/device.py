"""One simulated device of the fast mode: sensor model, sequence numbers, scenarios, commands.

The device behaves as the firmware does on the wire: wire-format v2 readings with a boot id
chosen at start and a sequence number counting from 0, a retained JSON status with the
firmware's fields (no `heap`: it has no MicroPython heap; no `rssi`: no radio; `cfg` 0: it
does not read the retained config topic), and replies to `disable`/`enable`/`reboot`/`identify`
commands. An `ota` offer is refused as an update client refuses one (`"ota": "refused"`), so
that `trackside ota push` ends at once for a simulated device. Publishing is left to the
caller.
"""

from __future__ import annotations

import json
import random
import time
from importlib.metadata import PackageNotFoundError, version

from firmware import wire
from firmware.model import (
    _BEARING_TAU_S,
    _ENGINE_HOT,
    _ENGINE_TAU_S,
    _STOP,
    TrainModel,
)
from gateway.simulate.fleet import DeviceSpec
from gateway.simulate.scenarios import CLOCK_SKEW_MS, MALFORMED_EVERY, malformed_frame

__all__ = ["FIRMWARE_VERSION", "OPS", "SimDevice", "topic"]

OPS = ("disable", "enable", "reboot", "identify", "ota")
_DWELL_AFTER_HOLD_S = 30.0  # a released train waits this long, then departs

try:
    FIRMWARE_VERSION = version("trackside")
except PackageNotFoundError:  # running from a checkout that was never installed
    FIRMWARE_VERSION = "0.0.0"

# (name, scale, lowest, highest) of every channel, in wire order
_SCALING = [
    (name, scale, -32768 if code == "h" else 0, 32767 if code == "h" else 65535)
    for name, code, scale in wire.CHANNELS
]


def topic(prefix: str, train_id: str, device_id: int, leaf: str) -> str:
    """`{prefix}/v1/{train_id}/{device_id}/{leaf}`."""
    return f"{prefix}/v1/{train_id}/{device_id}/{leaf}"


class HeldTrainModel(TrainModel):
    """The train model, plus what a disabled train does: it is held where it stands.

    While held the train stands still with its engine off, and the fault that had it stopped
    counts as dealt with (the simulator's stand-in for the inspection the maintenance flag
    asks for): the fault's extra heat and vibration fade with the bearings' time constant, so
    a train held for about five minutes is back under every default bearing level, and runs
    healthy once released. Kept out of firmware/model.py, which the boards also run: the
    boards have no use for it and every byte of theirs counts.
    """

    held = False

    def hold(self) -> None:
        """Stop the train where it stands (its board was disabled); its fault is over."""
        self.held = True
        self._fault = -1
        self.fault = None

    def release(self) -> None:
        """Back in service (its board was enabled)."""
        self.held = False

    def step(self, dt_s: float) -> None:
        """Advance by `dt_s`; a held train stays put, cools and loses its fault's effects."""
        if self.held:
            self.speed, self._phase, self._phase_left = 0.0, _STOP, _DWELL_AFTER_HOLD_S
        super().step(dt_s)
        if self.held:  # engine off: the coolant falls towards ambient as well
            a = dt_s / (_ENGINE_TAU_S + dt_s)
            self.engine += (self.ambient - _ENGINE_HOT) * a
        if self._fault < 0:
            a = dt_s / (_BEARING_TAU_S + dt_s)
            self._extra_left -= self._extra_left * a
            self._vibration_factor -= (self._vibration_factor - 1) * a


class SimDevice:
    """A device in the fast simulator; `reading()` advances its model by one sample."""

    def __init__(self, spec: DeviceSpec, prefix: str, step_s: float) -> None:
        self.spec = spec
        self.train_id = spec.train_id
        self.device_id = spec.device_id
        self.telemetry_topic = topic(prefix, spec.train_id, spec.device_id, "telemetry")
        self.status_topic = topic(prefix, spec.train_id, spec.device_id, "status")
        self.reply_topic = topic(prefix, spec.train_id, spec.device_id, "reply")
        self.enabled = True
        self._step_s = step_s  # simulated seconds between two readings
        self._model = HeldTrainModel(spec.seed, spec.fault, spec.fault_start_s)
        self._rng = random.Random(spec.seed)
        self._skew_at = spec.scenarios.get("clock_skew")
        self._malformed_at = spec.scenarios.get("malformed_frames")
        self._started = time.monotonic()
        self.boot_id = 0
        self.seq = 0
        self.reboot()

    @property
    def sim_time_s(self) -> float:
        """Simulated seconds since the device started."""
        return float(self._model.t)

    def reboot(self) -> None:
        """A new boot: a fresh random boot id, sequence numbers from 0 again."""
        self.boot_id = random.getrandbits(16)
        self.seq = 0
        self._started = time.monotonic()

    def reading(self, now_ms: int) -> tuple[bytes, bytes | None]:
        """Step the model and encode the next reading; also a malformed frame when it is due."""
        self._model.step(self._step_s)
        values = self._model.values()
        scaled = {}
        for name, scale, lo, hi in _SCALING:
            value = values.get(name)
            if value is not None:
                scaled[name] = min(hi, max(lo, round(value * scale)))
        t = self._model.t
        if self._skew_at is not None and t >= self._skew_at:
            now_ms = max(0, now_ms + CLOCK_SKEW_MS)
        frame = wire.encode(self.device_id, self.boot_id, self.seq, now_ms, scaled)
        self.seq += 1
        broken = None
        if (
            self._malformed_at is not None
            and t >= self._malformed_at
            and self.seq % MALFORMED_EVERY == 0
        ):
            broken = malformed_frame(frame, self.seq // MALFORMED_EVERY, self._rng)
        return frame, broken

    def rest(self) -> None:
        """One sample period of a disabled device: no reading, but time goes on (it cools)."""
        self._model.step(self._step_s)

    def channel(self, name: str) -> float | None:
        """A channel's value now, in its unit (for tests and the demo's story)."""
        return self._model.values().get(name)

    def status(self, state: str | None = None) -> bytes:
        """The retained status JSON; `state` defaults to online or disabled."""
        return json.dumps(
            {
                "state": state or ("online" if self.enabled else "disabled"),
                "boot_id": self.boot_id,
                "seq": self.seq,
                "dropped": 0,
                "outbox": 0,
                "uptime_s": int(time.monotonic() - self._started),
                "fw": FIRMWARE_VERSION,
                "app": FIRMWARE_VERSION,
                "slot": "a",
                "cfg": 0,
            },
            separators=(",", ":"),
        ).encode()

    def command(self, payload: bytes) -> tuple[bytes, bool]:
        """Apply one JSON command as the firmware does; the reply, and whether the state changed."""
        error = None
        request_id: object = None
        op: object = None
        try:
            command = json.loads(payload)
            request_id, op = command.get("id"), command.get("op")
        except (ValueError, AttributeError):
            error = "malformed command: expected a JSON object with id and op"
        if error is None and not isinstance(request_id, str):
            request_id, error = None, "malformed command: id must be a string"
        if error is None and op not in OPS:
            error = f"unknown op {op!r}: expected one of {', '.join(OPS)}"
        changed = False
        if error is None and op == "ota":
            error = "a simulated device cannot be updated over the air"
        if error is None and op == "reboot":
            self.reboot()
            changed = True
        elif error is None and op in ("disable", "enable") and self.enabled != (op == "enable"):
            self.enabled, changed = op == "enable", True
            if self.enabled:
                self._model.release()
            else:
                self._model.hold()
        reply: dict[str, object] = {
            "id": request_id,
            "ok": error is None,
            "state": "online" if self.enabled else "disabled",
        }
        if error is not None:
            reply["error"] = error
        if op == "ota":
            reply["ota"] = "refused"
        return json.dumps(reply, separators=(",", ":")).encode(), changed
