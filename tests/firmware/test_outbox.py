"""The outbox ring (firmware/outbox.py): frames come back byte for byte, oldest first."""

from __future__ import annotations

import pytest

from firmware import wire
from firmware.outbox import Outbox

FRAME_MAX = wire.HEADER_SIZE + 2 * len(wire.CHANNELS)


def _frame(seq: int, channels: int = 7, flags: int = wire.FLAG_WALL_CLOCK) -> bytes:
    values = {name: seq % 100 for name, _, _ in wire.CHANNELS[:channels]}
    return wire.encode(4242, 513, seq, 1_767_225_600_000 + seq, values, flags)


def _drain(outbox: Outbox) -> list[bytes]:
    out = []
    while (frame := outbox.peek()) is not None:
        out.append(bytes(frame))
        outbox.pop()
    return out


def test_frames_come_back_identical_in_order_whatever_their_length_and_flags() -> None:
    outbox = Outbox(8, FRAME_MAX)
    frames = [_frame(1), _frame(2, channels=3), _frame(3, flags=0), _frame(4, channels=1)]
    for frame in frames:
        outbox.put(frame)
    assert len(outbox) == 4
    assert _drain(outbox) == frames
    assert len(outbox) == 0 and outbox.peek() is None


def test_a_full_outbox_drops_the_oldest_and_counts_it() -> None:
    outbox = Outbox(4, FRAME_MAX)
    frames = [_frame(seq, flags=seq % 2) for seq in range(10)]
    dropped = [outbox.put(frame) for frame in frames]
    assert dropped == [False] * 4 + [True] * 6  # put() says when it dropped one (app: status due)
    assert outbox.dropped == 6 and len(outbox) == 4
    assert _drain(outbox) == frames[6:]


def test_a_peeked_frame_stays_until_popped_and_the_ring_wraps() -> None:
    outbox = Outbox(3, FRAME_MAX)
    for seq in range(3):
        outbox.put(_frame(seq))
    assert bytes(outbox.peek() or b"") == bytes(outbox.peek() or b"") == _frame(0)
    outbox.pop()
    outbox.put(_frame(3))  # into the slot the first frame left
    assert _drain(outbox) == [_frame(1), _frame(2), _frame(3)]


def test_a_frame_out_of_sequence_is_refused() -> None:
    outbox = Outbox(4, FRAME_MAX)
    outbox.put(_frame(7))
    with pytest.raises(ValueError, match="frame 9 out of sequence"):
        outbox.put(_frame(9))
    outbox.pop()
    outbox.put(_frame(11))  # an empty ring starts at any number
    assert _drain(outbox) == [_frame(11)]
