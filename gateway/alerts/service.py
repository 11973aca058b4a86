"""The alert service: a Kafka consume-transform-produce loop with exactly-once output.

Each batch of input records (telemetry, device status, operator actions) becomes one Kafka
transaction holding the alert events, maintenance flags, commands, the changed rule states and
the consumer offsets. A crash aborts the open transaction; the restarted instance fences its
old self (same `transactional.id`), restores the committed state from the compacted topics and
replays from the committed offsets, so each alert is written exactly once. Readers of the
output topics use `isolation.level=read_committed`.

Several instances share the work by partition (docs/alerts.md#partitions): the telemetry
partitions an instance is assigned (`cooperative-sticky`) are the partitions of state it owns.
On assignment it restores only those partitions of the state topics; on revocation it drops
them (no transaction is open while the consumer polls, so everything it did is committed).
Device statuses and operator actions are not keyed by train alone: a second group
(`{group_id}-router`) spreads them over the instances, and whichever instance reads one routes
it, in a transaction of its own, to its train's partition of the repartition topic, which the
owner of that partition reads. (One group for all three topics would not do: its assignor
balances the count of partitions, so one instance could get no telemetry at all.) Offsets go
into each transaction with their group's metadata (KIP-447), so an instance that lost
partitions cannot commit for them any more.

While Kafka is away the service waits (one log line, `trackside_alerts_kafka_up` 0) and goes on
where it left off when Kafka is back. Transactional calls that fail retriably are retried a
bounded number of times with backoff; a transaction Kafka says must be aborted is aborted and
replayed from the last committed offsets on the last committed state; a fatal error (or
retries used up) ends `run` with an `AlertError`, and whoever supervises the service starts it
again: a new producer, which fences the old one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
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

from gateway import GatewayError
from gateway.alerts import AlertError
from gateway.alerts.config import ServiceConfig
from gateway.alerts.engine import Engine, Reading
from gateway.alerts.kafka_link import (
    RESTART,
    UNREACHABLE,
    HungError,
    KafkaLink,
    StoppedError,
    bounded,
    describe,
    make_client,
)
from gateway.alerts.metrics import ABORTED, DUPLICATES, EVENTS, READINGS, REJECTED
from gateway.alerts.notify import Notifier
from gateway.alerts.partitioning import (
    PARTITIONER,
    partition_of,
    train_of_action,
    train_of_status,
)
from gateway.alerts.restore import Restorer
from gateway.alerts.rules import RuleSet
from gateway.supervise import Backoff
from gateway.topics import create_topics

__all__ = ["AlertService", "Counters"]

log = logging.getLogger(__name__)

_TIMEOUT_S = 30.0
# One transactional call (offsets, commit, abort) waits this long, then is retried: short
# enough that SIGTERM is not kept waiting long while Kafka is away.
_TXN_TIMEOUT_S = 10.0
_TXN_ATTEMPTS = 6  # about 70 s of Kafka being away mid-transaction, then a restart
_TXN_BACKOFF = Backoff(initial_s=0.5, max_s=8.0)
# While Kafka is away at start: ask again after these waits (each ask waits up to 5 s itself).
_CONNECT_BACKOFF = Backoff(initial_s=0.5, max_s=5.0)
_PROBE_EVERY_S = 1.0
# librdkafka 2.16 can block in send_offsets_to_transaction() past its timeout, for minutes,
# after Kafka restarted (librdkafka#5456, #5511: measured > 3 min here). A transactional call
# still running this long after its own timeout is given up, and the service restarts with a
# new producer, which fences the stuck one.
_HUNG_AFTER_S = _TXN_TIMEOUT_S + 10.0


@dataclass
class Counters:
    """What the service has done since it started."""

    readings: int = 0
    duplicates: int = 0
    rejected: int = 0
    alerts: int = 0
    transactions: int = 0
    aborted: int = 0  # transactions aborted and replayed
    state_skipped: int = 0  # malformed state or maintenance records skipped by restore
    routed: int = 0  # device statuses and operator actions routed to their train's partition
    misrouted: int = 0  # readings found outside their train's partition (wrong partitioner)
    restores: int = 0  # partitions of state restored on assignment


class _MustAbortError(Exception):
    """Kafka says the open transaction must be aborted (`txn_requires_abort`)."""

    def __init__(self, error: KafkaError) -> None:
        super().__init__(error.str())
        self.error = error


class AlertService:
    """Runs the rules of `rules` over the topics of `config` until `stop` is set."""

    def __init__(self, config: ServiceConfig, rules: RuleSet) -> None:
        self.config = config
        self.rules = rules
        self.counters = Counters()
        self.ready = threading.Event()
        self.link = KafkaLink(config.kafka.bootstrap_servers)
        # Posts committed alert changes to Alertmanager from its own thread (never blocks).
        self.notifier = Notifier(config.alertmanager, rules) if config.alertmanager else None
        self._common: dict[str, Any] = {
            "bootstrap.servers": config.kafka.bootstrap_servers,
            # librdkafka would log every failed connection attempt (hundreds of lines while
            # Kafka is away); its errors reach `link` through error_cb instead. A `log_level`
            # in kafka.settings brings the raw log back for debugging.
            "log_level": 0,
            **config.kafka.settings,
            "error_cb": self.link.on_error,
        }
        self.partitions = 0  # of telemetry and of every state topic, known once they exist
        # The telemetry partitions this instance is assigned: the partitions of state it owns.
        self.owned: set[int] = set()
        self._inbound: set[tuple[str, int]] = set()  # the router group's assignment
        # Telemetry partitions taken over -> their end offset then: no stale check before
        # they are read that far.
        self._catching_up: dict[int, int] = {}
        self._engine = Engine(rules)
        self._stop = threading.Event()
        self._routed: Consumer | None = None  # reads the owned partitions of the repartition topic
        self._warned_misrouted = False
        self._restorer = Restorer(
            config=config, settings=self._common, link=self.link, on_skipped=self._skipped
        )

    def _skipped(self) -> None:
        self.counters.state_skipped += 1

    def run(self, stop: threading.Event) -> None:
        """Create missing topics, then evaluate until `stop` is set, restoring the state of
        each partition when it is assigned.

        Waits while Kafka is unreachable; raises `AlertError` when the service cannot go on.
        """
        self._stop = stop
        try:
            self._run(stop)
        except StoppedError:
            # A transaction left open is aborted when the service starts again.
            log.info("alert service stopped while it waited for Kafka")
        except KafkaException as exc:  # the last line: no librdkafka error leaves the package
            raise AlertError(f"Kafka failed: {describe(exc)}; {RESTART}") from exc
        finally:
            if self.notifier is not None and stop.is_set():
                self.notifier.stop()

    def _run(self, stop: threading.Event) -> None:
        topics = self.config.topics
        self.link.fatal = None  # a fatal error of the previous run's clients is theirs only
        self.owned, self._inbound, self._catching_up = set(), set(), {}
        self._engine = Engine(self.rules)
        self._ensure_topics(stop)
        producer = make_client(
            Producer,
            {
                # A transaction begun while Kafka still completes the last one is refused
                # (CONCURRENT_TRANSACTIONS) and retried after this back-off: librdkafka's
                # 100 ms default put 100 ms tails on alert latency (docs/alerts.md).
                "retry.backoff.ms": 10,
                "partitioner": PARTITIONER,  # commands keyed by train id, like the bridge's
                **self._common,
                "transactional.id": self.config.kafka.transactional_id,
                "enable.idempotence": True,
                "linger.ms": 5,
            },
        )
        consumer: Consumer | None = None
        router: Consumer | None = None
        hung = False
        try:
            # Fences a zombie with the same id and aborts its open transaction.
            self._call(
                stop,
                f"start Kafka transactions on {self.config.kafka.bootstrap_servers} (check that "
                "the cluster allows transactions)",
                lambda: producer.init_transactions(_TXN_TIMEOUT_S),
                attempts=2 * _TXN_ATTEMPTS,
            )
            if self.notifier is not None:
                self.notifier.restored(self._engine.store)  # starts its thread
            read_committed: dict[str, Any] = {
                **self._common,
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
            # Never subscribes and never commits: its positions are committed for the group
            # below, in each transaction, and read back from there on assignment.
            self._routed = make_client(
                Consumer,
                {**read_committed, "group.id": f"{self.config.kafka.group_id}-routed"},
            )
            group = self.config.kafka.group_id
            consumer = self._group_consumer(read_committed, group)
            consumer.subscribe(
                [topics.telemetry],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_revoke,
            )
            router = self._group_consumer(read_committed, f"{group}-router")
            router.subscribe(
                [topics.device_status, topics.operator_actions],
                on_assign=lambda _c, parts: self._inbound.update(_positions(parts)),
                on_revoke=lambda _c, parts: self._inbound.difference_update(_positions(parts)),
                on_lost=lambda _c, parts: self._inbound.difference_update(_positions(parts)),
            )
            log.info(
                "alert service running with %d rules over %d partitions",
                len(self.rules.rules),
                self.partitions,
            )
            self.ready.set()
            self._loop(stop, producer, consumer, router)
        except HungError:
            hung = True
            raise
        finally:
            for member in (consumer, router):
                if member is not None:
                    member.close()  # revokes (and drops) what it owns
            if self._routed is not None:
                self._routed.close()
                self._routed = None
            # Nothing should be left: a commit or an abort delivered it. While Kafka is away
            # there is no point in waiting; a left-over transaction is aborted at the next start.
            # A producer stuck in a call is left alone: flush or close might block behind it.
            if not hung and not producer.flush(_TIMEOUT_S if self.link.up else 1.0):
                producer.close()  # disconnect now, not when the object is collected

    def _group_consumer(self, read_committed: dict[str, Any], group: str) -> Consumer:
        return make_client(
            Consumer,
            {
                **read_committed,
                "group.id": group,
                # Static membership: a restarted instance takes its partitions back at once
                # instead of waiting for the session of its dead self to time out.
                "group.instance.id": self.config.kafka.transactional_id,
                # A rebalance moves only the partitions that change owner; the others go on
                # being processed meanwhile.
                "partition.assignment.strategy": "cooperative-sticky",
            },
        )

    def _loop(
        self, stop: threading.Event, producer: Producer, consumer: Consumer, router: Consumer
    ) -> None:
        last_tick = last_probe = 0.0
        while not stop.is_set():
            if self.link.fatal is not None:
                raise AlertError(f"a Kafka client failed: {self.link.fatal.str()}; {RESTART}")
            batch = self._poll(consumer)
            inbound = router.consume(self.config.max_batch, 0)
            now = time.time()
            if not self.link.up and now - last_probe >= _PROBE_EVERY_S:
                self._probe(consumer)
                last_probe = now
            # Only when caught up, and never while Kafka is away: a backlog, or readings
            # waiting in the bridge for Kafka, would look like silent devices.
            if (
                self.link.up
                and now - last_tick >= self.config.stale_check_s
                and len(batch) < self.config.max_batch
                and not self._behind(consumer)
            ):
                self._engine.tick(int(now * 1000))
                last_tick = now
            try:
                self._transact(stop, producer, consumer, batch)
                self._route_all(stop, producer, router, inbound)
            except _MustAbortError as abort:
                self._abort_and_rewind(stop, producer, (consumer, router), abort.error)

    def _behind(self, consumer: Consumer) -> bool:
        """Whether a partition taken over is still being read up to where it ended when it
        was assigned: its devices' readings wait there, and they would look silent."""
        if not self._catching_up:
            return False
        topic = self.config.topics.telemetry
        parts = [TopicPartition(topic, p) for p in self._catching_up]
        for position in consumer.position(parts):
            if position.offset >= self._catching_up[position.partition]:
                del self._catching_up[position.partition]
        return bool(self._catching_up)

    # -- Kafka calls ----------------------------------------------------------------------

    def _call(
        self,
        stop: threading.Event,
        what: str,
        call: Callable[[], object],
        attempts: int = _TXN_ATTEMPTS,
    ) -> None:
        """One call of the transactional API, retried with backoff while its error is
        retriable, `attempts` times at most.

        Raises `_MustAbortError` when the transaction must be aborted, `AlertError` when the
        error is fatal or not retriable or the attempts are used up.
        """
        attempt = 0
        while True:
            try:
                bounded(call, _HUNG_AFTER_S, what)
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.fatal():
                    raise AlertError(f"cannot {what}: {error.str()} (fatal); {RESTART}") from exc
                if error.txn_requires_abort():
                    raise _MustAbortError(error) from exc
                if not error.retriable():
                    raise AlertError(f"cannot {what}: {error.str()}; {RESTART}") from exc
                if error.code() in UNREACHABLE:
                    self.link.unreachable(error.str())
                attempt += 1
                if attempt >= attempts:
                    raise AlertError(
                        f"cannot {what}: {error.str()}, {attempt} attempts; {RESTART}"
                    ) from exc
                delay = _TXN_BACKOFF.delay(attempt - 1)
                log.info("cannot %s (%s); trying again in %g s", what, error.str(), delay)
                if stop.wait(delay):
                    raise StoppedError from exc
            else:
                self.link.reachable()
                return

    def _probe(self, consumer: Consumer) -> None:
        """While Kafka is away: one metadata request, to notice when it is back while idle."""
        try:
            consumer.list_topics(self.config.topics.telemetry, timeout=1.0)
        except KafkaException:
            return  # still away; already logged
        self.link.reachable()

    # -- start-up -------------------------------------------------------------------------

    def _ensure_topics(self, stop: threading.Event) -> None:
        topics = self.config.topics
        kafka = self.config.kafka
        admin = make_client(AdminClient, self._common)
        attempt = 0
        while True:
            try:
                existing = set(admin.list_topics(timeout=5.0).topics)
                break
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() not in UNREACHABLE:
                    raise AlertError(
                        f"cannot list the topics of {kafka.bootstrap_servers}: {error.str()}; "
                        "check kafka.settings (security.protocol, sasl.*)"
                    ) from exc
                self.link.unreachable(error.str())
            if stop.wait(_CONNECT_BACKOFF.delay(attempt)):
                raise StoppedError
            attempt += 1
        self.link.reachable()
        try:
            create_topics(
                admin, topics, existing, kafka.partitions, kafka.replication_factor, _TIMEOUT_S
            )
        except GatewayError as exc:
            raise AlertError(str(exc)) from exc
        self.partitions = self._partition_count(admin)

    def _partition_count(self, admin: AdminClient) -> int:
        """The partition count telemetry and every state topic share; AlertError if not."""
        topics = self.config.topics
        names = (topics.telemetry, topics.alert_state, topics.maintenance, topics.alert_repartition)
        deadline = time.monotonic() + _TIMEOUT_S
        while True:  # a topic just created may take a moment to show in the metadata
            found = admin.list_topics(timeout=_TIMEOUT_S).topics
            missing = [name for name in names if name not in found]
            if not missing:
                break
            if time.monotonic() > deadline:
                raise AlertError(f"topics {missing} do not show in Kafka's metadata; {RESTART}")
            time.sleep(0.1)
        counts = {name: len(found[name].partitions) for name in names}
        if len(set(counts.values())) != 1:
            raise AlertError(
                f"the alert service needs as many partitions in each of these topics, which "
                f"have {counts}: a train's state lives in the partition number of its "
                "telemetry. Give them one count (docs/scaling.md, changing the partition count)"
            )
        return counts[topics.telemetry]

    # -- partitions come and go -------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Restore the state of the telemetry partitions assigned, then read them and their
        partitions of the repartition topic (librdkafka adds `partitions` after this)."""
        topics = self.config.topics
        new = sorted({tp.partition for tp in partitions if tp.topic == topics.telemetry})
        if not new:
            return
        routed = [TopicPartition(topics.alert_repartition, p) for p in new]
        started = time.monotonic()
        # With read_committed this waits until a transaction of the partitions' previous owner
        # has ended (KIP-447), so the state read next holds everything it committed.
        positions = self._committed(consumer, routed)
        store = self._restorer.restore(new, self._stop)
        self._engine.store.update(store)
        self.owned.update(new)
        if self.notifier is not None:
            self.notifier.restored(store)
        # The stale check waits until the backlog of these is read (`_behind`). Telemetry is
        # written without transactions, so each offset up to the end is a record to read.
        telemetry = [TopicPartition(topics.telemetry, p) for p in new]
        for start in self._committed(consumer, telemetry):
            try:
                _low, end = consumer.get_watermark_offsets(start, _TIMEOUT_S, cached=False)
            except KafkaException as exc:
                raise AlertError(f"cannot read where {start.topic} ends: {describe(exc)}") from exc
            if end > 0 and (start.offset == OFFSET_BEGINNING or start.offset < end):
                self._catching_up[start.partition] = end
        if self._routed is not None:
            self._routed.incremental_assign(positions)
        self.counters.restores += len(new)
        log.info(
            "took partitions %s: restored %d rule states, %d devices, %d flags in %.2f s",
            new,
            len(store.rules),
            len(store.devices),
            len(store.maintenance),
            time.monotonic() - started,
        )

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Drop the state of the telemetry partitions taken away (revoked or lost). No
        transaction is open while the consumer polls: what was done for them is committed."""
        topics = self.config.topics
        gone = {tp.partition for tp in partitions if tp.topic == topics.telemetry} & self.owned
        if not gone:
            return
        self.owned -= gone
        for p in gone:
            self._catching_up.pop(p, None)
        if self._routed is not None:
            self._routed.incremental_unassign(
                [TopicPartition(topics.alert_repartition, p) for p in sorted(gone)]
            )
        count = self.partitions

        def moved(train_id: str) -> bool:
            return partition_of(train_id, count) in gone

        self._engine.store.drop(moved)
        if self.notifier is not None:
            self.notifier.forget(moved)
        log.info("gave up partitions %s", sorted(gone))

    def _committed(
        self, consumer: Consumer, partitions: list[TopicPartition]
    ) -> list[TopicPartition]:
        """The group's committed positions of `partitions`; the start where there is none."""
        try:
            committed = consumer.committed(partitions, timeout=_TIMEOUT_S)
        except KafkaException as exc:
            raise AlertError(
                f"cannot read the committed offsets: {describe(exc)}; {RESTART}"
            ) from exc
        for position in committed:
            if position.offset < 0:  # nothing committed yet: auto.offset.reset=earliest
                position.offset = OFFSET_BEGINNING
        return list(committed)

    # -- the loop -------------------------------------------------------------------------

    def _poll(self, consumer: Consumer) -> list[Message]:
        """Wait for one record, then take whatever else is already fetched, from the group's
        topics and from the owned partitions of the repartition topic."""
        limit = self.config.max_batch
        first = consumer.poll(0.1)
        batch = [first] if first is not None else []
        if len(batch) < limit:
            batch += consumer.consume(limit - len(batch), 0)
        if self._routed is not None and self.owned and len(batch) < limit:
            batch += self._routed.consume(limit - len(batch), 0)
        return batch

    def _apply(self, msg: Message) -> None:
        topics = self.config.topics
        engine = self._engine
        topic = msg.topic()
        arrival_ms = msg.timestamp()[1]
        try:
            if topic == topics.telemetry:
                reading = Reading.from_json(msg.value() or b"")
                self._check_partition(reading.train_id, msg)
                if engine.reading(reading, arrival_ms):
                    self.counters.readings += 1
                else:
                    self.counters.duplicates += 1
                return
            headers = dict(msg.headers() or ())
            if headers.get(_SOURCE) == b"status":
                key = headers.get(_KEY) or b""
                text = key if isinstance(key, str) else key.decode()
                train_id, _, device_id = text.rpartition("/")
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

    def _check_partition(self, train_id: str, msg: Message) -> None:
        """Count a reading outside its train's partition: its producer hashes keys otherwise
        than Kafka's default, so the train's state would not move with its readings."""
        if msg.partition() == partition_of(train_id, self.partitions):
            return
        self.counters.misrouted += 1
        if not self._warned_misrouted:
            self._warned_misrouted = True
            log.warning(
                "a reading of train %s is in partition %d of %s, not %d: its producer must set "
                "`partitioner: %s` (docs/scaling.md); until then its state may be lost when "
                "partitions move",
                train_id,
                msg.partition(),
                msg.topic(),
                partition_of(train_id, self.partitions),
                PARTITIONER,
            )

    def _route(self, msg: Message) -> tuple[int, list[tuple[str, bytes]]]:
        """Where a device status or an operator action goes in the repartition topic: its
        train's partition, with the source and the original key as headers."""
        key = msg.key() or b""
        if msg.topic() == self.config.topics.device_status:
            source, train_id = b"status", train_of_status(key)
        else:
            source = b"action"
            try:
                train_id = train_of_action(json.loads(msg.value() or b""))
            except ValueError:  # its owner skips it, with a log line
                train_id = ""
        return partition_of(train_id, self.partitions), [(_SOURCE, source), (_KEY, key)]

    def _usable(
        self, batch: list[Message], mine: Callable[[str, int], bool]
    ) -> tuple[list[Message], dict[tuple[str, int], int]]:
        """The records of `batch` from partitions still `mine`, and the offsets to commit.
        A partition taken away while the batch was fetched is left to its new owner."""
        kept: list[Message] = []
        offsets: dict[tuple[str, int], int] = {}
        for msg in batch:
            error = msg.error()
            if error is not None:
                if error.fatal():
                    raise AlertError(f"the consumer failed: {error.str()}; {RESTART}")
                self.link.on_error(error)
                continue
            topic, partition = str(msg.topic()), int(msg.partition() or 0)
            if mine(topic, partition):
                kept.append(msg)
                offsets[(topic, partition)] = int(msg.offset() or 0) + 1
        if offsets:
            self.link.reachable()
        return kept, offsets

    def _transact(
        self,
        stop: threading.Event,
        producer: Producer,
        consumer: Consumer,
        batch: list[Message],
    ) -> None:
        """Evaluate a batch of telemetry and routed records; write what it changed, with the
        offsets of the main group, in one transaction."""
        kept, offsets = self._usable(batch, lambda _topic, partition: partition in self.owned)
        counters = self.counters
        before = (counters.readings, counters.duplicates, counters.rejected)
        for msg in kept:
            self._apply(msg)
        engine = self._engine
        effects = engine.drain()
        states = engine.store.take_dirty()
        if not offsets and not effects and not states:
            return
        topics, count = self.config.topics, self.partitions
        self._call(stop, "begin a Kafka transaction", producer.begin_transaction, attempts=1)
        for alert in effects.alerts:
            self._produce(producer, topics.alerts, _json(alert), alert["key"].encode())
        for flag in effects.maintenance:
            train = str(flag["train_id"])
            partition = partition_of(train, count)
            self._produce(producer, topics.maintenance, _json(flag), train.encode(), partition)
        for command in effects.commands:
            self._produce(producer, topics.commands, _json(command), command["train_id"].encode())
        for key, state in states:
            # The key is not the train id: the partition is given, the train's own.
            partition = partition_of(key.split("/", 1)[0], count)
            self._produce(producer, topics.alert_state, _json(state), key.encode(), partition)
        self._commit(stop, producer, consumer, offsets)
        counters.alerts += len(effects.alerts)
        EVENTS.inc(len(effects.alerts))
        READINGS.inc(counters.readings - before[0])
        DUPLICATES.inc(counters.duplicates - before[1])
        REJECTED.inc(counters.rejected - before[2])
        if self.notifier is not None:  # only what is committed; a queue put, nothing more
            self.notifier.publish(effects.alerts, effects.maintenance)

    def _route_all(
        self, stop: threading.Event, producer: Producer, router: Consumer, batch: list[Message]
    ) -> None:
        """Copy device statuses and operator actions to their train's partition of the
        repartition topic, with the router group's offsets, in one transaction."""
        kept, offsets = self._usable(batch, lambda topic, p: (topic, p) in self._inbound)
        if not offsets:
            return
        self._call(stop, "begin a Kafka transaction", producer.begin_transaction, attempts=1)
        for msg in kept:
            partition, headers = self._route(msg)
            self._produce(
                producer,
                self.config.topics.alert_repartition,
                msg.value() or b"",
                msg.key(),
                partition,
                headers,
                msg.timestamp()[1],  # the replay sees the time the original arrived
            )
        self._commit(stop, producer, router, offsets)
        self.counters.routed += len(kept)

    def _commit(
        self,
        stop: threading.Event,
        producer: Producer,
        consumer: Consumer,
        offsets: dict[tuple[str, int], int],
    ) -> None:
        """Add `offsets` with `consumer`'s group metadata (a member of an older generation is
        refused: KIP-447) and commit the open transaction."""
        if offsets:
            positions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            group = consumer.consumer_group_metadata()
            self._call(
                stop,
                "add the consumer offsets to the Kafka transaction",
                lambda: producer.send_offsets_to_transaction(positions, group, _TXN_TIMEOUT_S),
            )
        self._call(
            stop,
            "commit a Kafka transaction",
            lambda: producer.commit_transaction(_TXN_TIMEOUT_S),
        )
        self.counters.transactions += 1

    @staticmethod
    def _produce(
        producer: Producer,
        topic: str,
        payload: bytes,
        key: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int = 0,
    ) -> None:
        extra: dict[str, Any] = {}
        if partition is not None:
            extra["partition"] = partition
        if headers:
            extra["headers"] = headers
        if timestamp_ms > 0:
            extra["timestamp"] = timestamp_ms
        while True:
            try:
                producer.produce(topic, payload, key, **extra)
                return
            except BufferError:
                producer.poll(0.1)  # the local queue is full: let librdkafka send, then retry
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.txn_requires_abort():
                    raise _MustAbortError(error) from exc
                raise AlertError(f"cannot write to {topic!r}: {error.str()}; {RESTART}") from exc

    def _abort_and_rewind(
        self,
        stop: threading.Event,
        producer: Producer,
        members: tuple[Consumer, Consumer],
        error: KafkaError,
    ) -> None:
        """Abort the open transaction and go back to what was committed: every consumer to
        its group's committed offsets, the engine to the committed state of the owned
        partitions. The replay then writes what the aborted transaction would have written."""
        log.warning(
            "aborting a Kafka transaction (%s); replaying from the last committed offsets",
            error.str(),
        )
        self.counters.aborted += 1
        ABORTED.inc()
        try:
            self._call(
                stop,
                "abort a Kafka transaction",
                lambda: producer.abort_transaction(_TXN_TIMEOUT_S),
            )
        except _MustAbortError as again:
            raise AlertError(f"cannot abort a Kafka transaction: {again}; {RESTART}") from again
        consumer, router = members
        # The routed reader's positions are committed for the main group.
        readers = [(consumer, consumer), (router, router)]
        if self._routed is not None:
            readers.append((self._routed, consumer))
        try:
            for reader, group in readers:
                for position in self._committed(group, reader.assignment()):
                    reader.seek(position)
        except KafkaException as exc:
            raise AlertError(
                f"cannot rewind to the committed offsets: {describe(exc)}; {RESTART}"
            ) from exc
        self._engine = Engine(self.rules, self._restorer.restore(sorted(self.owned), stop))


# Headers of a routed record: where it came from (`status` or `action`) and its original key.
_SOURCE = "trackside.source"
_KEY = "trackside.key"


def _positions(partitions: list[TopicPartition]) -> set[tuple[str, int]]:
    return {(tp.topic, tp.partition) for tp in partitions}


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
