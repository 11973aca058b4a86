"""Wire format v2 encoding on CPython: the shared vectors and out-of-range values
(decoding: tests/bridge/test_wire_decoder.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from firmware import wire

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "wire_v2.json").read_text())


@pytest.mark.parametrize(
    "vector", [v for v in VECTORS["valid"] if v.get("encodable", True)], ids=lambda v: v["name"]
)
def test_valid_vectors_encode(vector: dict[str, Any]) -> None:
    e = vector["expect"]
    frame = wire.encode(
        e["device_id"], e["boot_id"], e["seq"], e["timestamp_ms"], e["values"], e["flags"]
    )
    assert frame.hex() == vector["hex"]


def test_a_reading_of_every_channel_fits_32_bytes() -> None:
    every = {name: 1 for name, _, _ in wire.CHANNELS}
    assert len(wire.encode(1, 1, 1, 1, every)) == 32
    assert len(wire.encode(1, 1, 1, 1, dict(list(every.items())[:6]))) == 30  # the standard


def test_the_encoder_writes_a_one_byte_mask_so_the_table_has_seven_channels() -> None:
    # docs/wire-format.md: an eighth channel needs the encoder to write a second mask byte.
    assert len(wire.CHANNELS) <= 7


@pytest.mark.parametrize(
    ("field", "args"),
    [
        ("device_id", (2**32, 0, 0, 0, {})),
        ("boot_id", (0, -1, 0, 0, {})),
        ("seq", (0, 0, 2**32, 0, {})),
        ("timestamp_ms", (0, 0, 0, 2**48, {})),
        ("engine_temp", (0, 0, 0, 0, {"engine_temp": 32768})),
        ("speed", (0, 0, 0, 0, {"speed": -1})),
        ("supply_voltage", (0, 0, 0, 0, {"supply_voltage": 24.0})),
        ("unknown channel", (0, 0, 0, 0, {"oil_pressure": 1})),
        ("flags", (0, 0, 0, 0, {}, 16)),
    ],
)
def test_encode_rejects_out_of_range(field: str, args: tuple[Any, ...]) -> None:
    with pytest.raises(wire.WireError):
        wire.encode(*args)
