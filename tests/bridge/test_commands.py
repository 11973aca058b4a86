"""The command relay against the real Kafka and a real MQTT broker (Mosquitto).

What reaches MQTT is checked by a paho-mqtt subscriber, a client the project did not write.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import Message, Producer
from paho.mqtt.enums import CallbackAPIVersion

from bridge.commands import CommandRelay, Publisher, PublishResult
from bridge.config import CommandsConfig, ConnectorConfig, ErrorsConfig, KafkaTarget, MqttSource
from bridge.mqtt_source import MqttSourceClient
from tests.bridge.streams import read_topic
from tests.fixtures.kafka import KafkaService
from tests.fixtures.mqtt import BrokerHandle
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.integration


class Watcher:
    """A paho-mqtt client subscribed to every command topic, recording what arrives."""

    def __init__(self, broker: BrokerHandle) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda _c, _u, _m, _reasons, _p: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe("trackside/v1/#", qos=1)
        wait_until(self._subscribed.is_set, 10, "the watcher's SUBACK")

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.seen.append((msg.topic, bytes(msg.payload)))

    def of_train(self, train: str) -> list[tuple[str, bytes]]:
        """Messages on any topic that mentions `train` (the trains are unique per test)."""
        with self._lock:
            return [(topic, payload) for topic, payload in self.seen if train in topic]

    def close(self) -> None:
        """Disconnect."""
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Setup:
    """A relay's configuration, its MQTT client, a watcher and a unique train id."""

    config: ConnectorConfig
    publisher: MqttSourceClient
    watcher: Watcher
    train: str
    bootstrap: str

    @property
    def dead_letter_topic(self) -> str:
        """The connector's dead-letter topic."""
        topic = self.config.errors.deadletterqueue_topic_name
        assert topic is not None
        return topic

    @property
    def commands_topic(self) -> str:
        """The Kafka topic the relay reads."""
        assert self.config.commands is not None
        return self.config.commands.topic

    def send(self, *values: bytes) -> None:
        """Write raw command records to the command topic, each acknowledged by Kafka."""
        producer = Producer({"bootstrap.servers": self.bootstrap})
        for value in values:
            producer.produce(self.commands_topic, value=value, key=self.train.encode())
        assert producer.flush(30) == 0


@pytest.fixture
def setup(mosquitto: BrokerHandle, kafka: KafkaService, unique_topic: str) -> Iterator[Setup]:
    """Everything a relay needs, on the session's Kafka and Mosquitto, unique to the test."""
    name = unique_topic.replace(".", "-")
    mqtt_config = MqttSource(
        host=mosquitto.host,
        port=mosquitto.port,
        client_id=f"relay-{uuid.uuid4().hex[:8]}",
        topics=(f"{name}/unused",),
        persistent_session=False,
    )
    config = ConnectorConfig(
        name=name,
        mqtt=mqtt_config,
        kafka=KafkaTarget(bootstrap_servers=kafka.bootstrap_servers),
        errors=ErrorsConfig(deadletterqueue_topic_name=f"{unique_topic}.dead-letter"),
        commands=CommandsConfig(topic=f"{unique_topic}.commands", group_id=name),
    )
    publisher = MqttSourceClient(mqtt_config, lambda _batch, _generation: None)
    publisher.start()
    watcher = Watcher(mosquitto)
    train = f"T{uuid.uuid4().hex[:10]}"
    yield Setup(config, publisher, watcher, train, kafka.bootstrap_servers)
    watcher.close()
    publisher.stop()


def _headers(record: Message) -> dict[str, bytes]:
    headers = record.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    return {key: value for key, value in pairs if isinstance(value, bytes)}


def _command(train_id: object, op: str = "identify", **extra: object) -> bytes:
    return json.dumps({"train_id": train_id, "op": op, **extra}).encode()


def _started(setup: Setup, publisher: Publisher | None = None) -> CommandRelay:
    relay = CommandRelay(setup.config, publisher or setup.publisher)
    relay.start()
    return relay


def test_a_command_with_a_wildcard_or_slash_in_its_ids_goes_to_the_dead_letter_topic(
    setup: Setup,
) -> None:
    train = setup.train
    bad = [
        _command(f"{train}#", device_id=7, id="hash"),
        _command(f"{train}+", id="plus"),
        _command(f"{train}/7", id="slash"),  # would reach device 7 of that train
        _command(train, device_id="7/#", id="device"),
    ]
    setup.send(*bad, _command(train, device_id=7, id="good"))
    relay = _started(setup)
    try:
        wait_until(lambda: relay.relayed == 1, 60.0, "the valid command to be relayed")
        wait_until(lambda: len(setup.watcher.of_train(train)) >= 1, 10, "the valid command on MQTT")
        letters = read_topic(setup.bootstrap, setup.dead_letter_topic, len(bad))
    finally:
        relay.stop()
    assert setup.watcher.of_train(train) == [
        (f"trackside/v1/{train}/7/cmd", json.dumps({"id": "good", "op": "identify"}).encode())
    ]
    assert relay.rejected == len(bad)
    assert relay.failure is None
    assert [letter.value() for letter in letters] == bad
    reasons = [_headers(letter)["__connect.errors.exception.message"] for letter in letters]
    assert reasons[0] == f"train id '{train}#' is not 1-32 letters, digits, '-' or '_'".encode()
    assert reasons[2] == f"train id '{train}/7' is not 1-32 letters, digits, '-' or '_'".encode()
    assert reasons[3].startswith(b"device id '7/#' is not a 32-bit number in decimal")
    headers = _headers(letters[0])
    assert headers["__connect.errors.topic"] == setup.commands_topic.encode()
    assert headers["__connect.errors.exception.class.name"] == b"CommandError"
    assert letters[0].key() == train.encode()


def test_malformed_commands_are_dead_lettered_and_the_relay_keeps_relaying(setup: Setup) -> None:
    train = setup.train
    malformed = [
        b"[]",
        b'"disable"',
        b"null",
        b"not json",
        b"\xff\xfe",
        b"[" * 100_000,  # deeper than the JSON parser recurses
        json.dumps({"train_id": train, "op": ["reboot"]}).encode(),  # unhashable op
        _command(train, op="explode"),
        _command(None),
        _command(train, device_id=True),
        _command(train, device_id=-1),
        _command(train, id={"nested": 1}),
    ]
    setup.send(*malformed, _command(train, op="disable", id="first"))
    relay = _started(setup)
    try:
        wait_until(lambda: relay.relayed == 1, 60.0, "the command after the malformed ones")
        assert relay.rejected == len(malformed)
        setup.send(_command(train, op="enable", id="second"))  # still relaying afterwards
        wait_until(lambda: relay.relayed == 2, 60.0, "a command sent after the malformed ones")
        wait_until(lambda: len(setup.watcher.of_train(train)) == 2, 10, "both commands on MQTT")
        letters = read_topic(setup.bootstrap, setup.dead_letter_topic, len(malformed))
    finally:
        relay.stop()
    assert relay.failure is None
    assert [json.loads(payload)["id"] for _, payload in setup.watcher.of_train(train)] == [
        "first",
        "second",
    ]
    assert [letter.value() for letter in letters] == malformed
    first = _headers(letters[0])
    assert first["__connect.errors.exception.message"] == b"a command is a JSON object, not list"
    assert first["__connect.errors.stage"] == b"VALUE_CONVERTER"
    assert first["__connect.errors.offset"] == b"0"


class _Broken:
    def publish(self, topic: str, payload: bytes, /) -> PublishResult:
        raise RuntimeError("the MQTT side is gone")


def test_an_unexpected_error_is_reported_in_failure_not_swallowed(setup: Setup) -> None:
    setup.send(_command(setup.train))
    relay = _started(setup, _Broken())
    try:
        wait_until(lambda: relay.failure is not None, 60.0, "the relay to report its failure")
    finally:
        relay.stop()
    assert relay.failure == ("the command relay stopped: RuntimeError('the MQTT side is gone')")
    assert relay.relayed == 0
