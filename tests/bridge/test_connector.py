"""The bridge against the real Kafka and both real brokers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import Producer
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import REGISTRY

from bridge.config import load_config
from bridge.connector import Connector
from firmware import wire
from gateway.localkafka import free_port
from tests.bridge.streams import (
    Background,
    connector_file,
    publish_readings,
    read_topic,
    seqs_by_device,
)
from tests.fixtures.kafka import KafkaService, LocalKafkaHandle
from tests.fixtures.mqtt import BrokerHandle
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.integration

DEVICES = [(f"T{t}", 100 + t * 10 + d) for t in range(5) for d in range(4)]  # 5 trains x 4


def _prefix(unique_topic: str) -> str:
    return unique_topic.replace(".", "-")


def _started_connector(
    tmp: Path, broker: BrokerHandle, bootstrap: str, name: str, **sections: Any
) -> Connector:
    """A connector from `connector_file(...)`, started in this process."""
    connector = Connector(load_config(connector_file(tmp, broker, bootstrap, name, **sections)))
    connector.start()
    return connector


def test_readings_arrive_decoded_keyed_by_train_in_device_order(
    mqtt_broker: BrokerHandle, kafka: KafkaService, tmp_path: Path, unique_topic: str
) -> None:
    name = _prefix(unique_topic)
    connector = _started_connector(tmp_path, mqtt_broker, kafka.bootstrap_servers, name)
    try:
        publish_readings(mqtt_broker, name, DEVICES, count=50)
        records = read_topic(kafka.bootstrap_servers, f"{name}.telemetry", 50 * len(DEVICES))
    finally:
        connector.stop()
    assert len(records) == 50 * len(DEVICES)
    for msg in records:
        reading = json.loads(msg.value())
        assert msg.key().decode() == reading["train_id"]
        assert reading["values"]["engine_temp"] == pytest.approx(87.3)
        assert reading["values"]["supply_voltage"] == pytest.approx(24.05)
        headers = dict(msg.headers())
        assert headers["device.id"] == str(reading["device_id"]).encode()
        assert headers["mqtt.topic"].decode().endswith(f"/{reading['device_id']}/telemetry")
    assert seqs_by_device(records) == {d: list(range(50)) for _, d in DEVICES}


def _counted(metric: str, labels: dict[str, str]) -> float:
    """A counter's total over the samples that carry `labels` (whatever their other labels)."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == metric
        for sample in family.samples
        if sample.name == f"{metric}_total" and labels.items() <= sample.labels.items()
    )


def test_garbage_goes_to_the_dead_letter_topic_and_the_bridge_keeps_running(
    mqtt_broker: BrokerHandle, kafka: KafkaService, tmp_path: Path, unique_topic: str
) -> None:
    name = _prefix(unique_topic)
    connector = _started_connector(tmp_path, mqtt_broker, kafka.bootstrap_servers, name)
    good = wire.encode(7, 1, 0, 1, {"engine_temp": 1})
    bad = {
        "random bytes": b"\x00" + os.urandom(39),  # version 0: never a frame by chance
        "truncated": good[:19],
        "unsupported version": b"\x91" + good[1:],
        "oversized": good + bytes(100),
        "device id mismatch": wire.encode(8, 1, 0, 1, {}),
    }
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect(mqtt_broker.host, mqtt_broker.port)
    client.loop_start()
    try:
        for payload in bad.values():
            client.publish(f"{name}/v1/T1/7/telemetry", payload, qos=1).wait_for_publish(10)
        client.publish(f"{name}/v1/T1/7/telemetry", good, qos=1).wait_for_publish(10)
        dead = read_topic(kafka.bootstrap_servers, f"{name}.dead-letter", len(bad))
        ok = read_topic(kafka.bootstrap_servers, f"{name}.telemetry", 1)
        assert connector.status().state == "running"
    finally:
        client.loop_stop()
        connector.stop()
    assert len(ok) == 1
    assert _counted("trackside_bridge_dead_lettered", {"connector": name}) == len(bad)
    # by reason: the error class the wire decoder raises
    reason = {"connector": name, "reason": "RecordError"}
    assert _counted("trackside_bridge_dead_lettered", reason) == len(bad)
    delivered = REGISTRY.get_sample_value("trackside_bridge_delivered_total", {"connector": name})
    assert delivered == 1  # the good reading only
    assert sorted(m.value() for m in dead) == sorted(bad.values())
    for msg in dead:
        headers = dict(msg.headers())
        assert headers["__connect.errors.topic"] == f"{name}/v1/T1/7/telemetry".encode()
        assert headers["__connect.errors.exception.class.name"] == b"RecordError"
        reason = headers["__connect.errors.exception.message"].decode()
        expected = next(k for k, v in bad.items() if v == msg.value())
        if expected != "random bytes":
            assert expected in reason


def _bridge_process(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "bridge", "run", "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_a_bridge_killed_mid_stream_loses_no_reading(
    mosquitto: BrokerHandle, kafka: KafkaService, tmp_path: Path, unique_topic: str
) -> None:
    name = _prefix(unique_topic)
    config = connector_file(tmp_path, mosquitto, kafka.bootstrap_servers, name)
    bridge = _bridge_process(config, tmp_path / "bridge-1.log")
    time.sleep(3)
    publisher = Background(publish_readings, mosquitto, name, DEVICES, 300, 2000.0)
    publisher.start()
    time.sleep(1.5)
    bridge.send_signal(signal.SIGKILL)
    bridge.wait(10)
    time.sleep(1)
    bridge = _bridge_process(config, tmp_path / "bridge-2.log")
    try:
        publisher.result(120)
        records = read_topic(
            kafka.bootstrap_servers, f"{name}.telemetry", 300 * len(DEVICES), settle=2
        )
    finally:
        bridge.send_signal(signal.SIGTERM)
        bridge.wait(30)
    seqs = seqs_by_device(records)
    for _, device in DEVICES:
        assert sorted(set(seqs[device])) == list(range(300)), f"device {device} lost readings"
    duplicates = len(records) - 300 * len(DEVICES)
    assert duplicates < 5000  # bounded by what was in flight at the kill


# Long enough to span what the outage is about: the connector's delivery timeout (5 s in
# connector_file: readings produced before the stop fail into the spool), librdkafka's
# reconnect backoff at its cap, and the spool taking every new reading meanwhile. Longer
# proves nothing more (it was 30 s).
OUTAGE_S = 12


def test_kafka_down_under_load_loses_nothing(
    mosquitto: BrokerHandle, kafka_factory: object, tmp_path: Path, unique_topic: str
) -> None:
    private: LocalKafkaHandle = kafka_factory()  # type: ignore[operator]
    name = _prefix(unique_topic)
    connector = _started_connector(tmp_path, mosquitto, private.bootstrap_servers, name)
    per_device = 500  # 20 devices at 400 readings/s: 25 s of traffic, past the restart
    publisher = Background(publish_readings, mosquitto, name, DEVICES, per_device, 400.0)
    publisher.start()
    try:
        delivered = {"connector": name}
        wait_until(lambda: _counted("trackside_bridge_delivered", delivered) >= 400, 30,
                   "a second of readings in Kafka before the stop")  # fmt: skip
        stopped = time.monotonic()
        private.stop()
        wait_until(
            lambda: time.monotonic() - stopped >= OUTAGE_S and connector.status().spool_bytes > 0,
            OUTAGE_S + 30,
            f"{OUTAGE_S} s of Kafka away with readings in the spool",
        )
        assert connector.status().mode == "spooling"
        private.start()
        publisher.result(180)
        records = read_topic(
            private.bootstrap_servers,
            f"{name}.telemetry",
            per_device * len(DEVICES),
            timeout=120,
            settle=2,
        )
    finally:
        connector.stop()
    seqs = seqs_by_device(records)
    for _, device in DEVICES:
        assert sorted(set(seqs[device])) == list(range(per_device)), f"device {device} lost"
        assert seqs[device] == sorted(seqs[device]), f"device {device} out of order"
    assert connector.status().spool_bytes == 0


def test_bad_config_names_the_file_and_key_and_exits_non_zero(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("mqtt:\n  port: seventy\nconverter: xml\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "bridge", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert str(config) in result.stderr
    assert "mqtt.port" in result.stderr


def test_two_bridges_share_the_load_on_mosquitto_and_lose_nothing(
    mosquitto: BrokerHandle, kafka: KafkaService, tmp_path: Path, unique_topic: str
) -> None:
    name = _prefix(unique_topic)
    connectors = [
        _started_connector(
            tmp_path / instance,
            mosquitto,
            kafka.bootstrap_servers,
            name,
            mqtt={"shared_group": "bridges", "client_id": f"{name}-{instance}"},
        )
        for instance in ("a", "b")
    ]
    try:
        publish_readings(mosquitto, name, DEVICES, count=100)
        records = read_topic(kafka.bootstrap_servers, f"{name}.telemetry", 100 * len(DEVICES))
        received = [c.received for c in connectors]
    finally:
        for connector in connectors:
            connector.stop()
    assert sorted(len(s) for s in seqs_by_device(records).values()) == [100] * len(DEVICES)
    for device, seqs in seqs_by_device(records).items():
        assert sorted(seqs) == list(range(100)), f"device {device} lost readings"
    assert sum(received) == 100 * len(DEVICES)
    assert min(received) > 0.2 * sum(received), f"load not shared: {received}"


def test_commands_flow_from_kafka_to_the_train_over_mqtt(
    mqtt_broker: BrokerHandle, kafka: KafkaService, tmp_path: Path, unique_topic: str
) -> None:
    name = _prefix(unique_topic)
    received: list[tuple[str, dict[str, str]]] = []
    listener = mqtt.Client(CallbackAPIVersion.VERSION2)
    listener.on_message = lambda _c, _u, m: received.append((m.topic, json.loads(m.payload)))
    listener.connect(mqtt_broker.host, mqtt_broker.port)
    listener.subscribe("trackside/v1/T9/#", qos=1)
    listener.loop_start()
    connector = _started_connector(
        tmp_path,
        mqtt_broker,
        kafka.bootstrap_servers,
        name,
        commands={"topic": f"{name}.commands", "group_id": f"{name}-cmd"},
    )
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    producer.produce(f"{name}.commands", key=b"T9", value=b"not json")
    producer.produce(
        f"{name}.commands",
        key=b"T9",
        value=json.dumps(
            {"train_id": "T9", "device_id": None, "op": "disable", "id": "c1"}
        ).encode(),
    )
    producer.produce(
        f"{name}.commands",
        key=b"T9",
        value=json.dumps({"train_id": "T9", "device_id": 4, "op": "identify", "id": "c2"}).encode(),
    )
    assert producer.flush(10) == 0
    try:
        deadline = time.monotonic() + 30
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        connector.stop()
        listener.loop_stop()
    assert received == [
        ("trackside/v1/T9/cmd", {"id": "c1", "op": "disable"}),
        ("trackside/v1/T9/4/cmd", {"id": "c2", "op": "identify"}),
    ]
    assert connector.commands is not None
    assert connector.commands.rejected == 1


def test_counters_count_what_kafka_took_dead_letters_apart(
    mosquitto: BrokerHandle, kafka: KafkaService, tmp_path: Path, unique_topic: str
) -> None:
    """Finding 5: delivered_total included dead letters, and dead_lettered_total counted a
    dead letter as soon as it was made, before Kafka (or only the spool) had it. Both count
    on Kafka's report now: while Kafka is away nothing, after the replay each exactly."""
    name = _prefix(unique_topic)
    labels = {"connector": name}

    def counted(metric: str) -> float:  # summed over the other labels (reason)
        return _counted(f"trackside_bridge_{metric}", labels)

    nowhere = f"127.0.0.1:{free_port()}"  # no Kafka: everything goes to the spool
    config = connector_file(tmp_path, mosquitto, nowhere, name)
    connector = Connector(load_config(config))
    connector.start()
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    try:
        for seq in range(5):
            frame = wire.encode(7, 1, seq, 1, {"engine_temp": 1})
            client.publish(f"{name}/v1/T1/7/telemetry", frame, qos=1).wait_for_publish(10)
        for _ in range(3):
            client.publish(f"{name}/v1/T1/7/telemetry", b"\x00garbage", qos=1).wait_for_publish(10)
        wait_until(lambda: counted("spooled") == 8, 30, "all eight in the spool")
        assert (counted("delivered"), counted("dead_lettered")) == (0, 0)
    finally:
        client.loop_stop()
        connector.stop()
    replaying = Connector(
        load_config(config, {"kafka": {"bootstrap_servers": kafka.bootstrap_servers}})
    )
    replaying.start()
    try:
        wait_until(lambda: counted("replayed") == 8, 60, "the spool replayed")
        assert (counted("delivered"), counted("dead_lettered")) == (5, 3)
    finally:
        replaying.stop()
    assert len(read_topic(kafka.bootstrap_servers, f"{name}.dead-letter", 3)) == 3
