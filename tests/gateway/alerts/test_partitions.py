"""Several alert service instances in one group, on topics with several partitions: each alert
once and every flag right when an instance is SIGKILLed mid-burst, and through rebalances
under load (instances added and removed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Message, Producer
from confluent_kafka.admin import AdminClient

from gateway.alerts.config import KafkaSettings, ServiceConfig
from gateway.alerts.partitioning import PARTITIONER, partition_of
from gateway.alerts.rules import RuleSet
from gateway.alerts.service import AlertService
from gateway.topics import Topics, create_topics
from tests.fixtures.kafka import KafkaService
from tests.fixtures.processes import active_logs
from tests.fixtures.waiting import wait_until
from tests.gateway.alerts.conftest import Event, TopicReader

pytestmark = pytest.mark.integration

PARTITIONS = 6
TRAINS = [f"T{i}" for i in range(60)]
CYCLES = 8  # per train: 50, 130, 130, 50 -> one firing and one resolved event per cycle
PATTERN = [50.0, 130.0, 130.0, 50.0]
T0 = 1_767_225_600_000
# Critical: the first firing flags the train; a flagged train is flagged once.
RULES = """
rules:
  - {name: hot, kind: threshold, channels: [bearing_left_temp], above: 120, clear: 100,
     severity: critical}
"""
# A dead instance's partitions move after its session (static membership, and 6 s is the
# broker's least); its open transaction, which holds back read_committed readers, is aborted
# after the transaction timeout. A member learns of a rebalance at its next heartbeat: each
# second, not librdkafka's 3 s, so that the three instances own their partitions 2 s after
# they start, not 6.
SESSION = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}
SERVICE_FILE = {
    "kafka": {"partitions": PARTITIONS, "settings": {**SESSION, "transaction.timeout.ms": 10000}}
}


@dataclass
class Fleet:
    """Alert service instances of one group, as `trackside alerts run` processes."""

    kafka: KafkaService
    prefix: str
    folder: Path
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, *instances: int) -> None:
        """Start each of `instances` (each with its own transactional id) at once and wait
        until every one runs."""
        for instance in instances:
            self._launch(instance)
        wait_until(
            lambda: all(self.lines(i, "alert service running") for i in instances),
            60,
            "every instance running",
        )

    def _launch(self, instance: int) -> None:
        log = self.log(instance)
        active_logs[f"alerts:{self.prefix}:{instance}"] = log
        config = self.folder / "alerts.yaml"
        config.write_text(yaml.safe_dump(SERVICE_FILE))
        rules = self.folder / "rules.yaml"
        rules.write_text(RULES)
        with log.open("ab") as out:
            self.procs[instance] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "alerts",
                    "run",
                    "-c",
                    str(config),
                    "--bootstrap-servers",
                    self.kafka.bootstrap_servers,
                    "--topic-prefix",
                    self.prefix,
                    "--rules",
                    str(rules),
                    "--group-id",
                    f"{self.prefix}-alerts",
                    "--transactional-id",
                    f"{self.prefix}-alerts-{instance}",
                    "-v",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def log(self, instance: int) -> Path:
        """The log file of `instance`."""
        return self.folder / f"alerts-{instance}.log"

    def lines(self, instance: int, text: str) -> list[str]:
        """The lines of `instance`'s log that contain `text`."""
        path = self.log(instance)
        if not path.exists():
            return []
        return [line for line in path.read_text(errors="replace").splitlines() if text in line]

    def kill(self, instance: int) -> None:
        """SIGKILL: a crash, mid-transaction or not."""
        proc = self.procs.pop(instance)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self, *instances: int) -> None:
        """SIGTERM each of `instances` at once: a clean stop; each must exit 0."""
        procs = [self.procs.pop(instance) for instance in instances]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(60) == 0

    def stop_all(self) -> None:
        """SIGTERM every instance still running."""
        self.stop(*self.procs)


@contextmanager
def running_fleet(
    kafka: KafkaService, prefix: str, folder: Path, replication_factor: int = 1
) -> Iterator[Fleet]:
    """The PREFIX.* topics with `PARTITIONS` partitions, and a `Fleet` on them; every instance
    still running at the end is killed (a failed test: none outlives it)."""
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers, "log_level": 0})
    topics = Topics.with_prefix(prefix)
    create_topics(admin, topics, set(), PARTITIONS, replication_factor)
    running = Fleet(kafka, prefix, folder)
    try:
        yield running
    finally:
        for proc in running.procs.values():
            proc.kill()
            proc.wait()


@pytest.fixture
def fleet(kafka: KafkaService, unique_topic: str, tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(kafka, unique_topic, tmp_path) as running:
        yield running


def test_partition_of_is_where_librdkafkas_murmur2_random_puts_a_train(
    kafka: KafkaService, fleet: Fleet, unique_topic: str
) -> None:
    topic = Topics.with_prefix(unique_topic).telemetry  # created with PARTITIONS partitions
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "partitioner": PARTITIONER})
    delivered: dict[str, int] = {}

    def on_delivery(_error: object, msg: Message) -> None:
        delivered[(msg.key() or b"").decode()] = int(msg.partition() or 0)

    trains = [f"T{i}" for i in range(200)] + ["", "Zürich-7", "a-little-bit-longer-train-id"]
    for train in trains:
        producer.produce(topic, b"{}", train.encode(), on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert delivered == {train: partition_of(train, PARTITIONS) for train in trains}


def _reading(train: str, seq: int, value: float) -> bytes:
    return json.dumps(
        {
            "train_id": train,
            "device_id": 7,
            "boot_id": 1,
            "seq": seq,
            "ts_ms": T0 + seq * 1000,
            "values": {"bearing_left_temp": value},
        }
    ).encode()


class Burst:
    """Threshold crossings of every train (with redelivered older readings), sent from a
    thread; `pause_at` holds it at that step until `go` is set."""

    def __init__(self, kafka: KafkaService, topic: str, pause_at: int | None = None) -> None:
        # Kafka's hash of the train id, as the bridge: the partition the service expects.
        settings = {"bootstrap.servers": kafka.bootstrap_servers, "partitioner": PARTITIONER}
        self.producer = Producer({**settings, "linger.ms": 5})
        self.topic = topic
        self.pause_at = pause_at
        self.go = threading.Event()
        self.done = threading.Event()
        self.step = 0
        self._thread = threading.Thread(target=self._send, daemon=True)

    def start(self) -> Burst:
        """Begin sending."""
        self._thread.start()
        return self

    def send(self, train: str, seq: int, value: float) -> None:
        """One reading of `train`."""
        self.producer.produce(self.topic, _reading(train, seq, value), train.encode())

    def _send(self) -> None:
        readings = [v for _ in range(CYCLES) for v in PATTERN]
        for seq, value in enumerate(readings, start=1):
            self.step = seq
            if seq == self.pause_at:
                self.go.wait(120)
            for train in TRAINS:
                self.send(train, seq, value)
                if seq % 5 == 0:
                    self.send(train, seq - 2, readings[seq - 3])  # a redelivered older reading
            self.producer.poll(0)
            time.sleep(0.15)  # the pace of the fleet, not a wait for a result
        assert self.producer.flush(30) == 0
        self.done.set()

    def join(self) -> None:
        """Wait until every reading is in Kafka."""
        self._thread.join(180)
        assert self.done.is_set()


def _expected_alerts() -> Counter[tuple[str, str, int]]:
    return Counter(
        (train, state, T0 + seq * 1000)
        for train in TRAINS
        for cycle in range(CYCLES)
        for state, seq in (("firing", cycle * 4 + 2), ("resolved", cycle * 4 + 4))
    )


def _check(alerts: list[Event], flags: list[Event]) -> None:
    keys = Counter((e["train_id"], e["state"], e["ts_ms"]) for e in alerts)
    expected = _expected_alerts()
    assert (keys - expected, expected - keys) == (Counter(), Counter())  # each alert once
    # Each train flagged once, by its first firing; the two cleared ones cleared once.
    flagged = Counter((f["train_id"], f["flagged"], f["since_ms"], f["by"]) for f in flags)
    wanted = Counter((train, True, T0 + 2000, "alerts") for train in TRAINS)
    wanted.update((train, False, 9, "maria") for train in TRAINS[:2])
    assert (flagged - wanted, wanted - flagged) == (Counter(), Counter())
    assert all(f["reason"] == f"{f['train_id']}/hot/7/bearing_left_temp" for f in flags)


def _clear_two_trains(kafka: KafkaService, topic: str) -> None:
    """The desk clears two flags: routed to their trains' partitions, wherever read."""
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for train in TRAINS[:2]:
        clear = {"action": "clear", "train_id": train, "by": "maria", "at_ms": 9}
        producer.produce(topic, json.dumps(clear).encode(), train.encode())
    assert producer.flush(30) == 0


def _readers(
    readers: Callable[..., TopicReader], topics: Topics
) -> tuple[TopicReader, TopicReader]:
    return readers(topics.alerts, PARTITIONS), readers(topics.maintenance, PARTITIONS)


def sigkill_mid_burst(
    kafka: KafkaService, fleet: Fleet, topics: Topics, alerts: TopicReader, flags: TopicReader
) -> None:
    """Three instances; a burst over 60 trains; instance 1 SIGKILLed mid-burst, instance 3
    started later; then each alert is in `alerts` once and every flag in `flags` is right."""
    fleet.start(0, 1, 2)
    # Each instance owns some partitions: the group has settled.
    wait_until(
        lambda: all(fleet.lines(i, "took partitions") for i in range(3)), 60, "three owners"
    )
    total = sum(_expected_alerts().values())
    burst = Burst(kafka, topics.telemetry, pause_at=CYCLES * 2).start()
    seen = alerts.wait(lambda r: len(r) >= total // 4, timeout=120)
    fleet.kill(1)
    assert len(seen) < total // 2
    burst.go.set()
    # Another instance joins later, while the dead one's partitions wait for its session.
    wait_until(lambda: burst.step >= CYCLES * 3, 60, "three quarters of the burst sent")
    fleet.start(3)
    burst.join()
    _clear_two_trains(kafka, topics.operator_actions)
    try:
        alerts.wait(lambda r: len(r) >= total, timeout=180)
        flags.wait(lambda r: len(r) >= len(TRAINS) + 2, timeout=60)
    finally:
        fleet.stop_all()
    # Everything the instances committed before they stopped is read: a duplicate shows.
    stopped = time.monotonic()
    wait_until(
        lambda: alerts.caught_up(stopped) and flags.caught_up(stopped), 30, "readers at the end"
    )
    _check(alerts.records, flags.records)


def test_three_instances_one_sigkilled_mid_burst_write_each_alert_once_and_every_flag(
    kafka: KafkaService,
    fleet: Fleet,
    unique_topic: str,
    readers: Callable[..., TopicReader],
) -> None:
    topics = Topics.with_prefix(unique_topic)
    alerts, flags = _readers(readers, topics)
    sigkill_mid_burst(kafka, fleet, topics, alerts, flags)


def test_rebalances_under_load_added_and_removed_instances_write_each_alert_once(
    kafka: KafkaService,
    fleet: Fleet,
    unique_topic: str,
    readers: Callable[..., TopicReader],
) -> None:
    topics = Topics.with_prefix(unique_topic)
    alerts, flags = _readers(readers, topics)
    fleet.start(0)
    burst = Burst(kafka, topics.telemetry).start()
    total = sum(_expected_alerts().values())
    alerts.wait(lambda r: len(r) >= total // 8, timeout=120)
    fleet.start(1)  # added: some of instance 0's partitions move to it, under load
    alerts.wait(lambda r: len(r) >= total // 4, timeout=120)
    fleet.start(2)
    alerts.wait(lambda r: len(r) >= total // 2, timeout=120)
    fleet.stop(0)  # removed cleanly: its partitions move after its session
    burst.join()
    _clear_two_trains(kafka, topics.operator_actions)
    try:
        alerts.wait(lambda r: len(r) >= total, timeout=180)
        flags.wait(lambda r: len(r) >= len(TRAINS) + 2, timeout=60)
    finally:
        fleet.stop_all()
    stopped = time.monotonic()
    wait_until(
        lambda: alerts.caught_up(stopped) and flags.caught_up(stopped), 30, "readers at the end"
    )
    assert fleet.lines(1, "took partitions")  # the first one added took over some
    _check(alerts.records, flags.records)


def test_stale_timers_survive_a_move_and_fire_once_per_silent_device(
    kafka: KafkaService, fleet: Fleet, unique_topic: str, readers: Callable[..., TopicReader]
) -> None:
    """One train per partition reports once and falls silent; a second instance joins and
    takes half the partitions: every device's stale alert fires once, the moved ones from the
    instance that never saw their readings."""
    topics = Topics.with_prefix(unique_topic)
    by_partition: dict[int, str] = {}
    for n in range(1000):
        by_partition.setdefault(partition_of(f"S{n}", PARTITIONS), f"S{n}")
    trains = sorted(by_partition.values())
    # The second instance owns its partitions about 2 s after it starts (a heartbeat each
    # second): the devices fall silent for three times that before their timers fire.
    rules = RuleSet.model_validate({"rules": [{"name": "quiet", "kind": "stale", "after_s": 6}]})
    services, threads, stop = [], [], threading.Event()

    def start(instance: int) -> AlertService:
        kafka_settings = KafkaSettings(
            bootstrap_servers=kafka.bootstrap_servers,
            group_id=f"{unique_topic}-alerts",
            transactional_id=f"{unique_topic}-alerts-{instance}",
            partitions=PARTITIONS,
            settings=SESSION,
        )
        config = ServiceConfig(kafka=kafka_settings, topics=topics, stale_check_s=0.2)
        service = AlertService(config, rules)
        threads.append(threading.Thread(target=service.run, args=(stop,), daemon=True))
        threads[-1].start()
        services.append(service)
        return service

    alerts = readers(topics.alerts, PARTITIONS)
    first = start(0)
    wait_until(lambda: len(first.owned) == PARTITIONS, 60, "the first instance owns all")
    burst = Burst(kafka, topics.telemetry)
    for train in trains:
        burst.send(train, 1, 50.0)
    assert burst.producer.flush(30) == 0
    wait_until(lambda: first.counters.readings == len(trains), 30, "the readings evaluated")
    second = start(1)  # takes half the partitions with their devices' last-seen times
    try:
        wait_until(lambda: len(second.owned) > 0, 60, "the second instance owns some")
        alerts.wait(lambda r: len(r) >= len(trains), timeout=60)
        assert second.owned and not (second.owned & first.owned)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    stopped = time.monotonic()
    wait_until(lambda: alerts.caught_up(stopped), 30, "the reader at the end")
    assert sorted(e["train_id"] for e in alerts.records) == trains  # each once
    assert {(e["rule"], e["state"]) for e in alerts.records} == {("quiet", "firing")}
    # The moved devices' timers ran on the instance that never saw their readings.
    assert second.counters.readings == 0 and second.counters.alerts > 0
    assert first.counters.alerts + second.counters.alerts == len(trains)
