"""A connector: MQTT in, Kafka out, at least once, with a spool while Kafka is away.

The PUBACK for a reading is sent only after Kafka acknowledged it (acks=all) or after it was
fsync'd into the spool. Readings flow straight to Kafka until a delivery fails; from then on
every reading goes to the spool, behind the ones that failed, and a replay thread drains the
spool in order once Kafka answers again. Only when the spool is empty do readings flow straight
again, so per-device order holds across an outage. A full spool blocks the MQTT thread, which
stops acknowledging: the broker holds the rest (backpressure, never silent loss). So does a
Kafka that reports more slowly than readings arrive: at most `mqtt.receive_maximum` readings
are in flight, whatever the broker sends.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from confluent_kafka import KafkaError

from bridge.commands import CommandRelay
from bridge.config import ConnectorConfig
from bridge.kafka_sink import KafkaSink
from bridge.metrics import (
    DEAD_LETTERED,
    DELIVERED,
    DROPPED,
    LATENCY,
    RECEIVED,
    REPLAYED,
    SPOOL_BYTES,
    SPOOLED,
)
from bridge.mqtt_source import MqttSourceClient
from bridge.pipeline import Pipeline
from bridge.record import KafkaRecord
from bridge.spool import Spool

__all__ = ["Connector", "ConnectorStatus"]

log = logging.getLogger(__name__)

REPLAY_BATCH = 5000
MAX_PENDING = 10000


@dataclass(frozen=True)
class ConnectorStatus:
    """What `status()` reports."""

    name: str
    state: Literal["running", "paused", "failed", "stopped"]
    mode: Literal["direct", "spooling"]
    spool_bytes: int
    reason: str | None = None


class Connector:
    """One configured connector; `start()`, `stop()`, `pause()`, `resume()`, `status()`."""

    def __init__(self, config: ConnectorConfig) -> None:
        self.config = config
        self.name = config.name
        self.pipeline = Pipeline(config)
        self.spool = Spool(config.spool.path, config.spool.max_bytes, config.spool.segment_bytes)
        self.source = MqttSourceClient(config.mqtt, self._on_message)
        self.sink = KafkaSink(config, after_poll=self.source.flush_acks)
        self.commands = CommandRelay(config, self.source) if config.commands else None
        self._cv = threading.Condition()
        self._spooling = not self.spool.empty()
        self._in_flight = 0  # produced straight to Kafka, not yet reported
        self._max_in_flight = config.mqtt.receive_maximum
        self._throttled = False  # the MQTT thread waits for reports to free room
        self._pending: list[tuple[KafkaRecord, tuple[int, int, int]]] = []  # for the spool
        self._writing = 0
        self._state: Literal["running", "paused", "failed", "stopped"] = "stopped"
        self._reason: str | None = None
        self._stop = threading.Event()
        self._replayer = threading.Thread(target=self._replay, name="spool-replay", daemon=True)
        self._writer = threading.Thread(target=self._write_spool, name="spool-write", daemon=True)
        # Metric children bound once: a label lookup per reading costs more than the update.
        labels = {"connector": self.name}
        self._received = RECEIVED.labels(**labels)
        self._delivered_count = DELIVERED.labels(**labels)
        self._dropped = DROPPED.labels(**labels)
        self._dead_lettered = DEAD_LETTERED.labels(**labels)
        self._spooled = SPOOLED.labels(**labels)
        self._replayed = REPLAYED.labels(**labels)
        self._spool_bytes = SPOOL_BYTES.labels(**labels)
        self._latency = LATENCY.labels(**labels)
        self._dead_letter_topic = config.errors.deadletterqueue_topic_name
        self.received = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to both sides and start moving readings."""
        self._replayer.start()
        self._writer.start()
        self.source.start()
        if self.commands:
            self.commands.start()
        self._state = "running"

    def stop(self, timeout: float = 10.0) -> None:
        """Drain: let Kafka acknowledge what is in flight (PUBACKs go out), then disconnect."""
        if self.commands:
            self.commands.stop()
        self.sink.flush(timeout)
        self.source.stop()
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        self._replayer.join(timeout)
        self._writer.join(timeout)
        self.sink.close(timeout)
        self.spool.close()
        if self._state != "failed":
            self._state = "stopped"

    def pause(self) -> None:
        """Stop taking readings; the broker keeps them in the persistent session."""
        if self._state == "running":
            self.source.stop()
            self._state = "paused"

    def resume(self) -> None:
        """Take readings again."""
        if self._state == "paused":
            self.source.start()
            self._state = "running"

    def status(self) -> ConnectorStatus:
        """State, mode and spool use, with the reason when failed."""
        return ConnectorStatus(
            self.name,
            self._state,
            "spooling" if self._spooling else "direct",
            self.spool.used_bytes,
            self._reason,
        )

    # -- the path of one reading -------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes, qos: int, mid: int, gen: int) -> None:
        self._received.inc()
        self.received += 1
        received = time.monotonic()
        try:
            record = self.pipeline.process(topic, payload, qos)
        except Exception as exc:  # noqa: BLE001 - errors.tolerance=none: fail, never ack
            self._fail(str(exc))
            return
        if record is None:
            self._dropped.inc()
            self.source.ack(mid, qos, gen)
            return
        if record.topic == self._dead_letter_topic:
            self._dead_lettered.inc()
        ack = (mid, qos, gen)
        with self._cv:
            # Backpressure on Kafka: wait until half the in-flight readings are reported. The
            # wait may end in spooling mode, which the check below then honours.
            while (
                self._in_flight >= self._max_in_flight
                and not self._spooling
                and not self._stop.is_set()
            ):
                self._throttled = True
                self._cv.wait_for(lambda: not self._throttled or self._stop.is_set())
            if self._spooling:
                # Behind everything still in flight, which may yet fail into the spool; and
                # never more than MAX_PENDING waiting for the disk (backpressure).
                self._cv.wait_for(
                    lambda: (
                        (self._in_flight == 0 and len(self._pending) < MAX_PENDING)
                        or self._stop.is_set()
                    )
                )
                self._pending.append((record, ack))
                self._cv.notify_all()
                return
            self._in_flight += 1
        self.sink.produce(record, partial(self._delivered, record, ack, received))

    def _delivered(
        self,
        record: KafkaRecord,
        ack: tuple[int, int, int],
        received: float,
        err: KafkaError | None,
        _msg: Any,
    ) -> None:
        """Kafka's report on one reading (poll thread): PUBACK it, or spool it on failure."""
        with self._cv:
            self._in_flight -= 1
            if err is not None:
                if not self._spooling:
                    log.warning("Kafka did not take a reading (%s): spooling", err)
                self._spooling = True
                self._pending.append((record, ack))
            if self._throttled and self._in_flight <= self._max_in_flight // 2:
                self._throttled = False
                self._cv.notify_all()
            # Waiters only care while spooling; waking them for every reading costs a lot.
            elif self._spooling:
                self._cv.notify_all()
        if err is None:
            self._delivered_count.inc()
            self._latency.observe(time.monotonic() - received)
            self.source.ack(*ack)

    def _write_spool(self) -> None:
        """Group commit: append everything pending with one fsync, then send the PUBACKs."""
        while True:
            with self._cv:
                self._cv.wait_for(lambda: bool(self._pending) or self._stop.is_set())
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
                self._writing = len(batch)
            records = [record for record, _ in batch]
            size = sum(len(r.value) + len(r.topic) + 64 for r in records)
            while not self.spool.has_room(size) and not self._stop.is_set():
                log.warning("the spool is full (%d bytes): holding readings", self.spool.max_bytes)
                self._stop.wait(1.0)
            self.spool.append(records)
            self._spooled.inc(len(records))
            self._spool_bytes.set(self.spool.used_bytes)
            for _, ack in batch:
                self.source.ack(*ack)
            self.source.flush_acks()
            with self._cv:
                self._writing = 0
                self._cv.notify_all()

    def _fail(self, reason: str) -> None:
        log.error("connector %s failed: %s", self.name, reason)
        self._reason = reason
        self._state = "failed"
        self.source.stop()

    # -- replay --------------------------------------------------------------------------------

    def _replay(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            with self._cv:
                if self.spool.empty():
                    idle = not self._pending and not self._writing and not self._in_flight
                    if self._spooling and idle:
                        self._spooling = False
                        log.info("spool drained: readings go straight to Kafka again")
                    self._cv.wait(0.5)
                    continue
            records, position = self.spool.read(REPLAY_BATCH)
            if self._deliver_in_order(records):
                self.spool.commit(position)
                self._replayed.inc(len(records))
                self._spool_bytes.set(self.spool.used_bytes)
                with self._cv:
                    self._cv.notify_all()
                backoff = 0.5
            else:
                self.spool.rewind()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _deliver_in_order(self, records: list[KafkaRecord]) -> bool:
        """Produce a batch and wait for every report; True if Kafka took all of it."""
        outcome = {"failed": 0, "pending": len(records)}
        done = threading.Event()

        def report(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                outcome["failed"] += 1
            outcome["pending"] -= 1
            if outcome["pending"] == 0:
                done.set()

        for record in records:
            self.sink.produce(record, report)
        done.wait(self.config.spool.delivery_timeout_ms / 1000 + 5)
        return done.is_set() and outcome["failed"] == 0
