"""From one MQTT message to one Kafka record: topic fields, transforms, converter, dead letters."""

from __future__ import annotations

import logging

from bridge import BridgeError
from bridge.config import ConnectorConfig
from bridge.converters import CONVERTERS
from bridge.record import KafkaRecord, Message, RecordError
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
        self.segments = tuple(
            (i, part[1:-1])
            for i, part in enumerate(config.mqtt.topic_pattern.split("/"))
            if part.startswith("{") and part.endswith("}")
        )

    def process(self, topic: str, payload: bytes, qos: int) -> Outcome:
        """The Kafka record for this message: the reading, or a dead letter with the reason."""
        msg = Message(topic, payload, qos)
        try:
            parts = topic.split("/")
            fields = msg.fields
            for i, name in self.segments:
                if i < len(parts):
                    fields[name] = parts[i]
            for step in self.chain:
                if step(msg) is None:
                    return None
            topic_out = msg.kafka_topic or self.topic(msg)
            key = msg.key if msg.key is not None else self.key(msg).encode()
            return KafkaRecord(topic_out, key, self.convert(msg), msg.headers)
        except RecordError as exc:
            return self.dead_letter(topic, payload, exc.reason, type(exc).__name__)

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
