"""Test helpers: devices that publish wire-format readings, and a Kafka reader."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from confluent_kafka import Consumer, Message
from paho.mqtt.enums import CallbackAPIVersion

from firmware import wire
from tests.fixtures.mqtt import BrokerHandle

__all__ = ["connector_file", "publish_readings", "read_topic", "seqs_by_device"]

STANDARD = {
    "engine_temp": 873,
    "bearing_left_temp": 412,
    "bearing_right_temp": 405,
    "vibration_rms": 120,
    "speed": 1234,
    "supply_voltage": 24050,
}


def connector_file(
    tmp: Path, broker: BrokerHandle, bootstrap: str, name: str, **sections: Any
) -> Path:
    """A connector YAML for this broker and Kafka, with unique client id and topics."""
    config: dict[str, Any] = {
        "name": name,
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "protocol": "5" if broker.name == "mosquitto" else "3.1.1",
            "client_id": f"bridge-{name}",
            "topics": [f"{name}/v1/+/+/telemetry"],
            "topic_pattern": f"{name}/v1/{{train_id}}/{{device_id}}/telemetry",
        },
        "kafka": {"bootstrap_servers": bootstrap, "topic": f"{name}.telemetry"},
        "errors": {"deadletterqueue_topic_name": f"{name}.dead-letter"},
        "spool": {"path": str(tmp / f"spool-{uuid.uuid4().hex[:6]}"), "delivery_timeout_ms": 5000},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def publish_readings(
    broker: BrokerHandle,
    prefix: str,
    devices: Iterable[tuple[str, int]],
    count: int,
    rate: float = 0.0,
    boot_id: int = 1,
    credentials: tuple[str, str] | None = None,
) -> None:
    """Each (train, device) publishes `count` readings, seq 0..count-1, QoS 1, all acked.

    With a device account's credentials (`device-N`) the client id is that device's own
    (`trackside-N`): brokers bind client ids to accounts."""
    client_id = f"pub-{uuid.uuid4().hex[:8]}"
    if credentials and credentials[0].startswith("device-"):
        client_id = f"trackside-{credentials[0].removeprefix('device-')}"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    if credentials:
        client.username_pw_set(*credentials)
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    devices = list(devices)
    infos = []
    for seq in range(count):
        for train, device in devices:
            frame = wire.encode(device, boot_id, seq, int(time.time() * 1000), STANDARD)
            infos.append(client.publish(f"{prefix}/v1/{train}/{device}/telemetry", frame, qos=1))
        if rate:
            time.sleep(len(devices) / rate)
    for info in infos:
        info.wait_for_publish(timeout=120)
    client.loop_stop()
    client.disconnect()


def read_topic(
    bootstrap: str, topic: str, expected: int, timeout: float = 90.0, settle: float = 0.0
) -> list[Message]:
    """Read `topic` from the start until `expected` records (then `settle` s more) or timeout."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"r-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    records: list[Message] = []
    deadline = time.monotonic() + timeout
    settled_at: float | None = None
    while time.monotonic() < deadline:
        for msg in consumer.consume(10000, 0.5):
            if msg.error() is None:
                records.append(msg)
        if len(records) >= expected:
            settled_at = settled_at or time.monotonic() + settle
            if time.monotonic() >= settled_at:
                break
    consumer.close()
    return records


def seqs_by_device(records: list[Message]) -> dict[int, list[int]]:
    """Sequence numbers per device, in the order Kafka holds them."""
    seqs: dict[int, list[int]] = defaultdict(list)
    for msg in records:
        reading = json.loads(msg.value())
        seqs[reading["device_id"]].append(reading["seq"])
    return seqs


class Background(threading.Thread):
    """Run a function in a thread and re-raise its error on join."""

    def __init__(self, target: Any, *args: Any) -> None:
        super().__init__(daemon=True)
        self._fn, self._args, self.error = target, args, None

    def run(self) -> None:
        try:
            self._fn(*self._args)
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc

    def result(self, timeout: float) -> None:
        """Wait and raise what the thread raised."""
        self.join(timeout)
        assert not self.is_alive(), "background work did not finish"
        if self.error:
            raise self.error
