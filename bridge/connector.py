"""A connector: MQTT in, Kafka out, at least once, with a spool while Kafka is away.

The PUBACK for a reading is sent only after Kafka acknowledged it (acks=all) or after it was
fsync'd into the spool. Readings flow straight to Kafka until a delivery fails; from then on
every reading goes to the spool, behind the ones that failed, and a replay thread drains the
spool in order once Kafka answers again. Only when the spool is empty do readings flow straight
again, so per-device order holds across an outage. A full spool blocks the MQTT thread, which
stops acknowledging: the broker holds the rest (backpressure, never silent loss). So does a
Kafka that reports more slowly than readings arrive: at most `mqtt.receive_maximum` readings
are in flight, whatever the broker sends.

The hot path is batched: the MQTT client hands over up to a few hundred readings at once, which
are converted, admitted under one lock round and produced; a successful delivery report only
appends to a queue, and after each round of reports one pass frees their in-flight slots,
updates the metrics and queues their PUBACKs, which go out in one write.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import deque
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
    IN_FLIGHT,
    LATENCY,
    RECEIVED,
    REPLAYED,
    SPOOL_BYTES,
    SPOOLED,
)
from bridge.mqtt_source import Ack, MqttSourceClient, Received
from bridge.pipeline import Pipeline
from bridge.record import KafkaRecord
from bridge.spool import Spool

__all__ = ["Connector", "ConnectorStatus", "tune_gc_for_streaming"]

log = logging.getLogger(__name__)

REPLAY_BATCH = 5000
MAX_PENDING = 10000
# Every reading allocates a few short-lived containers, and up to receive_maximum of them are
# alive at once: with the default threshold of 700 the collector runs dozens of times a second
# and walks the whole young heap each time. Measured at 20,000 readings/s: p99 19-20 -> 15-16 ms.
GC_GEN0_THRESHOLD = 20000

# A reading produced straight to Kafka: the record (spooled if Kafka refuses it), its PUBACK, and
# its MQTT receive time for the latency histogram, or 0.0 when not sampled (one per batch).
InFlight = tuple[KafkaRecord, Ack, float]


def tune_gc_for_streaming() -> None:
    """For a process that moves readings for hours: call once its start-up is done.

    What start-up built lives as long as the process, so it leaves every collection; and the
    first generation is collected every GC_GEN0_THRESHOLD allocations instead of 700, which cut
    the bridge's p99 latency at 20k readings/s from about 20 to 15 ms (docs/benchmarks.md).
    """
    gc.freeze()
    if gc.get_threshold()[0] < GC_GEN0_THRESHOLD:
        gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)


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
        self.source = MqttSourceClient(config.mqtt, self._on_messages)
        self.sink = KafkaSink(config, after_poll=self._end_round)
        self.commands = CommandRelay(config, self.source) if config.commands else None
        self._cv = threading.Condition()
        self._spooling = not self.spool.empty()
        self._in_flight = 0  # produced straight to Kafka, not yet reported
        self._max_in_flight = config.mqtt.receive_maximum
        self._throttled = False  # the MQTT thread waits for reports to free room
        self._pending: list[tuple[KafkaRecord, Ack]] = []  # for the spool
        self._reported: deque[InFlight] = deque()  # delivered, not yet counted and acked
        self._round = threading.Lock()  # reports are served by the poll thread and flush()
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
        # Read when scraped, so the hot path pays nothing for it.
        IN_FLIGHT.labels(**labels).set_function(lambda: self._in_flight + len(self._pending))
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
        self._end_round()  # the reports flush() served in this thread
        self.source.stop()
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        self._replayer.join(timeout)
        self._writer.join(timeout)
        self.sink.close(timeout)
        self.spool.close()
        # The gauge's function holds this connector; a stopped one has nothing in flight.
        IN_FLIGHT.labels(connector=self.name).set_function(lambda: 0)
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

    def _on_messages(self, messages: list[Received], gen: int) -> None:
        """A batch from the MQTT thread: convert each reading, then hand them to Kafka in order."""
        received = time.monotonic()
        self.received += len(messages)
        self._received.inc(len(messages))
        process, dead_letter_topic = self.pipeline.process, self._dead_letter_topic
        records: list[InFlight] = []
        dropped = dead_lettered = 0
        for topic, payload, qos, mid in messages:
            try:
                record = process(topic, payload, qos)
            except Exception as exc:  # noqa: BLE001 - errors.tolerance=none: fail, never ack
                self._forward(records)
                self._fail(str(exc))
                return
            if record is None:
                dropped += 1
                self.source.ack(mid, qos, gen)
                continue
            if record.topic == dead_letter_topic:
                dead_lettered += 1
            records.append((record, (mid, qos, gen), 0.0 if records else received))
        if dropped:
            self._dropped.inc(dropped)
        if dead_lettered:
            self._dead_lettered.inc(dead_lettered)
        self._forward(records)

    def _forward(self, records: list[InFlight]) -> None:
        """Produce straight to Kafka within the in-flight bound, or queue for the spool."""
        done, total = 0, len(records)
        while done < total:
            with self._cv:
                # Backpressure on Kafka: wait until half the in-flight readings are reported.
                # The wait may end in spooling mode, which the check below then honours.
                while (
                    self._in_flight >= self._max_in_flight
                    and not self._spooling
                    and not self._stop.is_set()
                ):
                    self._throttled = True
                    self._cv.wait_for(lambda: not self._throttled or self._stop.is_set())
                if self._spooling:
                    self._queue_for_spool(records[done:])
                    return
                admitted = min(total - done, max(self._max_in_flight - self._in_flight, 1))
                self._in_flight += admitted
            produce, delivered = self.sink.produce, self._delivered
            for entry in records[done : done + admitted]:
                produce(entry[0], partial(delivered, entry))
            done += admitted

    def _queue_for_spool(self, records: list[InFlight]) -> None:
        """Under the lock: behind everything still in flight, which may yet fail into the spool;
        and never more than MAX_PENDING waiting for the disk (backpressure)."""
        for record, ack, _ in records:
            self._cv.wait_for(
                lambda: (
                    (self._in_flight == 0 and len(self._pending) < MAX_PENDING)
                    or self._stop.is_set()
                )
            )
            self._pending.append((record, ack))
            self._cv.notify_all()

    def _delivered(self, entry: InFlight, err: KafkaError | None, _msg: Any) -> None:
        """Kafka's report on one reading (poll thread): queue it for `_end_round`, or spool it."""
        if err is None:
            self._reported.append(entry)
            return
        with self._cv:
            self._in_flight -= 1
            if not self._spooling:
                log.warning("Kafka did not take a reading (%s): spooling", err)
            self._spooling = True
            self._pending.append((entry[0], entry[1]))
            self._release_throttle()
            self._cv.notify_all()

    def _end_round(self) -> None:
        """After a round of reports: free the slots, count, and send the PUBACKs in one write."""
        with self._round:
            reported = self._reported
            entries = [reported.popleft() for _ in range(len(reported))]
            if entries:
                with self._cv:
                    self._in_flight -= len(entries)
                    # Waiters only care while spooling; waking them per round costs little.
                    if not self._release_throttle() and self._spooling:
                        self._cv.notify_all()
                self._delivered_count.inc(len(entries))
                now = time.monotonic()
                observe = self._latency.observe
                for _, _, received in entries:
                    if received:
                        observe(now - received)
                self.source.ack_all([ack for _, ack, _ in entries])
            self.source.flush_acks()

    def _release_throttle(self) -> bool:
        """Under the lock: wake a throttled MQTT thread once half the readings are reported."""
        if self._throttled and self._in_flight <= self._max_in_flight // 2:
            self._throttled = False
            self._cv.notify_all()
            return True
        return False

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
            self.source.ack_all([ack for _, ack in batch])
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
