"""What flows through a connector: one MQTT message becoming one Kafka record."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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


class KafkaRecord(NamedTuple):
    """A record ready for the producer or the spool (a tuple: one is built per reading)."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]] = ()
