"""The real firmware on the MicroPython unix port publishes through `trackside gateway run`,
which is SIGKILLed twice: each device keeps what was not acknowledged in its outbox and sends
it again, so every reading of every device reaches Kafka, with no gap and in order."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from tests.faults.gateway import gateway_process
from tests.fixtures.kafka import KafkaService
from tests.fixtures.micropython import UnixDevice
from tests.fixtures.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]

DEVICES = 4
SAMPLE_MS = 100


class Readings:
    """Each (device, boot)'s sequence numbers, in the order Kafka holds them."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"fleet-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
            }
        )
        self.consumer.subscribe([topic])
        self.seqs: dict[tuple[int, int], list[int]] = defaultdict(list)

    def newest(self) -> dict[int, int]:
        """Poll; then each device's highest sequence number so far."""
        for msg in self.consumer.consume(10000, 0.2):
            if msg.error() is None:
                reading = json.loads(msg.value())
                self.seqs[reading["device_id"], reading["boot_id"]].append(reading["seq"])
        newest: dict[int, int] = {}
        for (device, _), seqs in self.seqs.items():
            newest[device] = max(newest.get(device, -1), *seqs)
        return newest

    def all_beyond(self, seq: int) -> bool:
        """Whether every device has a reading past `seq`."""
        newest = self.newest()
        return len(newest) == DEVICES and min(newest.values()) > seq


def test_firmware_fleet_through_gateway_sigkills_loses_nothing(
    tmp_path: Path, kafka: KafkaService, unix_device: Callable[..., UnixDevice]
) -> None:
    topic = f"fleet-{uuid.uuid4().hex[:8]}.telemetry"
    gateway = gateway_process(tmp_path, kafka, topic)
    gateway.start(timeout=60)
    devices = [
        unix_device(gateway, device_id=n, train_id="T9", sample_ms=SAMPLE_MS)
        for n in range(1, 1 + DEVICES)
    ]
    readings = Readings(kafka.bootstrap_servers, topic)
    try:
        wait_until(partial(readings.all_beyond, 20), 60, "every device past seq 20")
        for _ in range(2):
            gateway.kill()
            killed = time.monotonic()
            newest = max(readings.newest().values())
            gateway.start(timeout=60)
            # What the devices sampled while the gateway was away, and 10 more, must arrive.
            away = math.ceil((time.monotonic() - killed) * 1000 / SAMPLE_MS)
            wait_until(
                partial(readings.all_beyond, newest + away + 10), 90, "readings after the kill"
            )
        for device in devices:
            device.stop()
        for (device_id, boot), seqs in readings.seqs.items():
            first_copies = list(dict.fromkeys(seqs))
            assert first_copies == list(range(len(first_copies))), (
                f"device {device_id} boot {boot}: gaps or disorder in {first_copies}"
            )
        assert len(readings.seqs) == DEVICES  # one boot each: no device restarted
    finally:
        readings.consumer.close()
        gateway.stop()
