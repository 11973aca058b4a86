"""The durable spool: order, commit, restart, crash repair, bounds."""

from __future__ import annotations

from pathlib import Path

from bridge.record import KafkaRecord
from bridge.spool import Spool


def _records(n: int, start: int = 0) -> list[KafkaRecord]:
    return [
        KafkaRecord(
            "t",
            f"k{i}".encode() if i % 2 else None,
            f"v{i}".encode() * 20,
            (("seq", str(i).encode()),),
        )
        for i in range(start, start + n)
    ]


def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**7, segment_bytes=2048)
    for i in range(0, 300, 30):
        spool.append(_records(30, i))
    got, pos = spool.read(1000)
    assert got == _records(300)
    assert len(list(tmp_path.glob("*.seg"))) > 3
    spool.commit(pos)
    assert spool.empty()
    assert spool.used_bytes == 0
    assert len(list(tmp_path.glob("*.seg"))) == 1


def test_uncommitted_records_survive_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**7, segment_bytes=4096)
    spool.append(_records(100))
    first, pos = spool.read(40)
    spool.commit(pos)
    spool.close()
    again = Spool(tmp_path, max_bytes=10**7, segment_bytes=4096)
    rest, _ = again.read(1000)
    assert first + rest == _records(100)


def test_rewind_reads_the_same_batch_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**7, segment_bytes=4096)
    spool.append(_records(10))
    batch, _ = spool.read(5)
    spool.rewind()
    assert spool.read(5)[0] == batch


def test_a_half_written_record_is_cut_on_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**7, segment_bytes=10**6)
    spool.append(_records(5))
    spool.close()
    segment = next(tmp_path.glob("*.seg"))
    segment.write_bytes(segment.read_bytes() + b"\x00\x00\x01\x00garbage")
    again = Spool(tmp_path, max_bytes=10**7, segment_bytes=10**6)
    assert again.read(100)[0] == _records(5)
    again.append(_records(1, 5))
    assert again.read(100)[0] == _records(1, 5)


def test_room_is_bounded_by_max_bytes(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=4096, segment_bytes=1024)
    written = spool.append(_records(10))
    assert spool.used_bytes == written
    assert spool.has_room(4096 - written)
    assert not spool.has_room(4096 - written + 1)
    _, pos = spool.read(100)
    spool.commit(pos)
    assert spool.has_room(4096)
