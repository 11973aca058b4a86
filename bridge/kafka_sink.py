"""The Kafka side of a connector: an idempotent acks=all producer and its delivery reports."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from bridge import BridgeError
from bridge.config import ConnectorConfig
from bridge.record import KafkaRecord

__all__ = ["Delivery", "KafkaSink", "SinkError"]

log = logging.getLogger(__name__)

# Called from the producer's poll thread with None on success, else the error.
Delivery = Callable[[KafkaError | None, Any], None]


class SinkError(BridgeError):
    """The producer failed for good (a fatal librdkafka error)."""


class KafkaSink:
    """Produces records; a thread polls for delivery reports and calls each record's callback.

    `after_poll` runs in the poll thread after every round of reports (e.g. to send the
    PUBACKs they queued in one write).
    """

    def __init__(
        self, config: ConnectorConfig, after_poll: Callable[[], None] | None = None
    ) -> None:
        settings: dict[str, Any] = {
            "bootstrap.servers": config.kafka.bootstrap_servers,
            "client.id": f"trackside-{config.name}",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 1,
            "batch.num.messages": 10000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 200_000,
            # How long Kafka may take before a reading goes to the spool instead.
            "message.timeout.ms": config.spool.delivery_timeout_ms,
            "socket.nagle.disable": True,
            "log_level": 3,
        }
        settings.update(config.kafka.settings)
        try:
            self.producer = Producer(settings)
        except KafkaException as exc:
            raise SinkError(f"kafka.settings: librdkafka refused them: {exc}") from exc
        self._after_poll = after_poll
        self._running = True
        self._poller = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while self._running:
            if self.producer.poll(0.05) and self._after_poll is not None:
                self._after_poll()

    def produce(self, record: KafkaRecord, on_delivery: Delivery) -> None:
        """Queue one record; waits (never drops) while librdkafka's queue is full."""
        topic, key, value, headers = record
        if type(headers) is not list:  # the producer takes a list (or a dict), not a tuple
            headers = list(headers)
        # A list as it is: copying it for the producer's wider element type costs per reading.
        headers_arg: Any = headers or None
        while True:
            try:
                self.producer.produce(
                    topic, value=value, key=key, headers=headers_arg, on_delivery=on_delivery
                )
                return
            except BufferError:
                # The local queue is full: wait for deliveries to free room (backpressure).
                threading.Event().wait(0.005)

    def flush(self, timeout: float) -> int:
        """Wait for outstanding deliveries; returns how many are still outstanding."""
        remaining: int = self.producer.flush(timeout)
        return remaining

    def close(self, timeout: float = 10.0) -> int:
        """Flush, stop the poll thread; returns the count Kafka did not acknowledge in time."""
        remaining = self.flush(timeout)
        self._running = False
        self._poller.join(5)
        if remaining:
            log.warning("%d records were not acknowledged by Kafka before shutdown", remaining)
        else:  # nothing left to wait for: disconnect now, not when the object is collected
            self.producer.close()
        return remaining
