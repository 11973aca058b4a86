"""Wire format v2 decoding (bridge/wire_decoder.py): the shared vectors, round trips with the
firmware's encoder, and hostile input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.wire_decoder import decode
from firmware import wire

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "wire_v2.json").read_text())
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
    st.integers(0, 15),
)


def _expect(vector: dict[str, Any]) -> tuple[int, int, int, int, int, dict[str, int]]:
    e = vector["expect"]
    return (e["flags"], e["device_id"], e["boot_id"], e["seq"], e["timestamp_ms"], e["values"])


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_valid_vectors_decode(vector: dict[str, Any]) -> None:
    assert decode(bytes.fromhex(vector["hex"])) == _expect(vector)


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vectors_raise_wire_error(vector: dict[str, Any]) -> None:
    with pytest.raises(wire.WireError, match=f"^{vector['error']}"):
        decode(bytes.fromhex(vector["hex"]))


@given(readings)
def test_round_trip(reading: tuple[int, int, int, int, dict[str, int], int]) -> None:
    device_id, boot_id, seq, ts, values, flags = reading
    frame = wire.encode(device_id, boot_id, seq, ts, values, flags)
    assert decode(frame) == (flags, device_id, boot_id, seq, ts, values)
    assert decode(bytearray(frame)) == decode(memoryview(frame))


@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_wire_error_only(data: bytes) -> None:
    try:
        values = decode(data)[5]
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
        decode(frame[:cut])


@given(readings, st.binary(min_size=1, max_size=100))
def test_appended_bytes_raise(reading: tuple[Any, ...], extra: bytes) -> None:
    device_id, boot_id, seq, ts, values, flags = reading
    frame = wire.encode(device_id, boot_id, seq, ts, values, flags) + extra
    with pytest.raises(wire.WireError, match=r"^(trailing bytes|oversized)"):
        decode(frame)


@pytest.mark.parametrize("value", [None, "frame", 42, [1, 2, 3]])
def test_decode_rejects_non_bytes(value: Any) -> None:
    with pytest.raises(wire.WireError, match=r"^frame must be bytes"):
        decode(value)
