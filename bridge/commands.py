"""Reverse direction: commands from a Kafka topic to the devices' MQTT command topics.

At least once: a command's offset is committed only after the broker acknowledged the
MQTT publish (QoS 1); a crash before that sends it again.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid

from confluent_kafka import Consumer

from bridge.config import ConnectorConfig
from bridge.mqtt_source import MqttSourceClient

__all__ = ["CommandRelay", "command_topic"]

log = logging.getLogger(__name__)

_OPS = {"disable", "enable", "reboot", "identify"}


def command_topic(command: dict[str, object]) -> str:
    """The MQTT topic of a command: one device, or every device of the train."""
    train = command["train_id"]
    device = command.get("device_id")
    return (
        f"trackside/v1/{train}/{device}/cmd" if device is not None else f"trackside/v1/{train}/cmd"
    )


class CommandRelay:
    """A thread that moves `{"train_id", "device_id", "op", "id"}` records to MQTT."""

    def __init__(self, config: ConnectorConfig, mqtt: MqttSourceClient) -> None:
        assert config.commands is not None
        self.topic = config.commands.topic
        self.mqtt = mqtt
        self.consumer = Consumer(
            {
                "bootstrap.servers": config.kafka.bootstrap_servers,
                "group.id": config.commands.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "log_level": 3,
            }
        )
        self.relayed = 0
        self.rejected = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="command-relay", daemon=True)

    def start(self) -> None:
        """Subscribe and start relaying."""
        self.consumer.subscribe([self.topic])
        self._thread.start()

    def stop(self) -> None:
        """Stop after the command in hand; close the consumer."""
        self._stop.set()
        self._thread.join(10)
        self.consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self.consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            try:
                command = json.loads(msg.value() or b"")
                if command.get("op") not in _OPS or not command.get("train_id"):
                    raise ValueError(f"op must be one of {sorted(_OPS)} with a train_id")
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                log.warning("skipped a malformed command at offset %d: %s", msg.offset(), exc)
                self.rejected += 1
                self.consumer.commit(message=msg, asynchronous=False)
                continue
            payload = {"id": command.get("id") or uuid.uuid4().hex, "op": command["op"]}
            while not self._stop.is_set():
                info = self.mqtt.publish(command_topic(command), json.dumps(payload).encode())
                info.wait_for_publish(5)
                if info.is_published():
                    break
                log.warning("MQTT did not acknowledge a command yet; retrying")
            else:
                return
            self.relayed += 1
            self.consumer.commit(message=msg, asynchronous=False)
