# Readings waiting for their PUBACK: a ring of fixed-size slots in one bytearray allocated at
# boot, so the outbox takes the same heap empty or full and a reading allocates nothing in it
# (an encoded frame as a bytes object would cost about 80 bytes of heap on the unix port).
# When it is full the oldest reading is dropped and counted (the count goes out in the status
# message). A frame leaves the ring only after the broker acknowledged it, so a broker restart
# loses nothing.
#
# A slot keeps only what differs between frames: byte 0 (version and flags), the timestamp, the
# channel mask and the values (22 of a 32-byte frame: 2.5 KB less for a ring of 256). Device id
# and boot id (wire v2 bytes 1-6) are the same in every frame of a boot, so they are kept once;
# the sequence numbers in the ring are consecutive, so only the oldest is kept; a frame's length
# follows from its one-byte channel mask (2 bytes a channel).
import struct

_SEQ = 7  # frame[7:11]: the sequence number, big-endian
_KEPT = 11  # the slot keeps frame[11:] after byte 0
_MASK = 7  # the channel mask (frame[17]) in a slot
_HEADER = 18


class Outbox:
    def __init__(self, size, frame_max):
        slot = 1 + frame_max - _KEPT
        self._ring = memoryview(bytearray(size * slot))
        self._frame = memoryview(bytearray(frame_max))  # peek() rebuilds the oldest frame here
        self._size = size
        self._slot = slot
        self._head = 0
        self._n = 0
        self._seq = 0  # of the oldest frame
        self.dropped = 0

    def __len__(self):
        return self._n

    def put(self, frame):
        """Keep a frame of at most `frame_max` bytes, numbered right after the newest one and
        with only channels of the wire table; drops the oldest when full. True if it did."""
        seq = struct.unpack_from(">I", frame, _SEQ)[0]
        if not self._n:
            self._seq = seq
        elif seq != self._seq + self._n:
            raise ValueError("outbox: frame %d out of sequence" % seq)
        full = self._n == self._size
        if full:
            self.pop()
            self.dropped += 1
        i = (self._head + self._n) % self._size
        start = i * self._slot
        n = len(frame)
        self._frame[:_SEQ] = frame[:_SEQ]  # the same bytes each time, but for the flags
        self._ring[start] = frame[0]
        self._ring[start + 1:start + 1 + n - _KEPT] = frame[_KEPT:]
        self._n += 1
        return full

    def peek(self):
        """The oldest frame (a view valid until the next put or peek), or None."""
        if not self._n:
            return None
        start = self._head * self._slot
        ring = self._ring
        mask = ring[start + _MASK]
        n = _HEADER
        while mask:
            mask &= mask - 1  # clears the lowest set bit: one channel
            n += 2
        frame = self._frame
        frame[0] = ring[start]
        struct.pack_into(">I", frame, _SEQ, self._seq)
        frame[_KEPT:n] = ring[start + 1:start + 1 + n - _KEPT]
        return frame[:n]

    def pop(self):
        self._head = (self._head + 1) % self._size
        self._n -= 1
        self._seq += 1
