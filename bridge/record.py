"""What flows through a connector: one MQTT message becoming one Kafka record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["KafkaRecord", "Message", "RecordError"]


class RecordError(Exception):
    """A message that cannot become a Kafka record; `reason` goes to the dead-letter headers."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class Message:
    """One MQTT message on its way through the transform chain."""

    topic: str
    payload: bytes
    qos: int
    fields: dict[str, Any] = field(default_factory=dict)
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    kafka_topic: str | None = None
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """A record ready for the producer or the spool."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
