"""A paho-mqtt observer of one train's topics, for the firmware tests."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bridge.wire_decoder import Reading, decode
from tests.fixtures.micropython import UnixDevice
from tests.fixtures.mqtt import BrokerHandle


class Observer:
    """Records every message on trackside/v1/{train}/#; a persistent session, so that it misses
    nothing across a broker restart."""

    def __init__(self, broker: BrokerHandle, device: UnixDevice) -> None:
        self.device = device
        self._lock = threading.Lock()
        self.messages: list[tuple[str, bytes, float]] = []
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"obs-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(0.1, 1)
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        if not self._subscribed.wait(30):
            raise AssertionError(f"observer could not subscribe on {broker.address}")

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(f"trackside/v1/{self.device.train_id}/#", qos=1)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, time.monotonic()))

    def payloads(self, leaf: str, since: float = 0.0) -> list[bytes]:
        """Payloads received on the device's `leaf` topic after monotonic time `since`."""
        topic = self.device.topic(leaf)
        with self._lock:
            return [p for t, p, at in self.messages if t == topic and at >= since]

    def readings(self, since: float = 0.0) -> list[Reading]:
        """Telemetry decoded as the bridge decodes it."""
        return [decode(p) for p in self.payloads("telemetry", since)]

    def json(self, leaf: str, since: float = 0.0) -> list[dict[str, Any]]:
        """JSON messages on `leaf` (status, reply)."""
        return [json.loads(p) for p in self.payloads(leaf, since)]

    def send(self, leaf: str, payload: bytes | str, retain: bool = False) -> None:
        """Publish to the device's `leaf` topic (cmd, config), QoS 1."""
        self._client.publish(self.device.topic(leaf), payload, qos=1, retain=retain)

    def wait(self, condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
        """Poll until `condition()` is truthy; fail with `what` and the device log otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.device.running():
                log = self.device.log()
                raise AssertionError(f"device exited while waiting for {what}:\n{log}")
            result = condition()
            if result:
                return result
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def close(self) -> None:
        """Disconnect."""
        self._client.loop_stop()
        self._client.disconnect()


@pytest.fixture
def observe() -> Iterator[Callable[[BrokerHandle, UnixDevice], Observer]]:
    """Start an Observer of a device's train topics; closed after the test."""
    observers: list[Observer] = []

    def start(broker: BrokerHandle, device: UnixDevice) -> Observer:
        observer = Observer(broker, device)
        observers.append(observer)
        return observer

    yield start
    for observer in observers:
        observer.close()
