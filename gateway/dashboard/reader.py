"""The Kafka side of the dashboard: a consumer thread that keeps a `Fleet` and an `Inventory`
up to date.

Every dashboard reads everything, so the group id is unique per process and nothing is
committed. At start it reads the maintenance, status, alert and device-config topics (and the
OTA rollouts' progress topic) from the beginning and
only the last `telemetry_backlog` records of each telemetry partition (enough for the
sparklines). Alerts are transactional: the consumer reads with `isolation.level=read_committed`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from gateway.dashboard.clients import kafka_client
from gateway.dashboard.config import DashboardConfig
from gateway.dashboard.fleet import Fleet, RecordKind
from gateway.dashboard.inventory import Inventory

__all__ = ["FleetReader"]

log = logging.getLogger(__name__)

# librdkafka's logical offset "n records before the end" is OFFSET_TAIL_BASE - n.
_OFFSET_TAIL_BASE = -2000
# Errors that mean no broker answers: the reader asks again now and then to notice the return.
_UNREACHABLE = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE})
_PROBE_EVERY_S = 2.0


class FleetReader:
    """Consumes the topics into `fleet` and `inventory` on a thread; `start()`, then
    `stop()`."""

    def __init__(self, config: DashboardConfig, fleet: Fleet, inventory: Inventory) -> None:
        self.config = config
        self.fleet = fleet
        self.inventory = inventory
        topics = config.topics
        self._kinds: dict[str, RecordKind] = {
            topics.telemetry: "telemetry",
            topics.device_status: "status",
            topics.alerts: "alerts",
            topics.maintenance: "maintenance",
        }
        # Records of the inventory alone (the statuses go to both).
        self._inventory_only = {
            topics.device_config: inventory.apply_config,
            topics.ota_progress: inventory.apply_ota,
        }
        settings: dict[str, Any] = {
            "group.id": f"trackside-dashboard-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            # Topics created after the start (a fresh cluster) are picked up within seconds.
            "topic.metadata.refresh.interval.ms": 5000,
            "error_cb": self._on_error,
        }
        self._consumer = kafka_client(Consumer, config, settings)
        self.last_error: str | None = None
        self._last_code: int | None = None
        self._warned: set[int] = set()  # kinds of trouble logged since Kafka last answered
        self._last_probe = 0.0
        self.assigned = False
        self._running = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-reader", daemon=True)

    def start(self) -> None:
        """Subscribe and start consuming on the reader thread."""
        self._consumer.subscribe(
            [*self._kinds, *self._inventory_only], on_assign=self._on_assign
        )
        self._running.set()
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and leave the group."""
        self._running.clear()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._consumer.close()

    def _on_error(self, error: KafkaError) -> None:
        # One line per kind of trouble, not one per reconnect attempt.
        if error.code() != self._last_code and error.code() not in self._warned:
            self._warned.add(error.code())
            log.warning(
                "Kafka at %s: %s (retrying; check --bootstrap-servers if this lasts)",
                self.config.bootstrap_servers,
                error.str(),
            )
        self._last_code = error.code()
        self.last_error = error.str()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        telemetry = self.config.topics.telemetry
        for partition in partitions:
            partition.offset = OFFSET_BEGINNING
            if partition.topic == telemetry:
                try:
                    low, high = consumer.get_watermark_offsets(partition, timeout=10, cached=False)
                    partition.offset = max(low, high - self.config.telemetry_backlog)
                except KafkaException:
                    # Kafka went away meanwhile: an exception here would end the reader thread.
                    # librdkafka finds the same offset itself once Kafka answers again.
                    partition.offset = _OFFSET_TAIL_BASE - self.config.telemetry_backlog
        consumer.assign(partitions)
        self.assigned = True

    def _run(self) -> None:
        while self._running.is_set():
            # Wait for one record, then take what else is fetched: `consume(n, timeout)` alone
            # waits out the whole timeout unless n records are ready, delaying every update.
            first = self._consumer.poll(0.2)
            batch = [first, *self._consumer.consume(1000, 0)] if first is not None else []
            for msg in batch:
                error = msg.error()
                if error is not None:
                    self._on_error(error)
                    continue
                topic, timestamp_ms = msg.topic() or "", msg.timestamp()[1]
                kind = self._kinds.get(topic)
                if kind is not None:
                    self.fleet.apply(kind, msg.key(), msg.value(), timestamp_ms)
                if kind == "status":
                    self.inventory.apply_status(msg.key(), msg.value(), timestamp_ms)
                elif topic in self._inventory_only:
                    self._inventory_only[topic](msg.key(), msg.value(), timestamp_ms)
                self._answered()
            if not batch and self._last_code in _UNREACHABLE:
                self._probe()

    def _probe(self) -> None:
        """While Kafka is away and nothing arrives: one metadata request now and then, so the
        health turns back to ok when Kafka is back even if no record is written."""
        now = time.monotonic()
        if now - self._last_probe < _PROBE_EVERY_S:
            return
        self._last_probe = now
        try:
            self._consumer.list_topics(timeout=1.0)
        except KafkaException:
            return  # still away; already logged
        self._answered()

    def _answered(self) -> None:
        if self._last_code in _UNREACHABLE:
            log.warning("Kafka at %s reachable again", self.config.bootstrap_servers)
        self._warned.clear()
        self.last_error = self._last_code = None
