"""Wire format v2 decoder (docs/wire-format.md): the bridge's side of `firmware/wire.py`.

The devices only encode, so the decoder lives here and not in the file the boards load (it
would cost them about 0.8 KB of heap). It reads the same channel table as the encoder and is
checked against the same vectors (tests/vectors/wire_v2.json).
"""

from __future__ import annotations

import struct

from firmware.wire import CHANNELS, HEADER, HEADER_SIZE, MAX_FRAME, VERSION, WireError

__all__ = ["Reading", "decode"]

# (flags, device_id, boot_id, seq, timestamp_ms, values: channel name -> scaled integer)
Reading = tuple[int, int, int, int, int, dict[str, int]]

_HEADER = struct.Struct(HEADER)
_MORE = 0x80  # in a mask byte: another mask byte follows
# A one-byte channel mask (channels 0-6) -> (names, struct of the values), built on first use:
# at most 128 entries.
_LAYOUTS: dict[int, tuple[tuple[str, ...], struct.Struct]] = {}


def decode(frame: bytes | bytearray | memoryview) -> Reading:
    """Decode one frame; raises WireError, and only WireError, for anything not a v2 frame."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise WireError("frame must be bytes")
    n = len(frame)
    if n < HEADER_SIZE:
        raise WireError(f"truncated: {n} bytes, header needs {HEADER_SIZE}")
    if n > MAX_FRAME:
        raise WireError(f"oversized: {n} bytes, at most {MAX_FRAME}")
    first, device_id, boot_id, seq, ts_hi, ts_lo, mask = _HEADER.unpack_from(frame)
    if first >> 4 != VERSION:
        raise WireError(f"unsupported version {first >> 4}")
    flags, timestamp_ms = first & 0x0F, ts_hi << 32 | ts_lo
    if not mask & _MORE:  # the usual case: channels 0-6 only
        names, values = _LAYOUTS.get(mask) or _layout(mask)
        if n == HEADER_SIZE + values.size:
            return flags, device_id, boot_id, seq, timestamp_ms, dict(
                zip(names, values.unpack_from(frame, HEADER_SIZE), strict=True)
            )
    return flags, device_id, boot_id, seq, timestamp_ms, _values(frame, mask)


def _layout(mask: int) -> tuple[tuple[str, ...], struct.Struct]:
    present = [c for i, c in enumerate(CHANNELS) if mask >> i & 1]
    layout = tuple(c[0] for c in present), struct.Struct(">" + "".join(c[1] for c in present))
    _LAYOUTS[mask] = layout
    return layout


def _values(frame: bytes | bytearray | memoryview, first_mask: int) -> dict[str, int]:
    """Byte by byte: a longer mask, a frame cut short or with trailing bytes."""
    n = len(frame)
    mask, pos, shift = first_mask & ~_MORE, HEADER_SIZE, 7
    more = first_mask & _MORE
    while more:  # the mask's further bytes: channels 7-13, 14-20, ...
        if pos >= n:
            raise WireError("truncated: channel mask cut off")
        mask |= (frame[pos] & ~_MORE) << shift
        more, pos, shift = frame[pos] & _MORE, pos + 1, shift + 7
    values: dict[str, int] = {}
    for i, (name, code, _) in enumerate(CHANNELS):
        if mask >> i & 1:
            if pos + 2 > n:
                raise WireError(f"truncated: channel {name} missing")
            v = frame[pos] << 8 | frame[pos + 1]
            values[name] = v - 0x10000 if code == "h" and v & 0x8000 else v
            pos += 2
    # A channel newer than this decoder: it and everything after it is for newer decoders.
    if pos != n and not mask >> len(CHANNELS):
        raise WireError(f"trailing bytes: {n - pos} after the last channel")
    return values
