"""What a connector needs from the side its readings come from.

Two implementations: `bridge.mqtt_source.MqttSourceClient` (a subscription to any MQTT broker)
and `gateway.intake.BrokerIntake` (the embedded broker handing readings over in-process, so a
device's PUBACK waits for Kafka or the spool).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Protocol

__all__ = ["Ack", "OnMessages", "Publication", "Received", "Source", "SourceFactory"]

Received = tuple[str, bytes, int, int]  # topic, payload, qos, message id
Ack = tuple[int, int, int]  # message id, qos, generation
OnMessages = Callable[[list[Received], int], None]  # a batch, and the generation it came on


class Publication:
    """A QoS 1 publish of ours: `wait_for_publish()` until the broker has it."""

    def __init__(self) -> None:
        self.acked = threading.Event()

    def wait_for_publish(self, timeout: float | None = None) -> None:
        """Wait up to `timeout` seconds for the broker's acknowledgement."""
        self.acked.wait(timeout)

    def is_published(self) -> bool:
        """True once the broker acknowledged the message."""
        return self.acked.is_set()


class Source(Protocol):
    """Hands readings over in batches; a reading is acknowledged only when told to."""

    def start(self, timeout: float = 15.0) -> None:
        """Begin handing readings over."""

    def stop_intake(self) -> None:
        """Hand over no more readings; acknowledgements of those handed over still go out."""

    def stop(self) -> None:
        """Send the queued acknowledgements, then let go of the broker."""

    def ack(self, mid: int, qos: int, generation: int) -> None:
        """Queue the acknowledgement of one reading."""

    def ack_all(self, acks: Iterable[Ack]) -> None:
        """Queue the acknowledgements of many readings."""

    def flush_acks(self) -> None:
        """Send what is queued, at once."""

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> Publication:
        """Publish towards the devices (commands)."""

    def worker_failure(self) -> str | None:
        """Why a thread of this source ended while it should run, else None."""

    def broker_connected(self) -> bool:
        """Whether the connection to the MQTT broker is up (always, for an in-process one)."""


SourceFactory = Callable[[OnMessages], Source]
