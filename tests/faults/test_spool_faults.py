"""The spool's disk failing: damaged bytes in a segment, and a full filesystem.

A damaged record is set aside (quarantined), counted and logged, and the rest replayed; a
disk that refuses writes holds the readings unacknowledged and makes /healthz 503 until it
has room again, then everything arrives. Counted by (device, seq) from paho and Kafka.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.localkafka import free_port
from tests.bridge.streams import publish_readings, read_topic
from tests.faults.ledger import AckLedger, KafkaTally
from tests.faults.services import (
    Bridge,
    Gateway,
    Names,
    assert_none_lost,
    resize_filesystem,
    small_filesystem,
)
from tests.fixtures.kafka import KafkaService, LocalKafkaHandle
from tests.fixtures.mqtt import BrokerHandle
from tests.fixtures.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# bridge/spool.py's format 2: `TSSPOOL2`, then frames of kind, body length, length check, CRC.
_MAGIC = 8
_FRAME = struct.Struct("<2sIHI")
_RECORD = b"\xf5R"


def damage_record(segment: Path, index: int) -> None:
    """Flip one byte in the body of the `index`-th record frame of a spool segment."""
    data = bytearray(segment.read_bytes())
    pos, seen = _MAGIC, 0
    while pos < len(data):
        kind, length, _, _ = _FRAME.unpack_from(data, pos)
        if kind == _RECORD:
            if seen == index:
                data[pos + _FRAME.size + length // 2] ^= 0xFF
                segment.write_bytes(bytes(data))
                return
            seen += 1
        pos += _FRAME.size + length
    raise AssertionError(f"{segment} holds only {seen} records")


def test_a_damaged_spool_record_is_quarantined_and_the_rest_replayed(
    tmp_path: Path, kafka: KafkaService, mosquitto_factory: Callable[..., BrokerHandle]
) -> None:
    """Finding 8: bytes flipped in a segment of a stopped bridge. On restart the damaged
    record is set aside and counted (trackside_bridge_spool_quarantined_total), every other
    reading reaches Kafka."""
    mosquitto = mosquitto_factory()
    names = Names()
    nowhere = f"127.0.0.1:{free_port()}"  # no Kafka there: every reading goes to the spool
    bridge = Bridge(tmp_path, names, nowhere, mosquitto)
    bridge.start()
    count = 300
    try:
        publish_readings(mosquitto, "trackside", [("T1", 1)], count)
        wait_until(
            lambda: bridge.metric("trackside_bridge_spooled_total") == count, 30, "all spooled"
        )
        bridge.stop()
        (segment,) = sorted(bridge.spool.glob("*.seg"))
        damage_record(segment, 150)
        bridge.point_at(names, kafka.bootstrap_servers, mosquitto)
        bridge.start()
        telemetry = read_topic(kafka.bootstrap_servers, names.telemetry, count - 1, settle=1.0)
        seqs = sorted(json.loads(m.value() or b"")["seq"] for m in telemetry)
        assert seqs == [seq for seq in range(count) if seq != 150]
        assert bridge.metric("trackside_bridge_spool_quarantined_total") == 1
        assert "set aside" in bridge.tail(200)
        assert (bridge.spool / "quarantine").stat().st_size > 0
        assert bridge.running()
    finally:
        bridge.stop()


def test_a_full_spool_disk_holds_readings_unacknowledged_until_it_has_room(
    tmp_path: Path, kafka_later: LocalKafkaHandle
) -> None:
    """The spool on a full filesystem: readings stay unacknowledged (the devices keep them),
    /healthz is 503 with the problem; once there is room again, and Kafka is back, every
    acknowledged reading arrives."""
    names = Names()
    with small_filesystem(tmp_path / "disk", "256k") as disk:
        gateway = Gateway(tmp_path, names, kafka_later.bootstrap_servers, spool=disk / "spool")
        gateway.start(timeout=60)
        ledger = AckLedger(gateway.mqtt_host, gateway.mqtt_port, devices=10, rate=400).start()
        tally: KafkaTally | None = None
        try:
            wait_until(lambda: gateway.get("/healthz")[0] == 503, 60, "/healthz 503, disk full")
            body = gateway.get("/healthz")[1]
            assert "cannot write the spool" in json.dumps(body), body
            held = len(ledger.acked)
            wait_until(lambda: ledger.unacked() > 1000, 30, "readings held unacknowledged")
            assert len(ledger.acked) == held
            assert gateway.running()
            resize_filesystem(disk, "64m")
            wait_until(lambda: gateway.get("/healthz")[0] == 200, 30, "/healthz 200 with room")
            wait_until(lambda: len(ledger.acked) > held + 1000, 30, "readings acknowledged again")
            kafka_later.start()
            tally = KafkaTally(kafka_later.bootstrap_servers, names.telemetry)
            ledger.stop()
            wait_until(lambda: ledger.unacked() == 0, 60, "paho's readings acknowledged")
            assert_none_lost(ledger, tally, at_least=held + 1000)
        finally:
            ledger.close()
            if tally is not None:
                tally.close()
            gateway.stop()
