"""The alert service: a Kafka consume-transform-produce loop with exactly-once output.

Each batch of input records (telemetry, device status, operator actions) becomes one Kafka
transaction holding the alert events, maintenance flags, commands, the changed rule states and
the consumer offsets. A crash aborts the open transaction; the restarted instance fences its
old self (same `transactional.id`), restores the committed state from the compacted topics and
replays from the committed offsets, so each alert is written exactly once. Readers of the
output topics use `isolation.level=read_committed`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from gateway.alerts import AlertError
from gateway.alerts.config import ServiceConfig
from gateway.alerts.engine import Engine, Reading
from gateway.alerts.rules import RuleSet
from gateway.alerts.state import StateStore

__all__ = ["AlertService", "Counters"]

log = logging.getLogger(__name__)

_TIMEOUT_S = 30.0


@dataclass
class Counters:
    """What the service has done since it started."""

    readings: int = 0
    duplicates: int = 0
    rejected: int = 0
    alerts: int = 0
    transactions: int = 0


class AlertService:
    """Runs the rules of `rules` over the topics of `config` until `stop` is set."""

    def __init__(self, config: ServiceConfig, rules: RuleSet) -> None:
        self.config = config
        self.rules = rules
        self.counters = Counters()
        self.ready = threading.Event()
        self._common: dict[str, Any] = {
            "bootstrap.servers": config.kafka.bootstrap_servers,
            "log_level": 3,
            **config.kafka.settings,
        }

    def run(self, stop: threading.Event) -> None:
        """Create missing topics, restore state, then evaluate until `stop` is set."""
        topics = self.config.topics
        self._ensure_topics()
        producer = Producer(
            {
                # A transaction begun while Kafka still completes the last one is refused
                # (CONCURRENT_TRANSACTIONS) and retried after this back-off: librdkafka's
                # 100 ms default put 100 ms tails on alert latency (docs/alerts.md).
                "retry.backoff.ms": 10,
                **self._common,
                "transactional.id": self.config.kafka.transactional_id,
                "enable.idempotence": True,
                "linger.ms": 5,
            }
        )
        try:
            # Fences a zombie with the same id and aborts its open transaction.
            producer.init_transactions(_TIMEOUT_S)
        except KafkaException as exc:
            raise AlertError(
                f"cannot start Kafka transactions on {self.config.kafka.bootstrap_servers}: "
                f"{exc.args[0].str()}; check that the cluster is reachable and allows transactions"
            ) from exc
        engine = Engine(self.rules, self._restore())
        consumer = Consumer(
            {
                **self._common,
                "group.id": self.config.kafka.group_id,
                # Static membership: a restarted instance takes its partitions back at once
                # instead of waiting for the session of its dead self to time out.
                "group.instance.id": self.config.kafka.transactional_id,
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        consumer.subscribe([topics.telemetry, topics.device_status, topics.operator_actions])
        log.info("alert service running with %d rules", len(self.rules.rules))
        self.ready.set()
        last_tick = 0.0
        try:
            while not stop.is_set():
                batch = self._poll(consumer)
                now = time.time()
                if now - last_tick >= self.config.stale_check_s and len(batch) < (
                    self.config.max_batch
                ):
                    # Only when caught up: a backlog would look like silent devices.
                    engine.tick(int(now * 1000))
                    last_tick = now
                self._transact(producer, consumer, engine, batch)
        finally:
            consumer.close()
            if not producer.flush(_TIMEOUT_S):
                producer.close()  # disconnect now, not when the object is collected

    # -- start-up -------------------------------------------------------------------------

    def _ensure_topics(self) -> None:
        topics = self.config.topics
        kafka = self.config.kafka
        compacted = {topics.alert_state, topics.maintenance}
        admin = AdminClient(self._common)
        existing = set(admin.list_topics(timeout=_TIMEOUT_S).topics)
        wanted = [
            NewTopic(
                name,
                num_partitions=kafka.partitions,
                replication_factor=kafka.replication_factor,
                config={"cleanup.policy": "compact"} if name in compacted else {},
            )
            for name in dict.fromkeys(topics.model_dump().values())
            if name not in existing
        ]
        if not wanted:
            return
        for name, future in admin.create_topics(wanted, request_timeout=_TIMEOUT_S).items():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise AlertError(
                        f"cannot create topic {name!r}: {exc.args[0].str()}; create it by hand "
                        "or give the service the right to"
                    ) from exc

    def _restore(self) -> StateStore:
        """Read the committed records of the state and maintenance topics to their end."""
        topics = self.config.topics
        store = StateStore()
        consumer = Consumer(
            {
                **self._common,
                "group.id": f"{self.config.kafka.group_id}-restore",
                "isolation.level": "read_committed",  # never restore from an aborted transaction
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        try:
            partitions = [
                TopicPartition(name, p, OFFSET_BEGINNING)
                for name in (topics.alert_state, topics.maintenance)
                for p in consumer.list_topics(name, timeout=_TIMEOUT_S).topics[name].partitions
            ]
            consumer.assign(partitions)
            pending = {(tp.topic, tp.partition) for tp in partitions}
            deadline = time.monotonic() + 120
            while pending:
                if time.monotonic() > deadline:
                    raise AlertError(
                        f"state restore did not reach the end of {sorted(pending)} in 120 s; "
                        "check the Kafka cluster"
                    )
                msg = consumer.poll(1.0)
                if msg is None:
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard((msg.topic(), msg.partition()))
                    elif error.fatal():
                        raise AlertError(f"state restore failed: {error.str()}")
                    continue
                value = msg.value()
                if value is None:
                    continue
                if msg.topic() == topics.alert_state:
                    store.restore_state((msg.key() or b"").decode(), value)
                else:
                    store.restore_maintenance(value)
        finally:
            consumer.close()
        log.info(
            "restored %d rule states, %d devices, %d maintenance flags",
            len(store.rules),
            len(store.devices),
            len(store.maintenance),
        )
        return store

    # -- the loop -------------------------------------------------------------------------

    def _poll(self, consumer: Consumer) -> list[Message]:
        """Wait for one record, then take whatever else is already fetched."""
        first = consumer.poll(0.2)
        if first is None:
            return []
        more = consumer.consume(self.config.max_batch - 1, 0) if self.config.max_batch > 1 else []
        return [first, *more]

    def _apply(self, engine: Engine, msg: Message) -> None:
        topics = self.config.topics
        topic = msg.topic()
        arrival_ms = msg.timestamp()[1]
        try:
            if topic == topics.telemetry:
                reading = Reading.from_json(msg.value() or b"")
                if engine.reading(reading, arrival_ms):
                    self.counters.readings += 1
                else:
                    self.counters.duplicates += 1
            elif topic == topics.device_status:
                train_id, _, device_id = (msg.key() or b"").decode().rpartition("/")
                status = json.loads(msg.value() or b"")
                engine.status(train_id, int(device_id), dict(status), arrival_ms)
            else:
                engine.action(dict(json.loads(msg.value() or b"")))
        except (ValueError, TypeError) as exc:  # JSON and Unicode errors are ValueErrors
            self.counters.rejected += 1
            log.warning(
                "skipped a malformed record at %s[%d]@%d: %s",
                topic,
                msg.partition(),
                msg.offset(),
                exc,
            )

    def _transact(
        self, producer: Producer, consumer: Consumer, engine: Engine, batch: list[Message]
    ) -> None:
        offsets: dict[tuple[str, int], int] = {}
        for msg in batch:
            error = msg.error()
            if error is not None:
                if error.fatal():
                    raise AlertError(f"the consumer failed: {error.str()}")
                log.warning("consumer: %s", error.str())
                continue
            self._apply(engine, msg)
            offsets[(str(msg.topic()), int(msg.partition() or 0))] = int(msg.offset() or 0) + 1
        effects = engine.drain()
        states = engine.store.take_dirty()
        if not offsets and not effects and not states:
            return
        topics = self.config.topics
        producer.begin_transaction()
        for alert in effects.alerts:
            self._produce(producer, topics.alerts, alert["key"], alert)
        for flag in effects.maintenance:
            self._produce(producer, topics.maintenance, flag["train_id"], flag)
        for command in effects.commands:
            self._produce(producer, topics.commands, command["train_id"], command)
        for key, state in states:
            self._produce(producer, topics.alert_state, key, state)
        if offsets:
            producer.send_offsets_to_transaction(
                [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                consumer.consumer_group_metadata(),
                _TIMEOUT_S,
            )
        self._commit(producer)
        self.counters.alerts += len(effects.alerts)
        self.counters.transactions += 1

    @staticmethod
    def _produce(producer: Producer, topic: str, key: str, value: dict[str, Any]) -> None:
        payload = json.dumps(value, separators=(",", ":")).encode()
        while True:
            try:
                producer.produce(topic, payload, key.encode())
                return
            except BufferError:
                producer.poll(0.1)  # the local queue is full: let librdkafka send, then retry

    @staticmethod
    def _commit(producer: Producer) -> None:
        while True:
            try:
                producer.commit_transaction(_TIMEOUT_S)
                return
            except KafkaException as exc:
                error = exc.args[0]
                if error.retriable():
                    continue
                if error.txn_requires_abort():
                    producer.abort_transaction(_TIMEOUT_S)
                raise AlertError(
                    f"a Kafka transaction failed: {error.str()}; restart the service, it "
                    "restores its state and replays from the last committed offsets"
                ) from exc
