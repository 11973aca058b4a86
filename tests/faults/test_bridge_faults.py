"""Bad input and dying workers: a 2 MB message, ids outside the id rules, a worker thread
that ends. Each must end in a clean refusal or the dead-letter topic while the readings
around it arrive, or fail loudly (health 503, non-zero exit); never a silent stop.

Readings are counted by (device, seq) from paho and Kafka, never by the bridge's counters.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import Message, Producer
from paho.mqtt.enums import CallbackAPIVersion

from bridge.config import load_config
from bridge.connector import Connector
from bridge.kafka_sink import DEAD_LETTER_VALUE_BYTES
from firmware import wire
from gateway.config import HttpSettings
from gateway.http_api import make_app
from tests.bridge.streams import STANDARD, connector_file, read_topic
from tests.faults.ledger import AckLedger, KafkaTally
from tests.faults.services import Gateway, Names, assert_none_lost
from tests.fixtures.kafka import KafkaService
from tests.fixtures.mqtt import BrokerHandle
from tests.fixtures.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]

HUGE = 2_000_000  # above Kafka's message.max.bytes (1 MB) and both brokers' limits (256 KiB)


def publish_once(host: str, port: int, topic: str, payload: bytes) -> str:
    """Publish one QoS 1 message from a fresh clean-session client: "acknowledged", or
    "disconnected" if the broker closed the connection instead."""
    outcome: list[str] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"huge-{uuid.uuid4().hex[:8]}")

    def on_disconnect(*_: object) -> None:
        outcome.append("disconnected")
        done.set()

    def on_publish(*_: object) -> None:
        outcome.append("acknowledged")
        done.set()

    client.on_disconnect = on_disconnect
    client.on_publish = on_publish
    client.connect(host, port)
    client.loop_start()
    client.publish(topic, payload, qos=1)
    wait_until(done.is_set, 30, f"the broker's answer to a {len(payload):,}-byte message")
    client.loop_stop()  # no reconnect: a device resending it forever is the device's fault
    client.disconnect()
    return outcome[0]


@pytest.mark.parametrize("broker_kind", ["embedded", "mosquitto", "mosquitto-without-limit"])
def test_a_2_mb_message_stops_nothing(
    broker_kind: str,
    tmp_path: Path,
    kafka: KafkaService,
    mosquitto_factory: Callable[..., BrokerHandle],
) -> None:
    """Finding 1: one oversized message stopped the bridge for good. Both brokers close the
    connection (the gateway's Mosquitto config sets max_packet_size); a Mosquitto whose
    operator raised the limit hands it over, and the bridge dead-letters it cut to size."""
    names = Names()
    broker: BrokerHandle | None = None
    if broker_kind != "embedded":
        raised = "max_packet_size 10000000\n" if broker_kind == "mosquitto-without-limit" else ""
        broker = mosquitto_factory(raised)
    gateway = Gateway(tmp_path, names, kafka.bootstrap_servers, broker)
    gateway.start(timeout=60)
    ledger = AckLedger(gateway.mqtt_host, gateway.mqtt_port, devices=5, rate=250).start()
    tally = KafkaTally(kafka.bootstrap_servers, names.telemetry)
    poison_topic = "trackside/v1/T9/99/telemetry"
    poison = random.Random(1).randbytes(HUGE)
    try:
        wait_until(lambda: len(ledger.acked) > 250, 30, "readings acknowledged before")
        outcome = publish_once(gateway.mqtt_host, gateway.mqtt_port, poison_topic, poison)
        expected = "acknowledged" if broker_kind == "mosquitto-without-limit" else "disconnected"
        assert outcome == expected
        before = len(ledger.acked)
        wait_until(lambda: len(ledger.acked) > before + 1000, 60, "readings acknowledged after")
        assert gateway.get("/healthz")[0] == 200, gateway.tail()
        ledger.stop()
        wait_until(lambda: ledger.unacked() == 0, 60, "paho's readings acknowledged")
        assert_none_lost(ledger, tally)
        if broker_kind == "mosquitto-without-limit":
            dead = read_topic(kafka.bootstrap_servers, names.dead_letter, 1, timeout=60)
            assert len(dead) == 1
            headers = dict(dead[0].headers() or [])
            assert headers["__connect.errors.topic"] == poison_topic.encode()
            assert headers["trackside.original.size"] == str(HUGE).encode()
            sha256 = hashlib.sha256(poison).hexdigest().encode()
            assert headers["trackside.original.sha256"] == sha256
            assert dead[0].value() == poison[:DEAD_LETTER_VALUE_BYTES]
        assert gateway.running()
        assert gateway.get("/healthz")[0] == 200
    finally:
        ledger.close()
        tally.close()
        gateway.stop()


def header(msg: Message, name: str) -> bytes:
    """One header's value of a Kafka record, b"" if absent."""
    value = dict(msg.headers() or []).get(name)
    return value.encode() if isinstance(value, str) else value or b""


@pytest.mark.parametrize("broker_kind", ["embedded", "mosquitto"])
def test_ids_outside_the_rules_are_dead_lettered_end_to_end(
    broker_kind: str,
    tmp_path: Path,
    kafka: KafkaService,
    mosquitto_factory: Callable[..., BrokerHandle],
) -> None:
    """Findings 4 and 12: invalid train ids reached telemetry, and a command's train id went
    into an MQTT topic unchecked. Readings on such topics go to the dead-letter topic; a
    command with `#` in its train id is dead-lettered, never published; the rest flows."""
    names = Names()
    broker = mosquitto_factory() if broker_kind == "mosquitto" else None
    commands = {"topic": names.commands, "group_id": f"{names.prefix}-commands"}
    gateway = Gateway(tmp_path, names, kafka.bootstrap_servers, broker, commands=commands)
    gateway.start(timeout=60)
    heard: list[str] = []
    listener = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cmd-{uuid.uuid4().hex[:8]}")
    listener.on_message = lambda _c, _u, m: heard.append(m.topic)
    listener.connect(gateway.mqtt_host, gateway.mqtt_port)
    listener.subscribe("trackside/v1/+/cmd", qos=1)
    listener.subscribe("trackside/v1/+/+/cmd", qos=1)
    listener.loop_start()
    invalid = [
        "trackside/v1/T 1/1/telemetry",
        f"trackside/v1/{'T' * 33}/1/telemetry",
        "trackside/v1/T\u00e41/1/telemetry",
        "trackside/v1//1/telemetry",
        "trackside/v1/T1/007/telemetry",
    ]
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ids-{uuid.uuid4().hex[:8]}")
    publisher.connect(gateway.mqtt_host, gateway.mqtt_port)
    publisher.loop_start()
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    try:
        now = 1_764_540_000_000
        topics = ["trackside/v1/T1/1/telemetry", *invalid, "trackside/v1/T1/1/telemetry"]
        infos = [
            publisher.publish(topic, wire.encode(1, 1, seq, now, STANDARD), qos=1)
            for seq, topic in enumerate(topics)
        ]
        for info in infos:
            info.wait_for_publish(30)
        for train in ("T#1", "T+1", "T1/2", "T1"):
            command = {"train_id": train, "device_id": None, "op": "disable", "id": train}
            producer.produce(names.commands, key=b"k", value=json.dumps(command).encode())
        assert producer.flush(10) == 0
        wait_until(lambda: "trackside/v1/T1/cmd" in heard, 60, "the valid command on MQTT")
        assert heard == ["trackside/v1/T1/cmd"]
        telemetry = read_topic(kafka.bootstrap_servers, names.telemetry, 2, settle=1.0)
        assert [json.loads(m.value() or b"")["seq"] for m in telemetry] == [0, len(topics) - 1]
        dead = read_topic(kafka.bootstrap_servers, names.dead_letter, 8, settle=1.0)
        where = [header(m, "__connect.errors.topic") for m in dead]
        readings = [w.decode() for w in where if w.startswith(b"trackside/")]
        assert readings == invalid
        assert len(where) == len(invalid) + 3  # the three commands, by their Kafka topic
        assert gateway.get("/healthz")[0] == 200
        assert gateway.running()
    finally:
        publisher.loop_stop()
        listener.loop_stop()
        gateway.stop()


# -- a worker thread that dies ------------------------------------------------------------------
# No outside fault kills a connector's worker any more (the spool's I/O errors, Kafka's errors
# and broken MQTT connections are all handled; and the suite runs as root, so an unreadable
# spool directory is no fault at all). The death is therefore injected: the spool's `empty()`,
# which the replay thread calls twice a second, raises once a trigger file exists. MemoryError
# is caught by the worker's wrapper; SystemExit ends the thread without a trace, which only
# the connector's look at its threads can notice.

INJECT = """
import sys
from pathlib import Path
from bridge.spool import Spool
trigger, error, config = Path(sys.argv[1]), sys.argv[2], sys.argv[-1]
empty = Spool.empty
def dying_empty(self):
    if trigger.exists():
        raise {"MemoryError": MemoryError, "SystemExit": SystemExit}[error]("injected")
    return empty(self)
Spool.empty = dying_empty
sys.argv = ["trackside", "gateway", "run", "-c", config]  # the CLI's own entry point
from gateway.cli import main
main()
"""


@pytest.mark.parametrize("error", ["MemoryError", "SystemExit"])
def test_a_dead_worker_makes_the_gateway_exit_non_zero(
    error: str, tmp_path: Path, kafka: KafkaService
) -> None:
    """Finding 7: worker threads died unnoticed; the process looked alive."""
    trigger = tmp_path / "die"
    launcher = [sys.executable, "-c", INJECT, str(trigger), error]
    gateway = Gateway(tmp_path, Names(), kafka.bootstrap_servers, launcher=launcher)
    gateway.start(timeout=60)
    try:
        frame = wire.encode(1, 1, 0, 1_764_540_000_000, STANDARD)
        topic = "trackside/v1/T1/1/telemetry"
        assert publish_once(gateway.mqtt_host, gateway.mqtt_port, topic, frame) == "acknowledged"
        assert gateway.get("/healthz")[0] == 200
        trigger.touch()
        wait_until(lambda: not gateway.running(), 30, "the gateway's exit after a worker died")
        assert gateway.exit_code() == 1
        assert "thread spool-replay" in gateway.tail(50)
    finally:
        gateway.stop()


def test_a_dead_worker_makes_healthz_503(
    tmp_path: Path, kafka: KafkaService, mosquitto: BrokerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The health endpoint answers from the workers: a thread that died (injected as above,
    in-process) makes /healthz 503 with the thread's name."""
    names = Names()
    path = connector_file(tmp_path, mosquitto, kafka.bootstrap_servers, names.prefix)
    connector = Connector(load_config(path))
    connector.start()
    try:
        monkeypatch.setattr(connector.spool, "empty", _out_of_memory)
        wait_until(lambda: connector.status().state == "failed", 10, "the connector failed")

        async def healthz() -> tuple[int, dict[str, object]]:
            app = make_app({connector.name: connector}, HttpSettings())
            async with TestClient(TestServer(app)) as client:
                answer = await client.get("/healthz")
                return answer.status, await answer.json()

        status, body = asyncio.run(healthz())
        assert status == 503
        assert "thread spool-replay failed" in yaml.safe_dump(body)
    finally:
        connector.stop()


def _out_of_memory() -> bool:
    raise MemoryError("injected")
