# Readings waiting for their PUBACK: a ring of fixed-size slots in one bytearray allocated at
# boot, so the outbox takes the same heap empty or full and a reading allocates nothing in it
# (an encoded frame as a bytes object would cost about 80 bytes of heap on the unix port).
# When it is full the oldest reading is dropped and counted (the count goes out in the status
# message). A frame leaves the ring only after the broker acknowledged it, so a broker restart
# loses nothing.


class Outbox:
    def __init__(self, size, slot):
        self._ring = memoryview(bytearray(size * slot))
        self._lengths = bytearray(size)  # of the frame in each slot; a slot is < 256 bytes
        self._size = size
        self._slot = slot
        self._head = 0
        self._n = 0
        self.dropped = 0

    def __len__(self):
        return self._n

    def put(self, frame):
        """Keep a frame of at most `slot` bytes; drops the oldest when full."""
        if self._n == self._size:
            self.pop()
            self.dropped += 1
        i = (self._head + self._n) % self._size
        start = i * self._slot
        self._ring[start:start + len(frame)] = frame
        self._lengths[i] = len(frame)
        self._n += 1

    def peek(self):
        """The oldest frame (a view into the ring, valid until the next put), or None."""
        if not self._n:
            return None
        start = self._head * self._slot
        return self._ring[start:start + self._lengths[self._head]]

    def pop(self):
        self._head = (self._head + 1) % self._size
        self._n -= 1
