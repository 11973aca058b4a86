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

Faults are handled or fatal, never silent: every worker thread (MQTT reader and pinger, Kafka
poll, spool writer, replay, command relay) that ends by surprise fails the connector, which
`status()` reports and the process turns into a non-zero exit. A record Kafka refuses for good
becomes a dead letter (bridge.kafka_sink); Kafka going away switches to the spool at once;
a spool that cannot be written holds the readings unacknowledged and says so in `status()`.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from confluent_kafka import KafkaError

from bridge.commands import CommandRelay
from bridge.config import ConnectorConfig
from bridge.kafka_sink import KafkaSink, RecordRefusedError, SinkError, classify
from bridge.metrics import (
    DEAD_LETTER_REASONS,
    DEAD_LETTERED,
    DELIVERED,
    DROPPED,
    IN_FLIGHT,
    LATENCY,
    RECEIVED,
    REPLAYED,
    SPOOL_BYTES,
    SPOOL_ERRORS,
    SPOOL_QUARANTINED,
    SPOOLED,
)
from bridge.mqtt_source import MqttSourceClient
from bridge.pipeline import Pipeline
from bridge.record import KafkaRecord, dead_letter_reason
from bridge.source import Ack, Received, SourceFactory
from bridge.spool import Spool, SpoolError
from bridge.topics import wait_and_create_connector_topics

__all__ = ["Connector", "ConnectorStatus", "tune_gc_for_streaming"]

log = logging.getLogger(__name__)

REPLAY_BATCH = 5000
MAX_PENDING = 10000
# How long start() waits for the topics to be created: a topic and its dead-letter topic take
# well under a second on a cluster of three; longer means Kafka is away (created later).
TOPICS_WAIT_S = 2.0
# Every reading allocates a few short-lived containers, and up to receive_maximum of them are
# alive at once: with the default threshold of 700 the collector runs dozens of times a second
# and walks the whole young heap each time. Measured at 20,000 readings/s: p99 19-20 -> 15-16 ms.
GC_GEN0_THRESHOLD = 20000

# A reading produced straight to Kafka: the record (spooled if Kafka refuses it), its PUBACK, and
# its MQTT receive time for the latency histogram, or 0.0 when not sampled (one per batch).
InFlight = tuple[KafkaRecord, Ack, float]
_NO_REPORT = object()  # no delivery report arrived in time


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
    reason: str | None = None  # why it failed
    kafka: Literal["reachable", "unreachable"] = "reachable"
    problem: str | None = None  # running, but a person should look (e.g. the spool's disk)
    mqtt: Literal["connected", "disconnected"] = "connected"

    @property
    def healthy(self) -> bool:
        """Running (or paused on purpose) with nothing a person must fix."""
        return self.state in ("running", "paused") and self.problem is None


class Connector:
    """One configured connector; `start()`, `stop()`, `pause()`, `resume()`, `status()`.

    Readings come from an MQTT subscription unless `source` makes another source (the
    embedded broker's in-process intake, gateway.intake).
    """

    def __init__(self, config: ConnectorConfig, source: SourceFactory | None = None) -> None:
        self.config = config
        self.name = config.name
        self.pipeline = Pipeline(config)
        labels = {"connector": self.name}
        self._spool_errors = SPOOL_ERRORS.labels(**labels)
        self.spool = Spool(
            config.spool.path,
            config.spool.max_bytes,
            config.spool.segment_bytes,
            on_quarantine=SPOOL_QUARANTINED.labels(**labels).inc,
        )
        self.source = (source or partial(MqttSourceClient, config.mqtt))(self._on_messages)
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
        self._kafka_reachable = True
        self._spool_problems: dict[str, str] = {}  # "read" or "write": what went wrong
        self._stop = threading.Event()
        self._replayer = self._worker(self._replay, "spool-replay")
        self._writer = self._worker(self._write_spool, "spool-write")
        self._topics = self._worker(
            partial(wait_and_create_connector_topics, config, self._stop), "kafka-topics"
        )
        # Metric children bound once: a label lookup per reading costs more than the update.
        self._received = RECEIVED.labels(**labels)
        self._delivered_count = DELIVERED.labels(**labels)
        self._dropped = DROPPED.labels(**labels)
        self._labels = labels
        for reason in DEAD_LETTER_REASONS:
            DEAD_LETTERED.labels(**labels, reason=reason)
        self._spooled = SPOOLED.labels(**labels)
        self._replayed = REPLAYED.labels(**labels)
        self._spool_bytes = SPOOL_BYTES.labels(**labels)
        self._latency = LATENCY.labels(**labels)
        # Read when scraped, so the hot path pays nothing for it.
        IN_FLIGHT.labels(**labels).set_function(lambda: self._in_flight + len(self._pending))
        self._dead_letter_topic = config.errors.deadletterqueue_topic_name
        self.received = 0
        # Last: its callbacks use everything above.
        self.sink = KafkaSink(config, after_poll=self._end_round, on_kafka=self._on_kafka)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to both sides and start moving readings."""
        # The topics first, with the replication the config asks for: the first reading would
        # have Kafka create them with its defaults. Kafka away: created once it answers.
        self._topics.start()
        self._topics.join(TOPICS_WAIT_S)
        self.sink.start()
        self._replayer.start()
        self._writer.start()
        self.source.start()
        if self.commands:
            self.commands.start()
        self._state = "running"

    def stop(self, timeout: float = 10.0) -> None:
        """Take no more readings, make every reading taken safe (Kafka or the spool) and send
        its PUBACK, then disconnect. What is not safe within `timeout` stays unacknowledged:
        the device or the broker sends it again."""
        self.source.stop_intake()
        if self.commands:
            self.commands.stop()
        remaining = self.sink.flush(timeout)
        self._end_round()  # the reports flush() served in this thread
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        self._writer.join(timeout)
        self._replayer.join(timeout)
        self.source.stop()
        self.sink.close(1.0 if remaining else timeout)
        self.spool.close()
        log.info("connector %s stopped (%d readings left unacknowledged)", self.name, remaining)
        # The gauge's function holds this connector; a stopped one has nothing in flight.
        IN_FLIGHT.labels(connector=self.name).set_function(lambda: 0)
        if self._state != "failed":
            self._state = "stopped"

    def pause(self) -> None:
        """Stop taking readings: an MQTT broker keeps them in the persistent session, the
        embedded broker holds them unacknowledged."""
        if self._state == "running":
            self.source.stop()
            self._state = "paused"

    def resume(self) -> None:
        """Take readings again."""
        if self._state == "paused":
            self.source.start()
            self._state = "running"

    def status(self) -> ConnectorStatus:
        """State, mode and spool use, with the reason when failed; a worker thread found dead
        here fails the connector."""
        if self._state == "running":
            failure = self._worker_failure()
            if failure is not None:
                self._fail(failure)
        return ConnectorStatus(
            self.name,
            self._state,
            "spooling" if self._spooling else "direct",
            self.spool.used_bytes,
            self._reason,
            "reachable" if self._kafka_reachable else "unreachable",
            "; ".join(self._spool_problems.values()) or None,
            "connected" if self.source.broker_connected() else "disconnected",
        )

    def _worker_failure(self) -> str | None:
        for thread in (self._replayer, self._writer):
            if not thread.is_alive() and not self._stop.is_set():
                return f"thread {thread.name} ended"
        commands_failure = self.commands.failure if self.commands else None
        return commands_failure or self.source.worker_failure() or self.sink.worker_failure()

    def _worker(self, target: Callable[[], None], name: str) -> threading.Thread:
        """A daemon thread whose unexpected exception fails the connector."""

        def run() -> None:
            try:
                target()
            except Exception as exc:
                log.exception("thread %s of connector %s failed", name, self.name)
                self._fail(f"thread {name} failed: {exc!r}")

        return threading.Thread(target=run, name=name, daemon=True)

    # -- the path of one reading -------------------------------------------------------------

    def _on_messages(self, messages: list[Received], gen: int) -> None:
        """A batch from the MQTT thread: convert each reading, then hand them to Kafka in order."""
        received = time.monotonic()
        self.received += len(messages)
        self._received.inc(len(messages))
        process = self.pipeline.process
        records: list[InFlight] = []
        dropped = 0
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
            records.append((record, (mid, qos, gen), 0.0 if records else received))
        if dropped:
            self._dropped.inc(dropped)
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
            try:
                for entry in records[done : done + admitted]:
                    try:
                        produce(entry[0], partial(delivered, entry))
                    except RecordRefusedError as exc:  # too large: its dead letter instead
                        record = self.sink.dead_letter(entry[0], exc.err.str())
                        produce(record, partial(delivered, (record, *entry[1:])))
            except SinkError as exc:
                self._fail(str(exc))
                return
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
        """Kafka's report on one reading (poll thread): queue it for `_end_round`, or spool it
        (its dead letter, if Kafka refused it for good), or fail on a fatal error."""
        if err is None:
            self._reported.append(entry)
            return
        record = entry[0]
        severity = classify(err)
        if severity == "fatal":
            self._fail(f"Kafka producer: {err.str()}")
        elif severity == "permanent":
            try:
                record = self.sink.dead_letter(record, err.str())
            except SinkError as exc:
                self._fail(str(exc))
        with self._cv:
            self._in_flight -= 1
            if not self._spooling:
                log.warning("Kafka did not take a reading (%s): spooling", err.str())
            self._spooling = True
            if self._state != "failed":
                self._pending.append((record, entry[1]))
            self._release_throttle()
            self._cv.notify_all()

    def _on_kafka(self, event: Literal["down", "fatal"], text: str) -> None:
        """librdkafka's error callback (poll thread): spool at once, or fail."""
        if event == "fatal":
            self._fail(text)
            return
        with self._cv:
            if self._kafka_reachable:
                log.warning("Kafka unreachable (%s): readings go to the spool", text)
            self._kafka_reachable = False
            self._spooling = True
            self._cv.notify_all()
        # What waits unsent fails now, in order, into the spool: devices wait no longer
        # than for what was already sent.
        self.sink.purge_queued()

    def _end_round(self) -> None:
        """After a round of reports: free the slots, count, and send the PUBACKs in one write.

        Counted here, once Kafka has them: dead letters in dead_lettered_total, every other
        record in delivered_total."""
        with self._round:
            reported = self._reported
            entries = [reported.popleft() for _ in range(len(reported))]
            if entries:
                with self._cv:
                    self._in_flight -= len(entries)
                    # Waiters only care while spooling; waking them per round costs little.
                    if not self._release_throttle() and self._spooling:
                        self._cv.notify_all()
                self._count_taken([entry[0] for entry in entries])
                now = time.monotonic()
                observe = self._latency.observe
                for _, _, received in entries:
                    if received:
                        observe(now - received)
                self.source.ack_all([ack for _, ack, _ in entries])
            self.source.flush_acks()

    def _count_taken(self, records: list[KafkaRecord]) -> None:
        """Count records Kafka acknowledged: dead letters apart from the connector's output."""
        topic = self._dead_letter_topic
        dead = [record for record in records if record.topic == topic] if topic else []
        for record in dead:  # rare: a label lookup each is cheap enough
            DEAD_LETTERED.labels(**self._labels, reason=dead_letter_reason(record)).inc()
        if len(dead) < len(records):
            self._delivered_count.inc(len(records) - len(dead))

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
            if not self._append_to_spool(records):
                return  # stopping: what was not written stays unacknowledged
            self._spooled.inc(len(records))
            self._spool_bytes.set(self.spool.used_bytes)
            self.source.ack_all([ack for _, ack in batch])
            self.source.flush_acks()
            with self._cv:
                self._writing = 0
                self._cv.notify_all()

    def _append_to_spool(self, records: list[KafkaRecord]) -> bool:
        """Write with one fsync, waiting while the spool is full or its disk refuses (the
        readings stay unacknowledged: backpressure); False if stopped first."""
        # An upper bound of the encoded size (names are stored once per segment).
        size = sum(
            len(r.value) + len(r.key or b"") + sum(len(v) + 2 for _, v in r.headers) + 20
            for r in records
        )
        while not self._stop.is_set():
            if not self.spool.has_room(size):
                problem = f"the spool is full ({self.spool.max_bytes} bytes): holding readings"
            else:
                try:
                    self.spool.append(records)
                except SpoolError as exc:
                    self._spool_errors.inc()
                    problem = f"cannot write the spool: {exc}"
                else:
                    self._spool_problem("write", None)
                    return True
            self._spool_problem("write", problem)
            self._stop.wait(1.0)
        return False

    def _spool_problem(self, kind: str, problem: str | None) -> None:
        """One log line per new problem, and one when it is over; `status()` shows it."""
        if problem == self._spool_problems.get(kind):
            return
        if problem is None:
            log.info("connector %s: the spool works again", self.name)
            del self._spool_problems[kind]
        else:
            log.error("connector %s: %s", self.name, problem)
            self._spool_problems[kind] = problem

    def _fail(self, reason: str) -> None:
        """Fatal: stop taking readings (what is not acknowledged is sent again later)."""
        if self._state == "failed":
            return
        log.error("connector %s failed: %s", self.name, reason)
        self._reason = reason
        self._state = "failed"
        threading.Thread(target=self.source.stop_intake, daemon=True).start()

    # -- replay --------------------------------------------------------------------------------

    def _replay(self) -> None:
        backoff = 0.5
        while not self._stop.is_set() and self._state != "failed":
            with self._cv:
                idle = not self._pending and not self._writing and not self._in_flight
                drained = self.spool.empty()
            if drained:
                if self._spooling and idle and self._kafka_answers():
                    with self._cv:
                        self._spooling = False
                    log.info("spool drained: readings go straight to Kafka again")
                with self._cv:
                    self._cv.wait(0.5 if self._kafka_reachable else backoff)
                backoff = 0.5 if self._kafka_reachable else min(backoff * 2, 5.0)
                continue
            if not self._kafka_answers():
                # No batch while Kafka is away: it would only time out, and should Kafka come
                # back just then, librdkafka may fail its oldest records yet deliver later ones
                # (its message-timeout gaps), whose retry would land behind them: out of order.
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            try:
                complete = self._replay_batch()
                self._spool_problem("read", None)
            except SpoolError as exc:
                self._spool_errors.inc()
                self._spool_problem("read", f"cannot read the spool: {exc}")
                complete = False
            if complete:
                backoff = 0.5
            else:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _replay_batch(self) -> bool:
        """Deliver the spool's next batch and commit what Kafka took, in order; True if all.
        A failure part-way commits the records before it, so they are not sent again."""
        records, position = self.spool.read(REPLAY_BATCH)
        taken, delivered = self._deliver_in_order(records) if records else (0, [])
        if taken == len(records):
            self.spool.commit(position)  # an empty batch: damage set aside, skip past it
        else:
            self.spool.rewind()
            if taken:
                self.spool.commit(self.spool.read(taken)[1])
        if taken:
            self._kafka_back()
            self._replayed.inc(taken)
            self._count_taken(delivered)
            self._spool_bytes.set(self.spool.used_bytes)
            with self._cv:
                self._cv.notify_all()
        return taken == len(records)

    def _kafka_answers(self) -> bool:
        """While Kafka was reported unreachable and nothing is spooled, ask it for metadata."""
        if not self._kafka_reachable:
            if not self.sink.answers():
                return False
            self._kafka_back()
        return True

    def _kafka_back(self) -> None:
        if not self._kafka_reachable:
            log.info("Kafka answers again: replaying the spool")
            self._kafka_reachable = True

    def _deliver_in_order(self, records: list[KafkaRecord]) -> tuple[int, list[KafkaRecord]]:
        """Produce a batch and wait for the reports: how many leading records Kafka took (a
        record it refused for good counts once its dead letter is taken), and what it took."""
        delivered: list[KafkaRecord] = []
        try:
            reports = self._produce_and_wait(records)
            for record, err in zip(records, reports, strict=True):
                if err is None:
                    delivered.append(record)
                    continue
                if err is _NO_REPORT:
                    break
                severity = classify(err)
                if severity == "fatal":
                    self._fail(f"Kafka producer: {err.str()}")
                if severity != "permanent":
                    break
                dead_letter = self.sink.dead_letter(record, err.str())
                if self._produce_and_wait([dead_letter]) != [None]:
                    break
                delivered.append(dead_letter)
        except SinkError as exc:
            self._fail(str(exc))
            return 0, []
        return len(delivered), delivered

    def _produce_and_wait(self, records: list[KafkaRecord]) -> list[Any]:
        """Each record's report: None (delivered), its KafkaError, or _NO_REPORT in time.

        Once a record failed (other than refused for good), the rest are not produced: Kafka
        would take them ahead of that record's retry (e.g. the first record refused at once
        because the topic was not created yet, the next ones taken a moment later)."""
        reports: list[Any] = [_NO_REPORT] * len(records)
        pending = [len(records)]
        lock, done, failed = threading.Lock(), threading.Event(), threading.Event()

        def report(index: int, err: KafkaError | None, _msg: Any) -> None:
            reports[index] = err
            if err is not None and classify(err) != "permanent":
                failed.set()
            with lock:  # the poll thread reports, and so does produce() in this one
                pending[0] -= 1
                if pending[0] == 0:
                    done.set()

        for index, record in enumerate(records):
            if failed.is_set():
                with lock:
                    pending[0] -= len(records) - index  # never produced: no report to wait for
                    if pending[0] == 0:
                        done.set()
                break
            try:
                self.sink.produce(record, partial(report, index))
            except RecordRefusedError as exc:  # refused at once: reported like the others
                report(index, exc.err, None)
        done.wait(self.config.spool.delivery_timeout_ms / 1000 + 5)
        return reports
