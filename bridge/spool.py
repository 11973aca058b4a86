"""A durable, bounded FIFO of Kafka records on local disk, for while Kafka is unreachable.

A record counts as spooled only after the batch that holds it was fsync'd; the head (what
Kafka already has) is kept in a small checksummed file replaced atomically, so a crash at any
point loses no spooled record: at worst a few are replayed twice.

On disk (format 2, little-endian). Each segment file starts with `TSSPOOL2`, then frames:

    kind (2 B: F5 'R' record, F5 'N' names) | body length (4 B) | length % 65521 (2 B)
    | CRC-32 of the body (4 B) | body

A record body is varints and bytes: topic (a name index), key length + 1 (0: no key) and key,
value length and value, header count, then per header a name index, value length and value.
Topics and header names get their index once per segment: a names frame (first index, then
length-prefixed names) in front of the batch that brings them, and the whole table again after
that batch and at least every MiB, so a damaged sector costs no names (any intact copy serves).
The marker and the length check let a reader find the next frame after damage (resynchronise);
the length check also tells a damaged frame from one a crash cut short at the tail (never
acknowledged, cut quietly). A damaged frame is copied to the `quarantine` file next to the
segments, counted and logged once, and the frames after it are read as usual. Segments of
format 1 (no `TSSPOOL2`) left by an older bridge are still read, never written.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bridge import BridgeError
from bridge.record import KafkaRecord

__all__ = ["Position", "Spool", "SpoolError"]

log = logging.getLogger(__name__)

_SUFFIX = ".seg"
_MAGIC = b"TSSPOOL2"
_RECORD, _NAMES = b"\xf5R", b"\xf5N"
_FRAME = struct.Struct("<2sIHI")  # kind, body length, length check, crc32 of the body
# A prime modulus: every single-bit flip of the length changes the check.
_PRIME = 65521
_V1_FRAME = struct.Struct(">II")  # format 1: body length, crc32 of the body
_QUARANTINE = struct.Struct("<4sQQIH")  # marker, segment, offset, length, reason length
_Q_MARKER = b"TSQ1"
_CHUNK = 1 << 20  # bytes read at once: a replay batch of 5000 readings is about 1.7 MB
# The whole names table is written again after a batch at least this often, so a damaged
# sector loses no names: any intact copy in the segment serves all its records.
_TABLE_EVERY = 1 << 20


class SpoolError(BridgeError):
    """The spool cannot be used; the message says which file, why, and what to do."""


@dataclass(frozen=True, order=True)
class Position:
    """A place in the spool: segment number and byte offset in it."""

    segment: int
    offset: int


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Lengths of readings and name indexes are nearly always below 16384: a lookup takes 18 ns,
# building the varint 275 ns (measured), and a reading needs eight of them.
_V = [_varint(n) for n in range(1 << 14)]


def _uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    n = buf[pos]
    if n < 0x80:
        return n, pos + 1
    result, shift = n & 0x7F, 7
    while True:
        pos += 1
        n = buf[pos]
        result |= (n & 0x7F) << shift
        if n < 0x80:
            return result, pos + 1
        shift += 7


def _decode(buf: bytes, pos: int, names: dict[int, str]) -> KafkaRecord:
    """One record body at `pos`; KeyError if a name index is unknown."""
    # One-byte varints are read inline: a call per field made decoding 37 % slower (measured).
    i = buf[pos]
    pos += 1
    if i >= 0x80:
        i, pos = _uvarint(buf, pos - 1)
    topic = names[i]
    n = buf[pos]
    pos += 1
    if n >= 0x80:
        n, pos = _uvarint(buf, pos - 1)
    if n:
        key: bytes | None = buf[pos : pos + n - 1]
        pos += n - 1
    else:
        key = None
    n = buf[pos]
    pos += 1
    if n >= 0x80:
        n, pos = _uvarint(buf, pos - 1)
    value = buf[pos : pos + n]
    pos += n
    count = buf[pos]
    pos += 1
    if count >= 0x80:
        count, pos = _uvarint(buf, pos - 1)
    headers = []
    for _ in range(count):
        i = buf[pos]
        n = buf[pos + 1]
        if i < 0x80 and n < 0x80:
            pos += 2
        else:
            i, pos = _uvarint(buf, pos)
            n, pos = _uvarint(buf, pos)
        headers.append((names[i], buf[pos : pos + n]))
        pos += n
    return KafkaRecord(topic, key, value, tuple(headers))


def _names_frame(first: int, names: list[str]) -> bytes:
    body = b"".join([_varint(first), *(_varint(len(b)) + b for b in map(str.encode, names))])
    return _FRAME.pack(_NAMES, len(body), len(body) % _PRIME, zlib.crc32(body)) + body


def _decode_names(body: bytes) -> dict[int, str]:
    first, pos = _uvarint(body, 0)
    names: dict[int, str] = {}
    while pos < len(body):
        n, pos = _uvarint(body, pos)
        names[first + len(names)] = body[pos : pos + n].decode()
        pos += n
    return names


def _frame_at(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """(kind, end) of a whole, intact frame at `pos`, else None."""
    if pos + _FRAME.size > len(buf):
        return None
    kind, n, check, crc = _FRAME.unpack_from(buf, pos)
    end = pos + _FRAME.size + n
    if kind not in (_RECORD, _NAMES) or check != n % _PRIME or end > len(buf):
        return None
    if zlib.crc32(memoryview(buf)[pos + _FRAME.size : end]) != crc:
        return None
    return kind, end


def _resync(buf: bytes, pos: int) -> int:
    """Where the next intact frame after `pos` starts, or len(buf)."""
    while True:
        pos = buf.find(b"\xf5", pos + 1)
        if pos < 0:
            return len(buf)
        if _frame_at(buf, pos) is not None:
            return pos


def _torn(tail: bytes) -> bool:
    """Whether bytes after the last intact frame are what a crash mid-append leaves: the start
    of one frame, cut short (or blocks the filesystem never filled). Anything else is damage."""
    if not tail.strip(b"\x00"):
        return True
    if len(tail) < _FRAME.size:
        return tail[:2] == _RECORD[: len(tail)] or tail[:2] == _NAMES[: len(tail)]
    kind, n, check, _ = _FRAME.unpack_from(tail, 0)
    return kind in (_RECORD, _NAMES) and check == n % _PRIME and _FRAME.size + n > len(tail)


def _decode_v1(body: bytes) -> KafkaRecord:
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


def _is_v1(path: Path) -> bool:
    """A segment without the format-2 marker whose first frame is a sound format-1 frame."""
    with path.open("rb") as f:
        start = f.read(_V1_FRAME.size)
        if len(start) < _V1_FRAME.size or start == _MAGIC:
            return False
        n, crc = _V1_FRAME.unpack(start)
        body = f.read(n)
    return len(body) == n and zlib.crc32(body) == int(crc)


class Spool:
    """Append at the tail, read from the head, commit what Kafka acknowledged. Thread-safe.

    Every I/O failure is raised as SpoolError. `on_quarantine` is called (no arguments) once
    per damaged frame set aside; `quarantined` counts them since start.
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        segment_bytes: int,
        on_quarantine: Callable[[], object] | None = None,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.quarantined = 0
        self._on_quarantine = on_quarantine
        self._lock = threading.Lock()
        self._sizes: dict[int, int] = {}  # segment -> bytes on disk (the tail: up to _tail)
        self._v1: set[int] = set()
        self._names_in: dict[int, dict[int, str]] = {}  # per segment, for reading
        self._names_out: dict[str, int] = {}  # the tail segment's, for appending
        self._table_at = 0  # where the tail segment's names table was last written in full
        self._scanned: dict[int, int] = {}  # segment -> size when its names were last scanned
        self._dirty = False  # a failed append could not be cut back yet
        try:
            self._open()
        except OSError as exc:
            raise SpoolError(
                f"cannot open the spool in {path}: {exc}; check the directory's owner and "
                "free space (spool.path)"
            ) from exc

    # -- start -------------------------------------------------------------------------------

    def _open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._quarantine_path = self.path / "quarantine"
        self._set_aside = self._quarantine_index()
        segments = sorted(int(p.stem) for p in self.path.glob(f"*{_SUFFIX}"))
        for segment in segments:
            self._sizes[segment] = self._file(segment).stat().st_size
            if _is_v1(self._file(segment)):
                self._v1.add(segment)
        self._segments = segments
        self._head = self._read_head()
        for segment in [s for s in segments if s < self._head.segment]:
            self._drop(segment)  # a crash came between writing the head and deleting these
        if self._segments and self._segments[-1] not in self._v1:
            self._repair_tail(self._segments[-1])
            tail = self._segments[-1]
            self._fd = os.open(self._file(tail), os.O_WRONLY)
        else:
            # Format 1 segments are only read: appends go to a new segment.
            tail = self._segments[-1] + 1 if self._segments else 0
            self._fd = self._create(tail)
            self._segments.append(tail)
            self._sizes[tail] = len(_MAGIC)
        self._tail = Position(tail, self._sizes[tail])
        self._cursor = self._head

    def _file(self, segment: int) -> Path:
        return self.path / f"{segment:012d}{_SUFFIX}"

    def _first(self, segment: int) -> int:
        return 0 if segment in self._v1 else len(_MAGIC)

    def _read_head(self) -> Position:
        if not self._segments:
            return Position(0, len(_MAGIC))
        oldest = Position(self._segments[0], self._first(self._segments[0]))
        head = self.path / "head"
        if not head.exists():
            return oldest
        text = head.read_bytes()
        fields = text.split()
        try:
            segment, offset = int(fields[0]), int(fields[1])
            # Format 1 wrote two fields and no check; its spools are read once after an upgrade.
            checked = len(fields) == 2 or (
                len(fields) == 3 and int(fields[2]) == zlib.crc32(b"%d %d" % (segment, offset))
            )
        except (ValueError, IndexError):
            checked = False
        sound = checked and segment in self._sizes
        if sound and self._first(segment) <= offset <= self._sizes[segment]:
            return Position(segment, offset)
        log.warning(
            "spool %s: the head file is damaged (%r); replaying from the oldest segment, "
            "so Kafka may get some readings twice",
            self.path,
            text[:60],
        )
        return oldest

    def _repair_tail(self, segment: int) -> None:
        """Find where the last segment's intact frames end; cut a torn append there."""
        data = self._file(segment).read_bytes()
        if len(data) < len(_MAGIC):
            # A crash while the segment was being created: write its marker again.
            if not _MAGIC.startswith(data):
                self._quarantine(segment, 0, data, "damaged segment start")
            self._write(self._file(segment), _MAGIC, truncate=True)
            self._sizes[segment] = len(_MAGIC)
            return
        pos = end = len(_MAGIC)
        names: dict[int, str] = {}
        while pos < len(data):
            frame = _frame_at(data, pos)
            if frame is None:
                pos = _resync(data, pos)
                continue
            if frame[0] == _NAMES:
                names.update(_decode_names(data[pos + _FRAME.size : frame[1]]))
            pos = end = frame[1]
        if self._head.segment == segment:
            end = max(end, self._head.offset)
        if end < len(data):
            if not _torn(data[end:]):
                self._quarantine(segment, end, data[end:], "damaged frame at the tail")
            with self._file(segment).open("r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        self._sizes[segment] = end
        self._names_out = {name: i for i, name in names.items()}

    def _create(self, segment: int) -> int:
        """A new segment, durable with its marker; its descriptor, open for writing."""
        path = self._file(segment)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _pwrite_all(fd, _MAGIC, 0)
                os.fsync(fd)
                _fsync_dir(self.path)
            except OSError:
                os.close(fd)
                raise
        except OSError:
            path.unlink(missing_ok=True)
            raise
        return fd

    @staticmethod
    def _write(path: Path, data: bytes, truncate: bool) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else 0), 0o644)
        try:
            _pwrite_all(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- size ----------------------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        """Bytes between the committed head and the tail."""
        with self._lock:
            return self._used()

    def _used(self) -> int:
        total = sum(self._sizes[s] for s in self._segments if s >= self._head.segment)
        return total - self._head.offset

    def has_room(self, nbytes: int) -> bool:
        """Whether `nbytes` more fit under max_bytes."""
        with self._lock:
            return self._used() + nbytes <= self.max_bytes

    def empty(self) -> bool:
        """True when Kafka has everything that was ever spooled."""
        with self._lock:
            return self._skip_ends(self._head) == self._tail

    def _skip_ends(self, pos: Position) -> Position:
        """`pos`, moved past ends of segments to the start of the next one's records."""
        while pos.segment != self._tail.segment and pos.offset >= self._sizes[pos.segment]:
            later = [s for s in self._segments if s > pos.segment]
            pos = Position(later[0], self._first(later[0]))
        return pos

    # -- append --------------------------------------------------------------------------------

    def append(self, records: Sequence[KafkaRecord]) -> int:
        """Write the records and fsync them; returns the bytes written.

        Raises SpoolError when the disk refuses them (full, failing): nothing of the batch is
        kept then, so the caller may retry it later; the readings must not be acknowledged.
        """
        if not records:
            return 0
        with self._lock:
            try:
                if self._dirty:
                    os.ftruncate(self._fd, self._tail.offset)
                    self._dirty = False
                if self._tail.offset >= self.segment_bytes:
                    self._roll()
            except OSError as exc:
                raise self._write_error(exc) from exc
            start = self._tail.offset
            added: list[str] = []
            try:
                blob, table = self._encode(records, added, start)
                _pwrite_all(self._fd, blob, start)
                os.fsync(self._fd)
            except BaseException as exc:
                # Also a record that cannot be encoded: its new names must not stay indexed.
                self._cut_back(start, added)
                if isinstance(exc, OSError):
                    raise self._write_error(exc) from exc
                raise
            self._tail = Position(self._tail.segment, start + len(blob))
            self._sizes[self._tail.segment] = self._tail.offset
            if table:
                self._table_at = start
        return len(blob)

    def _encode(
        self, records: Sequence[KafkaRecord], added: list[str], start: int
    ) -> tuple[bytes, bool]:
        """The batch as frames, and whether the whole names table follows them. New names are
        indexed for the segment, listed in `added` and written in front of the batch."""
        index, v = self._names_out, _V
        parts: list[bytes] = []
        pack, crc32, record = _FRAME.pack, zlib.crc32, _RECORD
        for topic, key, value, headers in records:
            t = index.get(topic)
            if t is None:
                t = index[topic] = len(index)
                added.append(topic)
            body = [v[t] if t < 16384 else _varint(t)]
            if key is None:
                body.append(b"\x00")
            else:
                n = len(key) + 1
                body += (v[n] if n < 16384 else _varint(n), key)
            n = len(value)
            c = len(headers)
            body += (v[n] if n < 16384 else _varint(n), value, v[c] if c < 16384 else _varint(c))
            for name, hvalue in headers:
                h = index.get(name)
                if h is None:
                    h = index[name] = len(index)
                    added.append(name)
                n = len(hvalue)
                body += (v[h] if h < 16384 else _varint(h), v[n] if n < 16384 else _varint(n))
                body.append(hvalue)
            raw = b"".join(body)
            n = len(raw)
            parts += (pack(record, n, n % _PRIME, crc32(raw)), raw)
        if added:
            parts.insert(0, _names_frame(len(index) - len(added), added))
        table = bool(added) or start - self._table_at >= _TABLE_EVERY
        if table:
            parts.append(_names_frame(0, list(index)))
        return b"".join(parts), table

    def _roll(self) -> None:
        segment = self._tail.segment + 1
        fd = self._create(segment)
        os.close(self._fd)
        self._fd = fd
        self._segments.append(segment)
        self._sizes[segment] = len(_MAGIC)
        self._names_out = {}
        self._table_at = len(_MAGIC)
        self._tail = Position(segment, len(_MAGIC))

    def _cut_back(self, start: int, added: list[str]) -> None:
        """Under the lock: forget a batch that failed, on disk and in the names table."""
        for name in added:
            del self._names_out[name]
        try:
            os.ftruncate(self._fd, start)
            os.fsync(self._fd)
        except OSError as exc:
            # Bytes past the tail are never read; the next append cuts them first.
            log.warning("spool %s: cannot cut back a failed append yet: %s", self.path, exc)
            self._dirty = True

    def _write_error(self, exc: OSError) -> SpoolError:
        return SpoolError(
            f"cannot write the spool segment {self._file(self._tail.segment)}: "
            f"{exc.strerror or exc}; nothing of this batch was kept: hold its readings "
            "unacknowledged and retry, and free disk space or lower spool.max_bytes"
        )

    # -- read ----------------------------------------------------------------------------------

    def read(self, max_records: int) -> tuple[list[KafkaRecord], Position]:
        """Up to max_records after the read cursor, and the position after them.

        Damaged frames on the way are set aside in the quarantine file; if a read from the
        committed head finds nothing else, the head moves past them (nothing to deliver).
        """
        with self._lock:
            try:
                return self._read(max_records)
            except OSError as exc:
                raise SpoolError(
                    f"cannot read the spool in {self.path}: {exc}; check the disk"
                ) from exc

    def _read(self, max_records: int) -> tuple[list[KafkaRecord], Position]:
        records: list[KafkaRecord] = []
        start = cursor = self._skip_ends(self._cursor)
        while len(records) < max_records and cursor < self._tail:
            end = self._sizes[cursor.segment]
            if cursor.offset < end:
                reader = self._read_v1 if cursor.segment in self._v1 else self._read_segment
                cursor = Position(cursor.segment, reader(cursor, end, max_records, records))
            cursor = self._skip_ends(cursor)
        self._cursor = cursor
        if not records and cursor != start and start == self._skip_ends(self._head):
            self._commit(cursor)
        return records, cursor

    def _read_segment(
        self, at: Position, end: int, max_records: int, records: list[KafkaRecord]
    ) -> int:
        """Append records from one segment, from `at` up to `end`; the offset reached."""
        segment, size, crc32 = at.segment, _FRAME.size, zlib.crc32
        names = self._names_in.get(segment)
        if names is None:
            # From the segment's start the names frames come inline; from the middle, look back.
            fresh = at.offset == self._first(segment)
            names = self._names_in[segment] = {} if fresh else self._scan_names(segment)
        base, pos = at.offset, 0
        buf = self._load(segment, base, min(end, base + _CHUNK))
        view = memoryview(buf)
        while len(records) < max_records and base + pos < end:
            need = size  # bytes the frame at pos needs in buf
            if pos + size <= len(buf):
                kind, n, check, crc = _FRAME.unpack_from(buf, pos)
                stop = pos + size + n
                if kind in (_RECORD, _NAMES) and check == n % _PRIME and base + stop <= end:
                    if stop <= len(buf) and crc32(view[pos + size : stop]) == crc:
                        if kind == _NAMES:
                            names.update(_decode_names(buf[pos + size : stop]))
                        else:
                            try:
                                records.append(_decode(buf, pos + size, names))
                            except KeyError:
                                record = self._lost_names(segment, base + pos, buf[pos:stop])
                                if record is not None:
                                    records.append(record)
                        pos = stop
                        continue
                    need = stop - pos
            if pos + need > len(buf) and base + pos + need <= end:
                base, pos = base + pos, 0  # the frame runs past what was loaded
                buf = self._load(segment, base, min(end, base + max(_CHUNK, need)))
                view = memoryview(buf)
                continue
            rest = self._load(segment, base + pos, end)
            damaged = _resync(rest, 0)
            self._quarantine(segment, base + pos, rest[:damaged], "damaged frame")
            base, pos = base + pos + damaged, 0
            buf = self._load(segment, base, min(end, base + _CHUNK))
            view = memoryview(buf)
        return base + pos

    def _lost_names(self, segment: int, offset: int, frame: bytes) -> KafkaRecord | None:
        """An intact record whose names are unknown: both copies of its names frame were
        damaged, so look for a later one; if none, set the record aside."""
        names = self._names_in[segment]
        if self._scanned.get(segment) != self._sizes[segment]:
            names.update(self._scan_names(segment))
        try:
            return _decode(frame, _FRAME.size, names)
        except KeyError:
            self._quarantine(segment, offset, frame, "record whose names frame is damaged")
            return None

    def _read_v1(self, at: Position, end: int, max_records: int, records: list[KafkaRecord]) -> int:
        """Format 1 frames have no marker: after damage the rest of the segment is set aside."""
        data = self._load(at.segment, at.offset, end)
        pos = 0
        while pos < len(data) and len(records) < max_records:
            if pos + _V1_FRAME.size <= len(data):
                n, crc = _V1_FRAME.unpack_from(data, pos)
                body = data[pos + _V1_FRAME.size : pos + _V1_FRAME.size + n]
                if len(body) == n and zlib.crc32(body) == crc:
                    records.append(_decode_v1(body))
                    pos += _V1_FRAME.size + n
                    continue
            self._quarantine(at.segment, at.offset + pos, data[pos:], "damaged format-1 frame")
            pos = len(data)
        return at.offset + pos

    def _load(self, segment: int, start: int, stop: int) -> bytes:
        with self._file(segment).open("rb") as f:
            f.seek(start)
            data = f.read(stop - start)
        if len(data) < stop - start:
            raise SpoolError(
                f"the spool segment {self._file(segment)} is shorter than the spool wrote it; "
                "something else changed the spool directory: stop the bridge and check it"
            )
        return data

    def _scan_names(self, segment: int) -> dict[int, str]:
        """Every intact names frame of a segment (a reader starting mid-segment needs them)."""
        data = self._load(segment, 0, self._sizes[segment])
        self._scanned[segment] = len(data)
        names: dict[int, str] = {}
        pos = data.find(_NAMES)
        while pos >= 0:
            frame = _frame_at(data, pos)
            if frame is not None:
                names.update(_decode_names(data[pos + _FRAME.size : frame[1]]))
            pos = data.find(_NAMES, pos + 1)
        return names

    # -- quarantine ----------------------------------------------------------------------------

    def _quarantine(self, segment: int, offset: int, data: bytes, reason: str) -> None:
        """Keep damaged bytes in the quarantine file (once), count them, and say so."""
        if (segment, offset) in self._set_aside:
            return
        raw = reason.encode()
        entry = _QUARANTINE.pack(_Q_MARKER, segment, offset, len(data), len(raw)) + raw + data
        with self._quarantine_path.open("ab") as f:
            f.write(entry)
            f.flush()
            os.fsync(f.fileno())
        self._set_aside.add((segment, offset))
        self.quarantined += 1
        if self._on_quarantine is not None:
            self._on_quarantine()
        log.error(
            "spool %s: %s, %d bytes at segment %d offset %d, set aside in %s and not replayed; "
            "the readings after it are replayed",
            self.path,
            reason,
            len(data),
            segment,
            offset,
            self._quarantine_path,
        )

    def _quarantine_index(self) -> set[tuple[int, int]]:
        """Where frames were set aside already, so a replay after a restart skips them quietly."""
        if not self._quarantine_path.exists():
            return set()
        data = self._quarantine_path.read_bytes()
        seen, pos = set(), 0
        while pos + _QUARANTINE.size <= len(data):
            marker, segment, offset, n, r = _QUARANTINE.unpack_from(data, pos)
            if marker != _Q_MARKER:
                log.warning("spool %s: the quarantine file is damaged at byte %d", self.path, pos)
                break
            seen.add((segment, offset))
            pos += _QUARANTINE.size + r + n
        return seen

    # -- head ----------------------------------------------------------------------------------

    def rewind(self) -> None:
        """Read again from the committed head (a replay batch failed)."""
        with self._lock:
            self._cursor = self._head

    def commit(self, position: Position) -> None:
        """Kafka has everything before `position`: advance the head, delete spent segments."""
        with self._lock:
            try:
                self._commit(position)
            except OSError as exc:
                raise SpoolError(
                    f"cannot move the spool head in {self.path}: {exc}; check the disk"
                ) from exc

    def _commit(self, position: Position) -> None:
        tmp = self.path / "head.tmp"
        text = b"%d %d" % (position.segment, position.offset)
        self._write(tmp, b"%s %d\n" % (text, zlib.crc32(text)), truncate=True)
        tmp.replace(self.path / "head")
        self._head = position
        for segment in [s for s in self._segments if s < position.segment]:
            self._drop(segment)
        _fsync_dir(self.path)

    def _drop(self, segment: int) -> None:
        self._file(segment).unlink()
        self._segments.remove(segment)
        del self._sizes[segment]
        self._names_in.pop(segment, None)
        self._scanned.pop(segment, None)
        self._v1.discard(segment)

    def close(self) -> None:
        """Close the tail segment."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
