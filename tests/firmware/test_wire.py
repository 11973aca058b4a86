"""Wire format v1 on CPython: the shared vectors, round trips, and hostile input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware import wire

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "wire_v1.json").read_text())
_RANGES = {"h": (-32768, 32767), "H": (0, 65535)}

channel_values = st.fixed_dictionaries(
    {},
    optional={name: st.integers(*_RANGES[code]) for name, code, _ in wire.CHANNELS},
)
readings = st.tuples(
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**16 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, wire.MAX_TIMESTAMP),
    channel_values,
    st.integers(0, 255),
)


def _expect(vector: dict[str, Any]) -> tuple[int, int, int, int, int, dict[str, int]]:
    e = vector["expect"]
    return (e["flags"], e["device_id"], e["boot_id"], e["seq"], e["timestamp_ms"], e["values"])


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_valid_vectors_decode_and_encode(vector: dict[str, Any]) -> None:
    frame = bytes.fromhex(vector["hex"])
    assert wire.decode(frame) == _expect(vector)
    if vector.get("encodable", True):
        flags, device_id, boot_id, seq, ts, values = _expect(vector)
        assert wire.encode(device_id, boot_id, seq, ts, values, flags).hex() == vector["hex"]


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vectors_raise_wire_error(vector: dict[str, Any]) -> None:
    with pytest.raises(wire.WireError, match=f"^{vector['error']}"):
        wire.decode(bytes.fromhex(vector["hex"]))


def test_standard_reading_fits_32_bytes() -> None:
    standard = {name: 1 for name, _, _ in wire.CHANNELS[:6]}
    assert len(wire.encode(1, 1, 1, 1, standard)) == 32


@given(readings)
def test_round_trip(reading: tuple[int, int, int, int, dict[str, int], int]) -> None:
    device_id, boot_id, seq, ts, values, flags = reading
    frame = wire.encode(device_id, boot_id, seq, ts, values, flags)
    assert wire.decode(frame) == (flags, device_id, boot_id, seq, ts, values)
    assert wire.decode(bytearray(frame)) == wire.decode(memoryview(frame))


@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_wire_error_only(data: bytes) -> None:
    try:
        values = wire.decode(data)[5]
    except wire.WireError:
        return
    assert len(data) <= wire.MAX_FRAME
    assert set(values) <= set(wire.CHANNEL_IDS)


@given(readings, st.data())
def test_every_truncation_raises(reading: tuple[Any, ...], data: st.DataObject) -> None:
    device_id, boot_id, seq, ts, values, flags = reading
    frame = wire.encode(device_id, boot_id, seq, ts, values, flags)
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(wire.WireError, match=r"^truncated"):
        wire.decode(frame[:cut])


@given(readings, st.binary(min_size=1, max_size=100))
def test_appended_bytes_raise(reading: tuple[Any, ...], extra: bytes) -> None:
    device_id, boot_id, seq, ts, values, flags = reading
    frame = wire.encode(device_id, boot_id, seq, ts, values, flags) + extra
    with pytest.raises(wire.WireError, match=r"^(trailing bytes|oversized)"):
        wire.decode(frame)


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
    ],
)
def test_encode_rejects_out_of_range(field: str, args: tuple[Any, ...]) -> None:
    with pytest.raises(wire.WireError):
        wire.encode(*args)


@pytest.mark.parametrize("value", [None, "frame", 42, [1, 2, 3]])
def test_decode_rejects_non_bytes(value: Any) -> None:
    with pytest.raises(wire.WireError, match=r"^frame must be bytes"):
        wire.decode(value)
