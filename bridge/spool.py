"""A durable, bounded FIFO of Kafka records on local disk, for while Kafka is unreachable.

Records live in segment files; each is framed as length, CRC-32 and body. A record counts as
spooled only after the batch that holds it was fsync'd. The head (what Kafka already has) is
kept in a small file replaced atomically, so a crash at any point loses no spooled record:
at worst a few are replayed twice.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from bridge import BridgeError
from bridge.record import KafkaRecord

__all__ = ["Position", "Spool", "SpoolError"]

_FRAME = struct.Struct(">II")  # body length, crc32 of the body
_SUFFIX = ".seg"


class SpoolError(BridgeError):
    """The spool directory cannot be used; the message says which file and why."""


@dataclass(frozen=True, order=True)
class Position:
    """A place in the spool: segment number and byte offset in it."""

    segment: int
    offset: int


def _encode(record: KafkaRecord) -> bytes:
    topic = record.topic.encode()
    parts = [struct.pack(">H", len(topic)), topic]
    if record.key is None:
        parts.append(struct.pack(">i", -1))
    else:
        parts += [struct.pack(">i", len(record.key)), record.key]
    parts += [struct.pack(">I", len(record.value)), record.value]
    parts.append(struct.pack(">H", len(record.headers)))
    for name, value in record.headers:
        raw = name.encode()
        parts += [struct.pack(">H", len(raw)), raw, struct.pack(">I", len(value)), value]
    return b"".join(parts)


def _decode(body: bytes) -> KafkaRecord:
    (n,) = struct.unpack_from(">H", body, 0)
    pos = 2 + n
    topic = body[2:pos].decode()
    (klen,) = struct.unpack_from(">i", body, pos)
    pos += 4
    key = None if klen < 0 else body[pos : pos + klen]
    pos += max(klen, 0)
    (vlen,) = struct.unpack_from(">I", body, pos)
    value = body[pos + 4 : pos + 4 + vlen]
    pos += 4 + vlen
    (count,) = struct.unpack_from(">H", body, pos)
    pos += 2
    headers = []
    for _ in range(count):
        (hn,) = struct.unpack_from(">H", body, pos)
        name = body[pos + 2 : pos + 2 + hn].decode()
        pos += 2 + hn
        (hv,) = struct.unpack_from(">I", body, pos)
        headers.append((name, body[pos + 4 : pos + 4 + hv]))
        pos += 4 + hv
    return KafkaRecord(topic, key, value, tuple(headers))


class Spool:
    """Append at the tail, read from the head, commit what Kafka acknowledged. Thread-safe."""

    def __init__(self, path: Path, max_bytes: int, segment_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool directory {path}: {exc.strerror}") from exc
        self._head = self._read_head()
        self._segments = sorted(int(p.stem) for p in path.glob(f"*{_SUFFIX}"))
        if self._segments:
            self._repair_tail(self._segments[-1])
        else:
            self._segments = [self._head.segment]
            self._file(self._head.segment).touch()
        self._tail = Position(self._segments[-1], self._file(self._segments[-1]).stat().st_size)
        self._writer = self._file(self._tail.segment).open("ab")
        self._cursor = self._head

    def _file(self, segment: int) -> Path:
        return self.path / f"{segment:012d}{_SUFFIX}"

    def _read_head(self) -> Position:
        head = self.path / "head"
        if not head.exists():
            return Position(0, 0)
        segment, offset = head.read_text().split()
        return Position(int(segment), int(offset))

    def _repair_tail(self, segment: int) -> None:
        """Cut a record that a crash left half-written (it was never acknowledged)."""
        data = self._file(segment).read_bytes()
        pos = 0
        while pos + _FRAME.size <= len(data):
            length, crc = _FRAME.unpack_from(data, pos)
            body = data[pos + _FRAME.size : pos + _FRAME.size + length]
            if len(body) < length or zlib.crc32(body) != crc:
                break
            pos += _FRAME.size + length
        if pos < len(data):
            with self._file(segment).open("r+b") as f:
                f.truncate(pos)
                os.fsync(f.fileno())

    @property
    def used_bytes(self) -> int:
        """Bytes between the committed head and the tail."""
        with self._lock:
            return self._used()

    def _used(self) -> int:
        total = 0
        for segment in self._segments:
            if segment == self._tail.segment:
                total += self._tail.offset
            else:
                total += self._file(segment).stat().st_size
            if segment == self._head.segment:
                total -= self._head.offset
        return total

    def has_room(self, nbytes: int) -> bool:
        """Whether `nbytes` more fit under max_bytes."""
        with self._lock:
            return self._used() + nbytes <= self.max_bytes

    def empty(self) -> bool:
        """True when Kafka has everything that was ever spooled."""
        with self._lock:
            return self._head == self._tail

    def append(self, records: list[KafkaRecord]) -> int:
        """Write the records and fsync them; returns the bytes written."""
        blob = b"".join(_FRAME.pack(len(b), zlib.crc32(b)) + b for b in map(_encode, records))
        with self._lock:
            if self._tail.offset >= self.segment_bytes:
                self._roll()
            self._writer.write(blob)
            self._writer.flush()
            os.fsync(self._writer.fileno())
            self._tail = Position(self._tail.segment, self._tail.offset + len(blob))
        return len(blob)

    def _roll(self) -> None:
        self._writer.close()
        segment = self._tail.segment + 1
        self._segments.append(segment)
        self._writer = self._file(segment).open("ab")
        self._tail = Position(segment, 0)
        _fsync_dir(self.path)

    def read(self, max_records: int) -> tuple[list[KafkaRecord], Position]:
        """Up to max_records after the read cursor, and the position after them."""
        with self._lock:
            records: list[KafkaRecord] = []
            cursor = self._cursor
            while len(records) < max_records and cursor < self._tail:
                data = self._file(cursor.segment).read_bytes()
                end = self._tail.offset if cursor.segment == self._tail.segment else len(data)
                pos = cursor.offset
                while pos < end and len(records) < max_records:
                    length, _ = _FRAME.unpack_from(data, pos)
                    records.append(_decode(data[pos + _FRAME.size : pos + _FRAME.size + length]))
                    pos += _FRAME.size + length
                if pos >= end and cursor.segment != self._tail.segment:
                    cursor = Position(cursor.segment + 1, 0)
                else:
                    cursor = Position(cursor.segment, pos)
            self._cursor = cursor
            return records, cursor

    def rewind(self) -> None:
        """Read again from the committed head (a replay batch failed)."""
        with self._lock:
            self._cursor = self._head

    def commit(self, position: Position) -> None:
        """Kafka has everything before `position`: advance the head, delete spent segments."""
        with self._lock:
            tmp = self.path / "head.tmp"
            with tmp.open("w") as f:
                f.write(f"{position.segment} {position.offset}")
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.path / "head")
            self._head = position
            for segment in [s for s in self._segments if s < position.segment]:
                self._file(segment).unlink()
                self._segments.remove(segment)
            _fsync_dir(self.path)

    def close(self) -> None:
        """Close the tail segment."""
        with self._lock:
            self._writer.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
