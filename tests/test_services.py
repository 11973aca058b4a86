"""The real services every other test stands on: Kafka and both MQTT brokers."""

from __future__ import annotations

import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import Consumer, Producer

from tests.fixtures.kafka import KafkaService
from tests.fixtures.mqtt import BrokerHandle

pytestmark = pytest.mark.integration


def test_kafka_produce_and_consume_with_a_group(kafka: KafkaService, unique_topic: str) -> None:
    producer = Producer(
        {"bootstrap.servers": kafka.bootstrap_servers, "acks": "all", "enable.idempotence": True}
    )
    sent = [f"reading-{i}".encode() for i in range(100)]
    for value in sent:
        producer.produce(unique_topic, value=value, key=b"T101")
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"g-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([unique_topic])
    received: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(received) < len(sent) and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is not None and msg.error() is None:
            received.append(msg.value())
    consumer.commit(asynchronous=False)
    committed = consumer.committed(consumer.assignment(), timeout=10)
    consumer.close()
    assert received == sent
    assert [tp.offset for tp in committed] == [len(sent)]


def _qos1_round_trip(broker: BrokerHandle, topic: str, count: int) -> list[int]:
    received: list[int] = []
    subscribed = threading.Event()
    done = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        received.append(int(msg.payload))
        if len(received) == count:
            done.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}")
    sub.on_message = on_message
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.connect(broker.host, broker.port)
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    assert subscribed.wait(10)

    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    pub.max_inflight_messages_set(100)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    infos = [pub.publish(topic, str(i).encode(), qos=1) for i in range(count)]
    for info in infos:
        info.wait_for_publish(timeout=30)
    done.wait(30)
    for client in (pub, sub):
        client.loop_stop()
        client.disconnect()
    return received


def test_qos1_publish_is_received_in_full(mqtt_broker: BrokerHandle, unique_topic: str) -> None:
    count = 500
    assert sorted(_qos1_round_trip(mqtt_broker, unique_topic, count)) == list(range(count))
