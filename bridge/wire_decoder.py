"""Wire format v1 decoder (docs/wire-format.md): the bridge's side of `firmware/wire.py`.

The devices only encode, so the decoder lives here and not in the file the boards load (it
would cost them about 0.8 KB of heap). It reads the same channel table as the encoder and is
checked against the same vectors (tests/vectors/wire_v1.json).
"""

from __future__ import annotations

import struct

from firmware.wire import CHANNELS, HEADER, HEADER_SIZE, MAX_FRAME, VERSION, WireError

__all__ = ["Reading", "decode"]

# (flags, device_id, boot_id, seq, timestamp_ms, values: channel name -> scaled integer)
Reading = tuple[int, int, int, int, int, dict[str, int]]

_HEADER = struct.Struct(HEADER)
_KNOWN = (1 << len(CHANNELS)) - 1
# Channel mask -> (names, struct of the values) for masks of known channels only: at most
# 2**len(CHANNELS) entries, each built on first use.
_LAYOUTS: dict[int, tuple[tuple[str, ...], struct.Struct]] = {}


def decode(frame: bytes | bytearray | memoryview) -> Reading:
    """Decode one frame; raises WireError, and only WireError, for anything not a v1 frame."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise WireError("frame must be bytes")
    n = len(frame)
    if n < HEADER_SIZE:
        raise WireError(f"truncated: {n} bytes, header needs {HEADER_SIZE}")
    if n > MAX_FRAME:
        raise WireError(f"oversized: {n} bytes, at most {MAX_FRAME}")
    version, flags, device_id, boot_id, seq, ts_hi, ts_lo, mask = _HEADER.unpack_from(frame)
    if version != VERSION:
        raise WireError(f"unsupported version {version}")
    timestamp_ms = ts_hi << 32 | ts_lo
    layout = _LAYOUTS.get(mask) or (_layout(mask) if not mask & ~_KNOWN else None)
    if layout is not None and n == HEADER_SIZE + layout[1].size:  # the usual case
        names, values = layout
        return flags, device_id, boot_id, seq, timestamp_ms, dict(
            zip(names, values.unpack_from(frame, HEADER_SIZE), strict=True)
        )
    return flags, device_id, boot_id, seq, timestamp_ms, _values(frame, mask)


def _layout(mask: int) -> tuple[tuple[str, ...], struct.Struct]:
    present = [c for i, c in enumerate(CHANNELS) if mask >> i & 1]
    layout = tuple(c[0] for c in present), struct.Struct(">" + "".join(c[1] for c in present))
    _LAYOUTS[mask] = layout
    return layout


def _values(frame: bytes | bytearray | memoryview, mask: int) -> dict[str, int]:
    """Channel by channel: a frame cut short, with trailing bytes, or with newer channels."""
    n = len(frame)
    values: dict[str, int] = {}
    pos = HEADER_SIZE
    for i, (name, code, _) in enumerate(CHANNELS):
        if mask >> i & 1:
            if pos + 2 > n:
                raise WireError(f"truncated: channel {name} missing")
            v = frame[pos] << 8 | frame[pos + 1]
            values[name] = v - 0x10000 if code == "h" and v & 0x8000 else v
            pos += 2
    # A channel newer than this decoder: it and everything after it is for newer decoders.
    if pos != n and not mask & ~_KNOWN:
        raise WireError(f"trailing bytes: {n - pos} after the last channel")
    return values
