# Readings waiting for their PUBACK. A fixed ring of encoded frames: when it is full the oldest
# reading is dropped and counted (the count goes out in the status message). A frame leaves the
# ring only after the broker acknowledged it, so a broker restart loses nothing.


class Outbox:
    def __init__(self, size):
        self._slots = [None] * size  # preallocated: no list growth while offline
        self._head = 0
        self._n = 0
        self.dropped = 0

    def __len__(self):
        return self._n

    def put(self, frame):
        size = len(self._slots)
        if self._n == size:
            self._slots[self._head] = None
            self._head = (self._head + 1) % size
            self._n -= 1
            self.dropped += 1
        self._slots[(self._head + self._n) % size] = frame
        self._n += 1

    def peek(self):
        return self._slots[self._head] if self._n else None

    def pop(self):
        self._slots[self._head] = None
        self._head = (self._head + 1) % len(self._slots)
        self._n -= 1
