"""The Kafka side of a connector: an idempotent acks=all producer and its delivery reports.

Every error librdkafka reports is classified here, once (`classify`):
- fatal (the producer cannot go on, e.g. an idempotence error): the connector fails and its
  process exits non-zero, so systemd starts a new producer;
- permanent for one record (too large, not authorised, an invalid topic name): that record can
  never be delivered as it is, so it goes to the dead-letter topic instead, cut to a size
  Kafka takes;
- transient (Kafka unreachable, timed out, a topic or partition not known yet): the record
  goes to the spool and is replayed.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any, Literal

from confluent_kafka import KafkaError, KafkaException, Producer

from bridge import BridgeError
from bridge.config import ConnectorConfig
from bridge.record import KafkaRecord
from bridge.redact import mask

__all__ = [
    "DEAD_LETTER_VALUE_BYTES",
    "Delivery",
    "KafkaSink",
    "RecordRefusedError",
    "SinkError",
    "classify",
    "oversized_dead_letter",
]

log = logging.getLogger(__name__)

# Called from the producer's poll thread with None on success, else the error.
Delivery = Callable[[KafkaError | None, Any], None]
Severity = Literal["fatal", "permanent", "transient"]
# Kafka's state as the producer sees it: "down" when no broker answers, "fatal" when the
# producer cannot go on (the text says why).
OnKafkaEvent = Callable[[Literal["down", "fatal"], str], None]

# A dead letter keeps at most this much of a payload Kafka refused: enough to see what sent it,
# far below any broker's message.max.bytes (1 MB by default).
DEAD_LETTER_VALUE_BYTES = 64 * 1024

_PERMANENT = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.POLICY_VIOLATION,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError._INVALID_ARG,
    }
)
# Not among them: UNKNOWN_TOPIC_OR_PART and _UNKNOWN_TOPIC, which a topic being created (auto-
# create on first use) or a partition without a leader yet (Kafka just restarted) report for
# a few seconds; as permanent, thousands of replayed readings went to the dead-letter topic
# instead of telemetry (tests/faults/test_kafka_outages.py). Kafka's own clients retry them.


class SinkError(BridgeError):
    """The producer failed for good (a fatal librdkafka error)."""


class RecordRefusedError(SinkError):
    """librdkafka refused one record at once, for good (e.g. larger than message.max.bytes):
    the caller puts its dead letter (`KafkaSink.dead_letter`) in its place."""

    def __init__(self, record: KafkaRecord, err: KafkaError) -> None:
        super().__init__(f"Kafka refused a record to {record.topic}: {err.str()}")
        self.err = err


def classify(err: KafkaError) -> Severity:
    """What an error means for the record (or the producer) it was reported for."""
    if err.fatal():
        return "fatal"
    if err.code() in _PERMANENT:
        return "permanent"
    return "transient"


def oversized_dead_letter(record: KafkaRecord, topic: str, reason: str) -> KafkaRecord:
    """A dead letter Kafka takes for a record it refused for good: the payload cut to
    DEAD_LETTER_VALUE_BYTES, its full size and SHA-256 in headers, with the reason.

    A record that was a dead letter already (the pipeline's, e.g. a huge undecodable
    payload) keeps its context headers, which name the MQTT topic, and only gets the cut's."""
    value = record.value
    headers = [
        (name, raw) for name, raw in record.headers if len(raw) <= 1024 and len(name) <= 256
    ][:16]
    if record.topic != topic:
        headers += [
            ("__connect.errors.topic", record.topic.encode()[:256]),
            ("__connect.errors.stage", b"KAFKA_PRODUCE"),
            ("__connect.errors.exception.class.name", RecordRefusedError.__name__.encode()),
            ("__connect.errors.exception.message", reason.encode()[:1024]),
        ]
    headers += [
        ("trackside.original.size", str(len(value)).encode()),
        ("trackside.original.sha256", hashlib.sha256(value).hexdigest().encode()),
    ]
    key = record.key[:256] if record.key is not None else None
    return KafkaRecord(topic, key, value[:DEAD_LETTER_VALUE_BYTES], headers)


class KafkaSink:
    """Produces records; a thread polls for delivery reports and calls each record's callback.

    `after_poll` runs in the poll thread after every round of reports (e.g. to send the
    PUBACKs they queued in one write); `on_kafka` hears of Kafka going away and of fatal
    errors. A record Kafka refuses for good is replaced by `dead_letter(record, reason)`,
    for `dead_letter_topic` (see `oversized_dead_letter`); the caller counts a dead letter
    when Kafka reports it taken, as it counts every other record.
    """

    def __init__(
        self,
        config: ConnectorConfig,
        after_poll: Callable[[], None] | None = None,
        on_kafka: OnKafkaEvent | None = None,
    ) -> None:
        settings: dict[str, Any] = {
            "bootstrap.servers": config.kafka.bootstrap_servers,
            "client.id": f"trackside-{config.name}",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 1,
            # Kafka's default hash of the key (Java's, murmur2), not librdkafka's CRC32: the
            # alert service keeps a train's state in the partition Kafka's hash gives its id.
            "partitioner": "murmur2_random",
            "batch.num.messages": 10000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 200_000,
            # How long Kafka may take before a reading goes to the spool instead.
            "message.timeout.ms": config.spool.delivery_timeout_ms,
            "socket.nagle.disable": True,
            # Errors reach error_cb, one log line per change; librdkafka's own lines would
            # repeat every connection attempt (hundreds a minute while Kafka is away).
            "log_level": 2,
            "error_cb": self._on_error,
        }
        settings.update(config.kafka.settings)
        try:
            self.producer = Producer(settings)
        except KafkaException as exc:
            # librdkafka quotes a refused value: a password pasted into the wrong key shows.
            refused = mask(str(exc), settings)
            raise SinkError(f"kafka.settings: librdkafka refused them: {refused}") from exc
        self.dead_letter_topic = config.errors.deadletterqueue_topic_name
        self._after_poll = after_poll
        self._on_kafka = on_kafka
        self._running = False
        self._failure: str | None = None
        self._poller = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)

    def start(self) -> None:
        """Start serving delivery reports."""
        self._running = True
        self._poller.start()

    def worker_failure(self) -> str | None:
        """Why the poll thread ended while it should run, else None."""
        if self._failure is None and self._running and not self._poller.is_alive():
            return "thread kafka-poll ended"
        return self._failure

    def _poll(self) -> None:
        try:
            while self._running:
                if self.producer.poll(0.05) and self._after_poll is not None:
                    self._after_poll()
        except Exception as exc:
            self._failure = f"the Kafka poll thread failed: {exc!r}"
            log.exception("the Kafka poll thread failed")

    def _on_error(self, err: KafkaError) -> None:
        if self._on_kafka is None:
            return
        if err.fatal():
            self._on_kafka("fatal", f"Kafka producer: {err.str()}")
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._on_kafka("down", err.str())

    def produce(self, record: KafkaRecord, on_delivery: Delivery) -> None:
        """Queue one record; waits (never drops) while librdkafka's queue is full.

        Raises RecordRefusedError when librdkafka refuses the record at once for good
        (larger than message.max.bytes): put `dead_letter(record, ...)` in its place. A
        transient refusal (e.g. a topic Kafka does not know yet, just after it started) is
        reported to `on_delivery` as a failed delivery would be; SinkError for any other.
        """
        try:
            self._produce(record, on_delivery)
        except KafkaException as exc:
            err = exc.args[0]
            if not isinstance(err, KafkaError) or classify(err) == "fatal":
                raise SinkError(f"Kafka refused a record to {record.topic}: {exc}") from exc
            if classify(err) == "permanent":
                raise RecordRefusedError(record, err) from exc
            on_delivery(err, None)

    def dead_letter(self, record: KafkaRecord, reason: str) -> KafkaRecord:
        """The dead letter that stands in for `record`, which Kafka refused for good.

        SinkError when there is none to be had: no dead-letter topic, or Kafka refused the
        dead letter itself, already cut to size (the topic is missing or not writable)."""
        if self.dead_letter_topic is None or (
            record.topic == self.dead_letter_topic and len(record.value) <= DEAD_LETTER_VALUE_BYTES
        ):
            raise SinkError(
                f"Kafka refused a record to {record.topic} for good ({reason}) and there is "
                "no dead-letter topic to put it in; set errors.deadletterqueue_topic_name "
                "to an existing topic the connector may write"
            )
        log.warning(
            "Kafka refused a %d-byte record to %s (%s): it goes to %s, cut to %d bytes",
            len(record.value), record.topic, reason, self.dead_letter_topic,
            DEAD_LETTER_VALUE_BYTES,
        )  # fmt: skip
        return oversized_dead_letter(record, self.dead_letter_topic, reason)

    def _produce(self, record: KafkaRecord, on_delivery: Delivery) -> None:
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

    def answers(self, timeout: float = 1.0) -> bool:
        """Whether a Kafka broker answers a metadata request within `timeout` seconds."""
        try:
            self.producer.list_topics(timeout=timeout)
        except KafkaException:
            return False
        return True

    def purge_queued(self) -> None:
        """Fail at once what waits in the local queue, not yet sent (Kafka went away):
        their delivery reports come with _PURGE_QUEUE, a transient error."""
        self.producer.purge(in_queue=True, in_flight=False, blocking=False)

    def flush(self, timeout: float) -> int:
        """Wait for outstanding deliveries; returns how many are still outstanding."""
        remaining: int = self.producer.flush(timeout)
        return remaining

    def close(self, timeout: float = 10.0) -> int:
        """Flush, stop the poll thread; returns the count Kafka did not acknowledge in time."""
        remaining = self.flush(timeout)
        was_running, self._running = self._running, False
        if was_running:
            self._poller.join(5)
        if remaining:
            log.warning("%d records were not acknowledged by Kafka before shutdown", remaining)
        else:  # nothing left to wait for: disconnect now, not when the object is collected
            self.producer.close()
        return remaining
