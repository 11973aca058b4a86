"""The MQTT side of a connector: a paho client that acknowledges only when told to."""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge import BridgeError
from bridge.config import MqttSource

__all__ = ["MqttSourceClient", "SourceError"]

log = logging.getLogger(__name__)

OnMessage = Callable[[str, bytes, int, int, int], None]  # topic, payload, qos, mid, generation


class SourceError(BridgeError):
    """The MQTT broker could not be reached or refused the connector."""


class MqttSourceClient:
    """Subscribes with a persistent session; `ack(mid, qos, generation)` sends the PUBACK.

    A PUBACK belongs to the connection that received the message: after a reconnect the broker
    redelivers what was not acknowledged, so acks of an older connection are dropped.
    """

    def __init__(self, config: MqttSource, on_message: OnMessage) -> None:
        self.config = config
        self._on_message = on_message
        self.generation = 0
        self.connected = threading.Event()
        self.refused: str | None = None
        v5 = config.protocol == "5"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else not config.persistent_session,
            manual_ack=True,
        )
        self.client.max_inflight_messages_set(config.receive_maximum)
        if config.username:
            password = config.password.get_secret_value() if config.password else None
            self.client.username_pw_set(config.username, password)
        if config.tls:
            self.client.tls_set(
                ca_certs=str(config.tls.ca_file) if config.tls.ca_file else None,
                certfile=str(config.tls.cert_file) if config.tls.cert_file else None,
                keyfile=str(config.tls.key_file) if config.tls.key_file else None,
                cert_reqs=ssl.CERT_NONE if config.tls.insecure else ssl.CERT_REQUIRED,
            )
            self.client.tls_insecure_set(config.tls.insecure)
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_message = self._message
        self.client.reconnect_delay_set(1, 5)

    @property
    def filters(self) -> list[str]:
        """The subscriptions, with the shared-subscription prefix when a group is set."""
        group = self.config.shared_group
        return [f"$share/{group}/{t}" if group else t for t in self.config.topics]

    def start(self, timeout: float = 15.0) -> None:
        """Connect, subscribe and wait for the broker's yes."""
        properties = None
        if self.config.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = (
                self.config.session_expiry_s if self.config.persistent_session else 0
            )
            properties.ReceiveMaximum = self.config.receive_maximum
        try:
            self.client.connect(
                self.config.host,
                self.config.port,
                keepalive=self.config.keepalive_s,
                clean_start=not self.config.persistent_session
                if self.config.protocol == "5"
                else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                properties=properties,
            )
        except OSError as exc:
            raise SourceError(
                f"cannot reach the MQTT broker at {self.config.host}:{self.config.port}: {exc}; "
                "check mqtt.host and mqtt.port and that the broker runs"
            ) from exc
        self.client.loop_start()
        if not self.connected.wait(timeout) or self.refused:
            self.stop()
            raise SourceError(
                f"the MQTT broker at {self.config.host}:{self.config.port} did not accept the "
                f"connector: {self.refused or 'no answer'}; check mqtt.username and mqtt.password"
            )

    def _connected(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None
    ) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            self.connected.set()
            return
        self.generation += 1
        for topic in self.filters:
            client.subscribe(topic, qos=self.config.qos)
        log.info("connected to MQTT %s:%d", self.config.host, self.config.port)
        self.connected.set()

    def _disconnected(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected.clear()
        if reason.is_failure:
            log.warning("lost the MQTT broker (%s); reconnecting", reason)

    def _message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._on_message(msg.topic, bytes(msg.payload), msg.qos, msg.mid, self.generation)

    def ack(self, mid: int, qos: int, generation: int) -> None:
        """Send the PUBACK for a message of this connection (QoS 0 needs none)."""
        if qos and generation == self.generation:
            self.client.ack(mid, qos)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> mqtt.MQTTMessageInfo:
        """Publish (the reverse direction: commands to devices)."""
        return self.client.publish(topic, payload, qos=qos)

    def stop(self) -> None:
        """Disconnect; the broker keeps the session and the unacknowledged messages."""
        self.client.disconnect()
        self.client.loop_stop()
