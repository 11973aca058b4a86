"""Retained messages reach the clients subscribed to them, and no one else, on both brokers;
with paho, a client the project did not write."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.fixtures.mqtt import BrokerHandle
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.integration


class Client:
    """A paho client that records the topics it receives."""

    def __init__(self, broker: BrokerHandle, client_id: str, clean: bool = True) -> None:
        self.received: list[str] = []
        self._lock = threading.Lock()
        self.paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                clean_session=clean)
        self.paho.on_message = self._on_message
        self.broker = broker

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append(msg.topic)

    def topics(self) -> list[str]:
        """What it received so far."""
        with self._lock:
            return list(self.received)

    def forget(self) -> None:
        """Start recording afresh."""
        with self._lock:
            self.received.clear()

    def connect(self) -> Client:
        """Connect and wait for the CONNACK."""
        connected = threading.Event()
        self.paho.on_connect = lambda *_: connected.set()
        self.paho.connect(self.broker.host, self.broker.port)
        self.paho.loop_start()
        assert connected.wait(30), f"{self.paho._client_id!r} got no CONNACK"
        return self

    def subscribe(self, topic: str) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK."""
        done = threading.Event()
        self.paho.on_subscribe = lambda *_: done.set()
        self.paho.subscribe(topic, qos=1)
        assert done.wait(30), f"no SUBACK for {topic}"

    def close(self) -> None:
        """Disconnect cleanly."""
        self.paho.disconnect()
        self.paho.loop_stop()


@pytest.fixture
def clients(mqtt_broker: BrokerHandle) -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        client.close()


def _publish(broker: BrokerHandle, topics: list[str], retain: bool = True) -> None:
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    publisher.connect(broker.host, broker.port)
    publisher.loop_start()
    for topic in topics:
        publisher.publish(topic, b"x", qos=1, retain=retain).wait_for_publish(30)
    publisher.disconnect()
    publisher.loop_stop()


def test_a_client_gets_the_retained_messages_of_its_own_subscriptions_only(
    mqtt_broker: BrokerHandle, clients: list[Client]
) -> None:
    base = f"trackside/v1/R{uuid.uuid4().hex[:6]}"
    first, second = f"{base}/1/config", f"{base}/2/config"
    owner = Client(mqtt_broker, f"own-{uuid.uuid4().hex[:8]}").connect()
    clients.append(owner)
    owner.subscribe(first)
    _publish(mqtt_broker, [first])
    wait_until(lambda: owner.topics() == [first], 30, "the subscriber's retained message")
    # Another device connects and subscribes to its own config: it must not get the first's.
    other = Client(mqtt_broker, f"oth-{uuid.uuid4().hex[:8]}").connect()
    clients.append(other)
    other.subscribe(second)
    _publish(mqtt_broker, [second])
    wait_until(lambda: second in other.topics(), 30, "its own retained message")
    late = Client(mqtt_broker, f"late-{uuid.uuid4().hex[:8]}").connect()
    clients.append(late)
    late.subscribe(second)
    wait_until(lambda: second in late.topics(), 30, "the retained message on subscribing")
    assert other.topics() == [second] and late.topics() == [second]


def test_clients_connecting_while_others_subscribe_all_keep_working(
    mqtt_broker: BrokerHandle, clients: list[Client]
) -> None:
    """Persistent sessions reconnect while new clients subscribe: each keeps its session (the
    embedded broker once ended a reconnecting client's session when the subscription table
    changed under it)."""
    run = uuid.uuid4().hex[:6]
    count = 30
    old = [f"rt/{run}/old/{i}" for i in range(count)]
    new = [f"rt/{run}/new/{i}" for i in range(count)]
    _publish(mqtt_broker, old + new)
    persistent = [Client(mqtt_broker, f"p-{run}-{i}", clean=False) for i in range(count)]
    for client, topic in zip(persistent, old, strict=True):
        client.connect().subscribe(topic)
        client.close()
    fresh = [Client(mqtt_broker, f"n-{run}-{i}") for i in range(count)]
    clients.extend(persistent + fresh)

    def reconnect(client: Client) -> None:
        client.connect()

    def join(pair: tuple[Client, str]) -> None:
        pair[0].connect().subscribe(pair[1])

    with ThreadPoolExecutor(16) as pool:
        done = [pool.submit(reconnect, c) for c in persistent]
        done += [pool.submit(join, pair) for pair in zip(fresh, new, strict=True)]
        for future in done:
            future.result()
    for client, topic in zip(fresh, new, strict=True):
        wait_until(lambda c=client, t=topic: t in c.topics(), 30, f"the retained {topic}")
    # Every reconnected session still delivers: a new message on each one's topic arrives.
    for client in persistent:
        client.forget()
    _publish(mqtt_broker, old, retain=False)
    for client, topic in zip(persistent, old, strict=True):
        wait_until(lambda c=client, t=topic: t in c.topics(), 30, f"a message on {topic}")
