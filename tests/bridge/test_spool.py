"""The durable spool: order, commit, restart, crash repair, damage, a full disk, bounds."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from bridge import BridgeError
from bridge.metrics import SPOOL_QUARANTINED
from bridge.record import KafkaRecord
from bridge.spool import Spool, SpoolError

MARKER = len(b"TSSPOOL2")  # the segment header
FRAME = 12  # marker, length, length check, crc


def _records(n: int, start: int = 0) -> list[KafkaRecord]:
    return [
        KafkaRecord(
            "t",
            f"k{i}".encode() if i % 2 else None,
            f"v{i:04d}".encode() * 20,
            (("seq", str(i).encode()),),
        )
        for i in range(start, start + n)
    ]


def _reading(i: int) -> KafkaRecord:
    """A telemetry record as the bridge's json converter and headers transform build it."""
    train, device = f"train-{i % 40:03d}", 1000 + i % 300
    value = (
        f'{{"train_id":"{train}","device_id":{device},"boot_id":7,"seq":{i},'
        f'"ts_ms":{1796069308908 + i},"wall_clock":true,"values":{{"engine_temp":87.3,'
        '"bearing_left_temp":41.2,"bearing_right_temp":40.5,"vibration_rms":0.12,'
        '"speed":123.4,"supply_voltage":24.05}}'
    ).encode()
    headers = (
        ("mqtt.topic", f"trackside/v1/{train}/{device}/telemetry".encode()),
        ("mqtt.qos", b"1"),
        ("train.id", train.encode()),
        ("device.id", str(device).encode()),
        ("reading.id", f"{device}/7/{i}".encode()),
    )
    return KafkaRecord("trackside.telemetry", train.encode(), value, headers)


def _segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def _drain(spool: Spool) -> list[KafkaRecord]:
    got: list[KafkaRecord] = []
    while not spool.empty():
        batch, pos = spool.read(5000)
        got += batch
        spool.commit(pos)
    return got


def _spool(
    path: Path, segment_bytes: int = 10**6, on_quarantine: Callable[[], object] | None = None
) -> Spool:
    return Spool(path, 10**8, segment_bytes, on_quarantine)


def _v1_frame(record: KafkaRecord) -> bytes:
    """A record as the bridge wrote it before format 2."""
    topic = record.topic.encode()
    parts = [struct.pack(">H", len(topic)), topic]
    key = record.key
    parts += [struct.pack(">i", -1)] if key is None else [struct.pack(">i", len(key)), key]
    parts += [struct.pack(">I", len(record.value)), record.value]
    parts.append(struct.pack(">H", len(record.headers)))
    for name, value in record.headers:
        raw = name.encode()
        parts += [struct.pack(">H", len(raw)), raw, struct.pack(">I", len(value)), value]
    body = b"".join(parts)
    return struct.pack(">II", len(body), zlib.crc32(body)) + body


# -- order, restart, bounds -----------------------------------------------------------------


def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**7, segment_bytes=2048)
    for i in range(0, 300, 30):
        spool.append(_records(30, i))
    got, pos = spool.read(1000)
    assert got == _records(300)
    assert len(_segments(tmp_path)) > 3
    spool.commit(pos)
    assert spool.empty()
    assert spool.used_bytes == 0
    assert len(_segments(tmp_path)) == 1


def test_uncommitted_records_survive_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**7, segment_bytes=4096)
    spool.append(_records(100))
    first, pos = spool.read(40)
    spool.commit(pos)
    spool.close()
    again = Spool(tmp_path, max_bytes=10**7, segment_bytes=4096)
    rest, _ = again.read(1000)
    assert first + rest == _records(100)


def test_appends_after_a_restart_in_a_segment_with_names(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.append(_records(10))
    spool.close()
    again = _spool(tmp_path)
    again.append([*_records(10, 10), KafkaRecord("other", None, b"x", (("new", b"1"),))])
    again.close()
    assert _drain(_spool(tmp_path)) == [
        *_records(20),
        KafkaRecord("other", None, b"x", (("new", b"1"),)),
    ]


def test_rewind_reads_the_same_batch_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**7, segment_bytes=4096)
    spool.append(_records(10))
    batch, _ = spool.read(5)
    spool.rewind()
    assert spool.read(5)[0] == batch


def test_room_is_bounded_by_max_bytes(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=4096, segment_bytes=1024)
    written = spool.append(_records(10))
    assert spool.used_bytes == written
    assert spool.has_room(4096 - written)
    assert not spool.has_room(4096 - written + 1)
    _, pos = spool.read(100)
    spool.commit(pos)
    assert spool.has_room(4096)


def test_a_bridge_reading_costs_about_350_bytes(tmp_path: Path) -> None:
    """docs/raspberry-pi.md sizes the spool with this number."""
    spool = _spool(tmp_path, segment_bytes=16 << 20)
    readings = [_reading(i) for i in range(2000)]
    written = sum(spool.append(readings[i : i + 100]) for i in range(0, 2000, 100))
    assert len(readings[0].value) == 240
    assert written / 2000 < 345
    assert _drain(spool) == readings


# -- drained segments --------------------------------------------------------------------------


def test_drained_segments_are_deleted_as_the_head_passes_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**7, segment_bytes=2048)
    for i in range(0, 200, 20):
        spool.append(_records(20, i))
    before = len(_segments(tmp_path))
    used = spool.used_bytes
    batch, pos = spool.read(100)
    spool.commit(pos)
    assert len(_segments(tmp_path)) < before
    assert _segments(tmp_path)[0].stem == f"{pos.segment:012d}"
    assert spool.used_bytes < used
    spool.close()
    again = Spool(tmp_path, max_bytes=10**7, segment_bytes=2048)
    assert batch + _drain(again) == _records(200)
    assert len(_segments(tmp_path)) == 1
    assert again.used_bytes == 0


def test_a_segment_left_behind_by_a_crash_in_commit_is_deleted_on_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**7, segment_bytes=2048)
    for i in range(0, 100, 20):
        spool.append(_records(20, i))
    first = _segments(tmp_path)[0]
    saved = first.read_bytes()
    batch, pos = spool.read(60)
    spool.commit(pos)
    spool.close()
    first.write_bytes(saved)  # as if the crash came after the head was written
    again = Spool(tmp_path, max_bytes=10**7, segment_bytes=2048)
    assert not first.exists()
    assert batch + _drain(again) == _records(100)


# -- damage ------------------------------------------------------------------------------------


@pytest.mark.parametrize("restart", [True, False])
def test_a_flipped_byte_mid_segment_sets_one_record_aside(
    tmp_path: Path, restart: bool, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []
    spool = _spool(tmp_path, on_quarantine=lambda: calls.append(1))
    for i in range(0, 60, 20):
        spool.append(_records(20, i))
    segment = _segments(tmp_path)[0]
    bad = _records(1, 25)[0]
    _flip(segment, segment.read_bytes().find(bad.value) + 7)
    if restart:
        spool.close()
        spool = _spool(tmp_path, on_quarantine=lambda: calls.append(1))
    with caplog.at_level(logging.WARNING, logger="bridge.spool"):
        got = _drain(spool)
    assert got == [r for r in _records(60) if r != bad]
    assert spool.quarantined == 1
    assert calls == [1]
    assert len(caplog.records) == 1
    assert "set aside" in caplog.records[0].getMessage()
    kept = (tmp_path / "quarantine").read_bytes()
    assert bad.value[:7] in kept  # the damaged frame's bytes are on disk
    assert bad.value[8:] in kept


def test_a_record_is_set_aside_once_across_rewinds_and_restarts(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.append(_records(30))
    segment = _segments(tmp_path)[0]
    _flip(segment, segment.read_bytes().find(_records(1, 10)[0].value) + 3)
    first, _ = spool.read(20)
    spool.rewind()
    assert spool.read(20)[0] == first
    spool.close()
    again = _spool(tmp_path)
    assert again.read(20)[0] == first
    assert spool.quarantined == 1
    assert again.quarantined == 0
    size = (tmp_path / "quarantine").stat().st_size
    again.rewind()
    assert _drain(again) == [r for r in _records(30) if r != _records(1, 10)[0]]
    assert (tmp_path / "quarantine").stat().st_size == size


@pytest.mark.parametrize(
    "where", [0, 1, 2, 3, 5, 6, 8, 11, FRAME, FRAME + 1, FRAME + 40], ids=lambda w: f"byte{w}"
)
def test_damage_anywhere_in_a_frame_is_resynchronised(tmp_path: Path, where: int) -> None:
    """Marker, kind, length, length check, crc, body: the frames after it are still read."""
    spool = _spool(tmp_path)
    starts = [MARKER + spool.append(_records(10))]  # brings the names
    for record in _records(20, 10):
        starts.append(starts[-1] + spool.append([record]))
    spool.close()
    _flip(_segments(tmp_path)[0], starts[5] + where)  # record 15
    again = _spool(tmp_path)
    assert _drain(again) == [r for r in _records(30) if r != _records(1, 15)[0]]
    assert again.quarantined == 1


def test_a_read_that_finds_only_damage_moves_the_head(tmp_path: Path) -> None:
    """The replay must not spin on a batch it cannot deliver."""
    spool = _spool(tmp_path)
    spool.append(_records(3))
    spool.append(_records(1, 3))
    segment = _segments(tmp_path)[0]
    spool.commit(spool.read(3)[1])
    _flip(segment, segment.read_bytes().find(_records(1, 3)[0].value))
    assert not spool.empty()
    assert spool.read(5000)[0] == []
    assert spool.empty()
    assert spool.quarantined == 1


def test_a_damaged_last_record_is_not_taken_for_a_torn_tail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = _spool(tmp_path)
    spool.append(_records(10))
    spool.append(_records(1, 10))
    spool.close()
    segment = _segments(tmp_path)[0]
    _flip(segment, segment.stat().st_size - 3)
    with caplog.at_level(logging.WARNING, logger="bridge.spool"):
        again = _spool(tmp_path)
    assert again.quarantined == 1
    assert len(caplog.records) == 1
    again.append(_records(1, 11))
    assert _drain(again) == [*_records(10), *_records(1, 11)]


def test_a_damaged_length_in_the_last_record_is_not_taken_for_a_torn_tail(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    first = spool.append(_records(10))
    spool.append(_records(1, 10))
    spool.close()
    segment = _segments(tmp_path)[0]
    _flip(segment, MARKER + first + 5)  # the high byte: the length now runs past the end
    again = _spool(tmp_path)
    assert again.quarantined == 1
    assert _drain(again) == _records(10)


def test_one_damaged_copy_of_the_names_costs_no_reading(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.append(_records(20))
    spool.close()
    _flip(_segments(tmp_path)[0], MARKER + FRAME + 2)  # the names frame in front
    again = _spool(tmp_path)
    assert _drain(again) == _records(20)
    assert again.quarantined == 1  # the damaged names frame itself, kept for a person


def test_names_come_from_a_later_copy_when_the_first_ones_are_damaged(tmp_path: Path) -> None:
    spool = _spool(tmp_path, segment_bytes=4 << 20)
    records = [_reading(i) for i in range(4000)]
    first = spool.append(records[:100])
    for i in range(100, 4000, 100):
        spool.append(records[i : i + 100])
    spool.close()
    segment = _segments(tmp_path)[0]
    data = segment.read_bytes()
    after = data.rfind(b"\xf5N", 0, MARKER + first)  # the whole table behind the first batch
    _flip(segment, MARKER + FRAME + 2)
    _flip(segment, after + FRAME + 2)
    again = _spool(tmp_path)
    assert _drain(again) == records
    assert again.quarantined == 2


def test_records_whose_names_are_all_lost_are_set_aside_not_dropped(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    first = spool.append(_records(5))
    spool.close()
    segment = _segments(tmp_path)[0]
    after = segment.read_bytes().rfind(b"\xf5N", 0, MARKER + first)
    _flip(segment, MARKER + FRAME + 2)
    _flip(segment, after + FRAME + 2)
    again = _spool(tmp_path)
    assert _drain(again) == []
    assert again.quarantined == 2 + 5
    kept = (tmp_path / "quarantine").read_bytes()
    assert all(r.value in kept for r in _records(5))


def test_quarantined_frames_feed_the_connector_metric(tmp_path: Path) -> None:
    def count() -> float:
        sample = "trackside_bridge_spool_quarantined_total"
        return REGISTRY.get_sample_value(sample, {"connector": "spool-test"}) or 0.0

    before = count()
    spool = _spool(tmp_path, on_quarantine=SPOOL_QUARANTINED.labels(connector="spool-test").inc)
    spool.append(_records(10))
    segment = _segments(tmp_path)[0]
    _flip(segment, segment.read_bytes().find(_records(1, 4)[0].value))
    _drain(spool)
    assert count() == before + 1


# -- head file ---------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "bad check", "empty", "past the end"])
def test_a_damaged_head_file_replays_from_the_oldest_segment(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path, max_bytes=10**7, segment_bytes=4096)
    for i in range(0, 100, 10):
        spool.append(_records(10, i))
    spool.commit(spool.read(40)[1])
    spool.close()
    head = tmp_path / "head"
    segment, offset, check = head.read_text().split()
    head.write_text(
        {
            "garbage": "\x00\x17x",
            "bad check": f"{segment} {int(offset) + 1} {check}",
            "empty": "",
            "past the end": f"{int(segment) + 99} 8 0",
        }[damage]
    )
    with caplog.at_level(logging.WARNING, logger="bridge.spool"):
        again = Spool(tmp_path, max_bytes=10**7, segment_bytes=4096)
    assert "head file is damaged" in caplog.text
    got = _drain(again)
    assert got[-60:] == _records(60, 40)  # duplicates before them are fine, loss is not
    assert set(got) <= set(_records(100))


def test_a_missing_head_file_replays_from_the_oldest_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**7, segment_bytes=2048)
    for i in range(0, 100, 10):
        spool.append(_records(10, i))
    spool.commit(spool.read(40)[1])
    spool.close()
    (tmp_path / "head").unlink()
    assert _drain(Spool(tmp_path, max_bytes=10**7, segment_bytes=2048))[-60:] == _records(60, 40)


# -- torn tail -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", ["in a body", "in a header", "in the names", "zeros"])
def test_a_torn_append_is_cut_quietly(
    tmp_path: Path, cut: str, caplog: pytest.LogCaptureFixture
) -> None:
    spool = _spool(tmp_path)
    kept = MARKER + spool.append(_records(5))
    torn = spool.append([*_records(3, 5), KafkaRecord("new topic", None, b"x" * 50)])
    spool.close()
    segment = _segments(tmp_path)[0]
    data = segment.read_bytes()
    assert len(data) == kept + torn
    expected = _records(8)
    last = data.rfind(b"\xf5N")  # the names table ends a batch that brings names
    if cut == "in a body":
        data = data[: last - 10]
    elif cut == "in a header":
        data = data[: data.rfind(b"\xf5R", 0, last) + 5]
    elif cut == "in the names":
        data, expected = data[: kept + 7], _records(5)
    else:
        data, expected = data[:kept] + bytes(4096), _records(5)
    segment.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="bridge.spool"):
        again = _spool(tmp_path)
        again.append(_records(1, 100))
        got = _drain(again)
    # Whole frames of the torn append stay: never acknowledged, so at worst sent twice.
    assert got == [*expected, *_records(1, 100)]
    assert caplog.records == []
    assert again.quarantined == 0
    assert not (tmp_path / "quarantine").exists()


def test_a_segment_cut_while_being_created_is_started_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**7, segment_bytes=1024)
    spool.append(_records(10))
    spool.close()
    (tmp_path / f"{1:012d}.seg").write_bytes(b"TSSP")
    again = Spool(tmp_path, max_bytes=10**7, segment_bytes=1024)
    again.append(_records(5, 10))
    assert _drain(again) == _records(15)
    assert again.quarantined == 0


# -- a disk that refuses writes ------------------------------------------------------------------


class _DiskFull:
    """os.pwrite that writes part of the data once, then fails as a full disk does."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.real = os.pwrite

    def __call__(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        if self.after > 0:
            done = self.real(fd, memoryview(data)[: self.after], offset)
            self.after = 0
            return done
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("partial", [0, 100, 5000])
def test_a_failed_append_raises_spool_error_and_is_cut_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, partial: int
) -> None:
    """ENOSPC simulated at the file layer (the tmpfs test below uses a real full disk)."""
    spool = _spool(tmp_path)
    spool.append(_records(10))
    size, used = _segments(tmp_path)[0].stat().st_size, spool.used_bytes
    monkeypatch.setattr("bridge.spool.os.pwrite", _DiskFull(partial))
    batch = [*_records(50, 10), KafkaRecord("brand new", None, b"v", (("h", b"1"),))]
    with pytest.raises(SpoolError, match="free disk space") as info:
        spool.append(batch)
    assert isinstance(info.value, BridgeError)
    assert isinstance(info.value.__cause__, OSError)
    assert _segments(tmp_path)[0].stat().st_size == size
    assert spool.used_bytes == used
    monkeypatch.undo()
    spool.append(batch)  # the caller retries the same batch once there is room
    spool.close()
    assert _drain(_spool(tmp_path)) == [*_records(10), *batch]


def test_a_failed_fsync_raises_spool_error_and_is_cut_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = _spool(tmp_path)
    spool.append(_records(10))
    size = _segments(tmp_path)[0].stat().st_size

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    real = os.fsync
    monkeypatch.setattr("bridge.spool.os.fsync", failing)
    with pytest.raises(SpoolError, match="Input/output error"):
        spool.append(_records(5, 10))
    monkeypatch.setattr("bridge.spool.os.fsync", real)
    assert _segments(tmp_path)[0].stat().st_size == size
    assert _drain(spool) == _records(10)


def test_an_append_that_cannot_be_cut_back_is_cut_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = _spool(tmp_path)
    spool.append(_records(10))
    monkeypatch.setattr("bridge.spool.os.pwrite", _DiskFull(3000))

    def failing(fd: int, length: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr("bridge.spool.os.ftruncate", failing)
    with pytest.raises(SpoolError):
        spool.append(_records(50, 10))
    monkeypatch.undo()
    assert _drain(spool) == _records(10)  # bytes past the tail are never read
    spool.append(_records(2, 60))
    spool.close()
    assert _drain(_spool(tmp_path)) == _records(2, 60)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (needs root and mount(2): the test fails where either is missing, as
    CI runs as root; nothing is skipped)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.fail("mounting a small tmpfs needs root (run the tests as root, as CI does)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        # Lazily: a spool left open by a failed test must not keep the mount.
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


def test_a_full_disk_raises_spool_error_and_the_spool_stays_consistent(small_disk: Path) -> None:
    spool = Spool(small_disk / "spool", max_bytes=10**8, segment_bytes=16 * 1024)
    filler = small_disk / "filler"
    filler.write_bytes(bytes(128 * 1024))
    kept: list[KafkaRecord] = []
    with pytest.raises(SpoolError, match="No space left on device"):
        for i in range(0, 10_000, 50):
            batch = _records(50, i)
            spool.append(batch)
            kept += batch
    assert kept  # some batches fitted before the disk was full
    # Room again: the refused batch goes in, and nothing that was kept is lost.
    filler.unlink()
    retry = _records(50, len(kept))
    spool.append(retry)
    spool.close()
    again = Spool(small_disk / "spool", max_bytes=10**8, segment_bytes=16 * 1024)
    assert _drain(again) == [*kept, *retry]
    assert again.quarantined == 0
    again.close()


# -- format 1 ------------------------------------------------------------------------------------


def test_segments_of_format_1_are_read_after_an_upgrade(tmp_path: Path) -> None:
    frames = [_v1_frame(r) for r in _records(30)]
    (tmp_path / f"{0:012d}.seg").write_bytes(b"".join(frames[:20]))
    (tmp_path / f"{1:012d}.seg").write_bytes(b"".join(frames[20:]))
    (tmp_path / "head").write_text(f"0 {sum(map(len, frames[:5]))}")
    spool = _spool(tmp_path)
    spool.append(_records(5, 30))
    assert _drain(spool) == _records(30, 5)[:25] + _records(5, 30)
    assert [p.stem for p in _segments(tmp_path)] == [f"{2:012d}"]
