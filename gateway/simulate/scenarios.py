"""Named fault scenarios: the sensor model's faults plus the simulator's own.

The sensor model (`firmware/model.py`, the same code the unix firmware runs) knows the physical
faults. The simulator adds faults of the device and the network:

- `clock_skew`: from its start the device's clock runs `CLOCK_SKEW_MS` behind (time sync lost).
- `malformed_frames`: from its start every `MALFORMED_EVERY`th reading is followed by a frame
  that `bridge.wire_decoder.decode` rejects (truncated, wrong version, oversized, trailing bytes,
  random bytes), on the device's own telemetry topic.
- `reconnect_storm`: fleet-wide; at its start every MQTT connection drops and reconnects at once.
"""

from __future__ import annotations

import random

from firmware import wire
from firmware.model import FAULTS

__all__ = [
    "CLOCK_SKEW_MS",
    "DEVICE_SCENARIOS",
    "FLEET_SCENARIOS",
    "MALFORMED_EVERY",
    "MODEL_FAULTS",
    "SCENARIOS",
    "malformed_frame",
]

MODEL_FAULTS: tuple[str, ...] = tuple(FAULTS)
DEVICE_SCENARIOS = ("clock_skew", "malformed_frames")
FLEET_SCENARIOS = ("reconnect_storm",)
SCENARIOS = MODEL_FAULTS + DEVICE_SCENARIOS + FLEET_SCENARIOS

CLOCK_SKEW_MS = -600_000  # ten minutes behind: readings look late to the gateway
MALFORMED_EVERY = 5


def malformed_frame(good: bytes, n: int, rng: random.Random) -> bytes:
    """The n-th broken variant of a good frame; each kind fails `decode` for its reason."""
    kind = n % 5
    if kind == 0:
        return good[: rng.randrange(1, wire.HEADER_SIZE)]  # truncated inside the header
    if kind == 1:  # unsupported version: any but wire.VERSION in the high 4 bits of byte 0
        version = rng.choice([v for v in range(16) if v != wire.VERSION])
        return bytes([version << 4 | good[0] & 0x0F]) + good[1:]
    if kind == 2:
        return good + bytes(wire.MAX_FRAME + 1 - len(good))  # oversized
    if kind == 3:
        return good + b"\x00"  # trailing bytes after the last known channel
    # random bytes that never start with a valid version byte
    return bytes([0]) + rng.randbytes(rng.randrange(0, wire.MAX_FRAME))
