"""A three-broker Kafka cluster losing a broker: the partition leader is SIGKILLed under load
and started again later. The bridge loses no acknowledged reading (counted by (device, boot,
seq) from paho, the publisher Trackside did not write, and a Kafka consumer); the alert
service writes each alert exactly once through the leader change (read_committed).

Both create their topics with three copies and `min.insync.replicas` 2 (from
`replication_factor: 3` alone): a write needs two copies, so the cluster takes writes with one
broker down and a write it took survives the loss of any one broker.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from gateway.topics import Topics
from tests.faults.ledger import AckLedger, KafkaTally
from tests.faults.services import Gateway, Names, assert_none_lost
from tests.fixtures.kafka import LocalKafkaClusterHandle
from tests.fixtures.processes import LOG_ROOT, active_logs
from tests.fixtures.waiting import wait_until
from tests.gateway.alerts.test_service import HOT_RULES, PATTERN, TopicReader, _reading

pytestmark = [pytest.mark.integration, pytest.mark.faults]

RATE = 400  # readings per second from paho, in total


def replication(bootstrap: str, topic: str) -> tuple[list[int], str]:
    """The copies of each partition of `topic` and its `min.insync.replicas`."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions.values()
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    return [len(p.replicas) for p in partitions], configs["min.insync.replicas"].value


def assert_replicated(bootstrap: str, *topics: str) -> None:
    """Once the topics exist: each partition of each has three copies, and the topic
    `min.insync.replicas` 2."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    wait_until(
        lambda: set(topics) <= set(admin.list_topics(timeout=10).topics), 60, f"topics {topics}"
    )
    for topic in topics:
        copies, min_insync = replication(bootstrap, topic)
        assert (set(copies), min_insync) == ({3}, "2"), topic


def in_sync(bootstrap: str, topic: str) -> int:
    """The in-sync replicas of partition 0 of `topic`."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    return len(admin.list_topics(topic, timeout=10).topics[topic].partitions[0].isrs)


class DeliveryWatch:
    """Samples the gateway's delivered count and mode four times a second, to tell how long
    Kafka took no reading after a broker died and when readings went straight to it again."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.samples: list[tuple[float, float, str]] = []  # time, delivered, mode
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            delivered = self.gateway.metric("trackside_bridge_delivered_total")
            mode = self.gateway.get("/status")[1]["connectors"][0]["mode"]
            self.samples.append((time.monotonic(), delivered, mode))

    def taking_again(self, moment: float) -> float | None:
        """Seconds from `moment` until Kafka acknowledged a reading again (None: not yet)."""
        after = [s for s in self.samples if s[0] >= moment]
        return next((t - moment for t, d, _ in after if d > after[0][1]), None)

    def straight_again(self, moment: float) -> float | None:
        """Seconds from `moment` until readings went straight to Kafka again, after the spool
        took some and was drained (0.0 if it took none; None: not yet)."""
        after = [s for s in self.samples if s[0] >= moment]
        spooling = [i for i, s in enumerate(after) if s[2] == "spooling"]
        if not spooling:
            return 0.0 if self.taking_again(moment) is not None else None
        return next((t - moment for t, _, m in after[spooling[-1] :] if m == "direct"), None)

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join(5)


def test_the_bridge_loses_no_reading_when_the_partition_leader_is_killed(
    tmp_path: Path, kafka_cluster: LocalKafkaClusterHandle
) -> None:
    names = Names()
    bootstrap = kafka_cluster.bootstrap_servers
    kafka = {"bootstrap_servers": bootstrap, "topic": names.telemetry, "replication_factor": 3}
    gateway = Gateway(tmp_path, names, bootstrap, kafka=kafka)
    gateway.start(timeout=60)
    # Created by the connector before the first reading, not by Kafka on first use.
    assert_replicated(bootstrap, names.telemetry, names.dead_letter)
    ledger = AckLedger(gateway.mqtt_host, gateway.mqtt_port, devices=10, rate=RATE).start()
    tally = KafkaTally(bootstrap, names.telemetry)
    watch = DeliveryWatch(gateway)
    victim = None
    try:
        wait_until(lambda: len(ledger.acked) > 4 * RATE, 60, "readings acknowledged before")
        victim = kafka_cluster.leader(names.telemetry)
        killed_at = time.monotonic()
        kafka_cluster.kill(victim)
        wait_until(lambda: kafka_cluster.leader(names.telemetry) != victim, 60, "a new leader")
        wait_until(
            lambda: watch.straight_again(killed_at) is not None, 90, "readings straight to Kafka"
        )
        taking, straight = watch.taking_again(killed_at), watch.straight_again(killed_at)
        before = len(ledger.acked)
        wait_until(lambda: len(ledger.acked) > before + 2 * RATE, 60, "readings, one broker down")
        restart_at = time.monotonic()
        kafka_cluster.restart(victim)
        restarted_in = time.monotonic() - restart_at
        wait_until(lambda: in_sync(bootstrap, names.telemetry) == 3, 90, "the node back in sync")
        ledger.stop()
        wait_until(lambda: ledger.unacked() == 0, 60, "paho's readings acknowledged")
        assert_none_lost(ledger, tally, at_least=8 * RATE)
        assert gateway.running()
        assert gateway.get("/healthz")[0] == 200
        duplicates = tally.records - len(tally.seen)
        print(
            f"\nbroker {victim} killed: {len(ledger.acked)} readings acknowledged, none lost, "
            f"{duplicates} duplicates; Kafka took readings again after {taking} s, readings "
            f"went straight to it again after {straight} s; the node restarted in "
            f"{restarted_in:.1f} s"
        )
    finally:
        watch.stop()
        ledger.close()
        tally.close()
        gateway.stop()
        if victim is not None and not kafka_cluster.running(victim):
            kafka_cluster.restart(victim)


def start_alert_service(tmp_path: Path, bootstrap: str, prefix: str) -> subprocess.Popen[bytes]:
    """`trackside alerts run` on the PREFIX.* topics with `replication_factor: 3` alone in its
    service file, logging to test-logs/."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(HOT_RULES)
    kafka = {
        "bootstrap_servers": bootstrap,
        "group_id": f"{prefix}-alerts",
        "transactional_id": f"{prefix}-alerts-0",
        "replication_factor": 3,
    }
    service_file = tmp_path / "alerts.yaml"
    service_file.write_text(yaml.safe_dump({"kafka": kafka, "rules_file": str(rules)}))
    log = LOG_ROOT / f"alerts-{prefix}" / "alerts.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    active_logs[f"alerts:{prefix}"] = log
    argv = [sys.executable, "-m", "gateway", "alerts", "run", "-c", str(service_file)]
    with log.open("ab") as out:
        return subprocess.Popen(
            [*argv, "--topic-prefix", prefix, "-v"], stdout=out, stderr=subprocess.STDOUT
        )


TRAINS = [f"T{i}" for i in range(20)]
CYCLES = 6  # per train: 50, 130, 130, 50 -> one firing and one resolved event per cycle


def test_the_alert_service_writes_each_alert_once_through_a_leader_change(
    tmp_path: Path, kafka_cluster: LocalKafkaClusterHandle
) -> None:
    prefix = f"cluster-{uuid.uuid4().hex[:8]}"
    topics = Topics.with_prefix(prefix)
    bootstrap = kafka_cluster.bootstrap_servers
    service = start_alert_service(tmp_path, bootstrap, prefix)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    expected_total = len(TRAINS) * CYCLES * 2
    alerts: TopicReader | None = None
    victim = None

    def burst() -> None:
        # Paced: a transaction every few hundred milliseconds, before, during and after the
        # leader change, rather than one large transaction the change could fall between.
        readings = [v for _ in range(CYCLES) for v in PATTERN]
        for seq, value in enumerate(readings, start=1):
            for train in TRAINS:
                producer.produce(topics.telemetry, _reading(train, seq, value), train.encode())
            producer.poll(0)
            done.wait(0.3)
        assert producer.flush(60) == 0

    done = threading.Event()
    sender = threading.Thread(target=burst, daemon=True)
    try:
        assert_replicated(bootstrap, topics.alerts, topics.alert_state, topics.telemetry)
        alerts = reader = TopicReader(bootstrap, topics.alerts)
        sender.start()
        seen = reader.wait(lambda r: len(r) >= expected_total // 4, timeout=60)
        # The leader of the partition the transactions write alerts to; the state topic's
        # leader may be another node, and the transactions then span both.
        victim = kafka_cluster.leader(topics.alerts)
        kafka_cluster.kill(victim)
        killed_at = time.monotonic()
        assert len(seen) < expected_total // 2, "the burst was over before the kill"
        reader.wait(lambda r: len(r) > len(seen), timeout=60)
        stalled = time.monotonic() - killed_at
        sender.join(120)
        events = reader.wait(lambda r: len(r) >= expected_total, timeout=120)
        kafka_cluster.restart(victim)
        # A late duplicate would come before this one, with the node back in the cluster.
        producer.produce(topics.telemetry, _reading("Tlast", 1, 130.0), b"Tlast")
        assert producer.flush(30) == 0
        events = reader.wait(lambda r: any(e["train_id"] == "Tlast" for e in r), timeout=90)
        assert service.poll() is None, "the alert service exited"
        print(f"\nbroker {victim} killed: no alert committed for {stalled:.1f} s")
    finally:
        done.set()
        service.terminate()
        service.wait(60)
        if alerts is not None:
            alerts.close()
        if victim is not None and not kafka_cluster.running(victim):
            kafka_cluster.restart(victim)

    keys = Counter((e["train_id"], e["state"], e["ts_ms"]) for e in events)
    expected = Counter(
        (train, state, 1_767_225_600_000 + seq * 1000)
        for train in TRAINS
        for cycle in range(CYCLES)
        for state, seq in (("firing", cycle * 4 + 2), ("resolved", cycle * 4 + 4))
    )
    expected[("Tlast", "firing", 1_767_225_600_000 + 1000)] = 1
    extra, missing = keys - expected, expected - keys
    assert (extra, missing) == (Counter(), Counter())  # each alert once: no extra, none missing
