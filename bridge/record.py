"""What flows through a connector: one MQTT message becoming one Kafka record."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = [
    "DEVICE_ID",
    "DEVICE_ID_RULE",
    "ID_RULES",
    "TRAIN_ID",
    "TRAIN_ID_RULE",
    "KafkaRecord",
    "Message",
    "RecordError",
    "TopicError",
    "dead_letter_reason",
    "id_problem",
    "shown",
]

# The ids that name MQTT topic levels (docs/architecture.md), as regex sources for fullmatch.
# Character classes are spelled out: `\w` and `\d` would also take non-ASCII letters and digits.
TRAIN_ID = r"[A-Za-z0-9_-]{1,32}"
TRAIN_ID_RULE = "1-32 letters, digits, '-' or '_'"
# The wire header's 32-bit device id in decimal, as str(int) writes it: 0 to 4294967295 with
# no leading zero. The range lives in the pattern, digit by digit, so one fullmatch decides.
DEVICE_ID = (
    r"0|[1-9][0-9]{0,8}|[1-3][0-9]{9}|4[01][0-9]{8}|42[0-8][0-9]{7}|429[0-3][0-9]{6}"
    r"|4294[0-8][0-9]{5}|42949[0-5][0-9]{4}|429496[0-6][0-9]{3}|4294967[01][0-9]{2}"
    r"|42949672[0-8][0-9]|429496729[0-5]"
)
DEVICE_ID_RULE = "a 32-bit number in decimal (0-4294967295, no leading zero)"
# Field name -> (pattern, rule in words); the topic fields and the command relay check these.
ID_RULES = {"train_id": (TRAIN_ID, TRAIN_ID_RULE), "device_id": (DEVICE_ID, DEVICE_ID_RULE)}
_CHECKS = {name: re.compile(pattern).fullmatch for name, (pattern, _) in ID_RULES.items()}


class RecordError(Exception):
    """A message that cannot become a Kafka record; `reason` goes to the dead-letter headers."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TopicError(RecordError):
    """The MQTT topic does not fit `mqtt.topic_pattern`, or one of its ids breaks its rule."""


def id_problem(name: str, value: str) -> str | None:
    """Why `value` is no valid `name` ("train_id", "device_id"), or None if it is (or no rule)."""
    check = _CHECKS.get(name)
    if check is None or check(value) is not None:
        return None
    return f"{name.replace('_', ' ')} {shown(value)} is not {ID_RULES[name][1]}"


def shown(value: str, limit: int = 40) -> str:
    """`value` quoted for a log line or a header: ASCII only (anything else escaped), bounded."""
    if len(value) <= limit:
        return ascii(value)
    return f"{value[:limit]!a}... ({len(value):,} characters)"


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


def dead_letter_reason(record: KafkaRecord) -> str:
    """The error class a dead letter names in its Kafka Connect header, else `unknown` (the
    context headers turned off): a short, bounded word, fit for a metric label."""
    for name, value in record.headers:
        if name == "__connect.errors.exception.class.name":
            return value.decode(errors="replace")[:64]
    return "unknown"
