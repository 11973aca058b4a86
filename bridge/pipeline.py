"""From one MQTT message to one Kafka record: topic fields, transforms, converter, dead letters."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from bridge import BridgeError
from bridge.config import ConnectorConfig
from bridge.converters import CONVERTERS
from bridge.record import ID_RULES, KafkaRecord, Message, RecordError, TopicError, id_problem
from bridge.transforms import build_chain, template

__all__ = ["Outcome", "Pipeline", "RejectedRecordError"]

log = logging.getLogger(__name__)

Outcome = KafkaRecord | None  # None: dropped on purpose by a filter


class RejectedRecordError(BridgeError):
    """errors.tolerance is `none` and a message could not be converted."""


class Pipeline:
    """The message path of one connector, configured once."""

    def __init__(self, config: ConnectorConfig) -> None:
        self.config = config
        self.chain = build_chain(config)
        self.convert = CONVERTERS[config.converter]
        self.topic = template(config.kafka.topic)
        self.key = template(config.kafka.key)
        # Topic pattern segments such as {train_id} become message fields.
        self.levels = config.mqtt.topic_pattern.split("/")
        self.segments = tuple(
            (i, part[1:-1])
            for i, part in enumerate(self.levels)
            if part.startswith("{") and part.endswith("}")
        )
        self._topic_match, self._named = _topic_regex(self.levels, self.segments)
        self._names = tuple(name for _, name in self.segments)

    def process(self, topic: str, payload: bytes, qos: int) -> Outcome:
        """The Kafka record for this message: the reading, or a dead letter with the reason."""
        # One fullmatch checks the level count and both ids and yields the fields: 0.46 us
        # against 0.33 us for the unchecked split it replaced, of about 9.5 us per reading; a
        # fullmatch per field after the split took 0.72 us.
        match = self._topic_match(topic)
        if match is None:
            reason = self.topic_problem(topic)
            return self.dead_letter(topic, payload, reason, TopicError.__name__)
        if self._named:
            fields = match.groupdict()
        else:
            fields = dict(zip(self._names, match.groups(), strict=True))
        msg = Message(topic, payload, qos, fields)
        try:
            for step in self.chain:
                if step(msg) is None:
                    return None
            topic_out = msg.kafka_topic or self.topic(msg)
            key = msg.key if msg.key is not None else self.key(msg).encode()
            return KafkaRecord(topic_out, key, self.convert(msg), msg.headers)
        except RecordError as exc:
            return self.dead_letter(topic, payload, exc.reason, type(exc).__name__)

    def topic_problem(self, topic: str) -> str:
        """Why `topic` does not fit `mqtt.topic_pattern` (the slow path of a rejected topic)."""
        parts = topic.split("/")
        pattern = self.config.mqtt.topic_pattern
        if len(parts) != len(self.levels):
            return (
                f"topic has {len(parts)} levels, mqtt.topic_pattern {pattern!r} "
                f"has {len(self.levels)}"
            )
        for i, name in self.segments:
            problem = id_problem(name, parts[i])
            if problem is not None:
                return problem
        return f"topic does not fit mqtt.topic_pattern {pattern!r}"

    def dead_letter(self, topic: str, payload: bytes, reason: str, error_class: str) -> Outcome:
        """The record for the dead-letter topic, with Kafka Connect's context headers."""
        errors = self.config.errors
        if errors.tolerance == "none":
            raise RejectedRecordError(
                f"message on {topic!r} rejected ({reason}); errors.tolerance=none"
            )
        if errors.deadletterqueue_topic_name is None:
            log.warning("dropped a message on %r: %s (no dead-letter topic set)", topic, reason)
            return None
        headers: tuple[tuple[str, bytes], ...] = ()
        if errors.deadletterqueue_context_headers_enable:
            headers = (
                ("__connect.errors.topic", topic.encode()),
                ("__connect.errors.connector.name", self.config.name.encode()),
                ("__connect.errors.stage", b"TRANSFORMATION"),
                ("__connect.errors.exception.class.name", error_class.encode()),
                ("__connect.errors.exception.message", reason.encode()),
            )
        return KafkaRecord(errors.deadletterqueue_topic_name, topic.encode(), payload, headers)


def _topic_regex(
    levels: list[str], segments: tuple[tuple[int, str], ...]
) -> tuple[Callable[[str], re.Match[str] | None], bool]:
    """A fullmatch for the pattern's topics, and whether its groups carry the fields' names.

    Named fields with an id rule (train_id, device_id) must follow it; other named fields and
    plain levels match any one level: the subscription's filters choose the topics.
    """
    names = [name for _, name in segments]
    named = len(set(names)) == len(names) and all(name.isidentifier() for name in names)
    parts = ["[^/]*"] * len(levels)
    for i, name in segments:
        pattern = ID_RULES[name][0] if name in ID_RULES else "[^/]*"
        parts[i] = f"(?P<{name}>{pattern})" if named else f"({pattern})"
    return re.compile("/".join(parts)).fullmatch, named
