"""`trackside doctor`'s Kafka checks: reachable, the topics' settings, the clock's offset.

Each function returns `CheckResult`s (gateway.doctor); a librdkafka error becomes a red line
that says what to do, never an exception out of here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from confluent_kafka import (
    TIMESTAMP_LOG_APPEND_TIME,
    KafkaError,
    KafkaException,
    Message,
    Producer,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._metadata import ClusterMetadata, TopicMetadata
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic

from gateway.config import GatewayConfig
from gateway.doctor.result import CheckResult, fail, ok, warn
from gateway.topics import compacted_topics

__all__ = [
    "CLOCK_FAIL_S",
    "CLOCK_WARN_S",
    "DOCTOR_TOPIC",
    "Cluster",
    "TopicWanted",
    "check_clock",
    "check_topics",
    "clusters",
    "connect",
]

# The doctor's own topic: one record per run, stamped by Kafka (LogAppendTime), kept an hour.
DOCTOR_TOPIC = "trackside.doctor"
# The alert service compares its own clock with Kafka's record times (stale-data rules, e.g.
# 60 s): a second off shifts alert times visibly; ten seconds make stale rules fire early or late.
CLOCK_WARN_S = 1.0
CLOCK_FAIL_S = 10.0
_CLOCK_SAMPLES = 3  # the one with the shortest round trip counts, as NTP does


@dataclass(frozen=True)
class TopicWanted:
    """A topic the configuration uses and what it must be like."""

    name: str
    used_by: str
    compacted: bool = False
    min_partitions: int = 1
    min_replication: int = 1


@dataclass
class Cluster:
    """One Kafka cluster of the configuration: its librdkafka settings and the topics used."""

    bootstrap_servers: str
    settings: dict[str, Any]
    topics: dict[str, TopicWanted]

    def want(self, topic: TopicWanted) -> None:
        """Add a topic; one used twice gets the stricter of both wishes."""
        seen = self.topics.get(topic.name)
        if seen is not None:
            topic = TopicWanted(
                topic.name,
                f"{seen.used_by}, {topic.used_by}",
                seen.compacted or topic.compacted,
                max(seen.min_partitions, topic.min_partitions),
                max(seen.min_replication, topic.min_replication),
            )
        self.topics[topic.name] = topic


def clusters(config: GatewayConfig) -> list[Cluster]:
    """Every cluster the gateway talks to, with the topics each part reads or writes."""
    found: dict[str, Cluster] = {}

    def cluster(servers: str, settings: dict[str, Any]) -> Cluster:
        return found.setdefault(servers, Cluster(servers, dict(settings), {}))

    for connector in config.connectors:
        at = cluster(connector.kafka.bootstrap_servers, connector.kafka.settings)
        who = f"connector {connector.name}"
        at.want(TopicWanted(connector.kafka.topic, who))
        if connector.errors.deadletterqueue_topic_name is not None:
            at.want(TopicWanted(connector.errors.deadletterqueue_topic_name, who))
        if connector.commands is not None:
            at.want(TopicWanted(connector.commands.topic, who))
    if config.alerts is not None:
        kafka = config.alerts.kafka
        at = cluster(kafka.bootstrap_servers, kafka.settings)
        topics = config.alerts.topics
        compacted_names = compacted_topics(topics)
        for name in dict.fromkeys(topics.model_dump().values()):
            compacted = name in compacted_names
            at.want(
                TopicWanted(
                    name, "alert service", compacted, kafka.partitions, kafka.replication_factor
                )
            )
    if config.dashboard is not None:
        dashboard = config.dashboard
        at = cluster(dashboard.bootstrap_servers, dashboard.kafka_settings)
        topics = dashboard.topics
        for name in (topics.telemetry, topics.alerts, topics.operator_actions):
            at.want(TopicWanted(name, "dashboard"))
        at.want(TopicWanted(topics.maintenance, "dashboard", compacted=True))
    return list(found.values())


def _quiet(settings: dict[str, Any], servers: str) -> dict[str, Any]:
    # Errors come back as exceptions; librdkafka's own lines would repeat every attempt.
    return {**settings, "bootstrap.servers": servers, "log_level": 0, "error_cb": lambda _: None}


def connect(cluster: Cluster, timeout: float) -> tuple[CheckResult, AdminClient | None]:
    """Whether a broker of `cluster` answers a metadata request within `timeout` seconds."""
    name = f"kafka {cluster.bootstrap_servers}"
    try:
        admin = AdminClient(_quiet(cluster.settings, cluster.bootstrap_servers))
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        return (
            fail(
                "kafka",
                name,
                f"no answer within {timeout:g} s ({_text(exc)}); topics and clock not checked",
                "start Kafka (`trackside kafka up` for the local one), or correct "
                "kafka.bootstrap_servers and kafka.settings (security.protocol, sasl.*); "
                "check the network and firewall between this machine and Kafka",
            ),
            None,
        )
    brokers = len(metadata.brokers)
    return ok(
        "kafka", name, f"reachable: {brokers} broker(s), cluster {metadata.cluster_id}"
    ), admin


def _text(exc: KafkaException) -> str:
    err = exc.args[0] if exc.args else None
    return err.str() if isinstance(err, KafkaError) else str(exc)


def _configs(
    admin: AdminClient, resources: list[ConfigResource], timeout: float
) -> dict[str, dict[str, str]]:
    """Each resource's configuration by name; one that cannot be described is left out."""
    if not resources:
        return {}
    described: dict[str, dict[str, str]] = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        try:
            entries = future.result()
        except KafkaException:
            continue  # not authorised to describe it: those checks say "unknown"
        described[resource.name] = {key: entry.value for key, entry in entries.items()}
    return described


def check_topics(cluster: Cluster, admin: AdminClient, timeout: float) -> list[CheckResult]:
    """One line per topic: present, partitions with a leader, replication, cleanup policy."""
    try:
        metadata: ClusterMetadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        return [fail("topic", "topics", f"cannot list the topics: {_text(exc)}", "run again")]
    present = [t for t in cluster.topics if t in metadata.topics]
    brokers = sorted(metadata.brokers)
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in present]
    if brokers:
        resources.append(ConfigResource(ResourceType.BROKER, str(brokers[0])))
    configs = _configs(admin, resources, timeout)
    broker = configs.get(str(brokers[0]), {}) if brokers else {}
    return [
        _topic_result(wanted, metadata.topics.get(wanted.name), configs.get(wanted.name), broker)
        for wanted in cluster.topics.values()
    ]


def _create_hint(wanted: TopicWanted) -> str:
    policy = " --config cleanup.policy=compact" if wanted.compacted else ""
    return (
        f"kafka-topics.sh --bootstrap-server ... --create --topic {wanted.name} "
        f"--partitions {wanted.min_partitions} --replication-factor {wanted.min_replication}"
        f"{policy}"
    )


def _topic_result(
    wanted: TopicWanted,
    topic: TopicMetadata | None,
    config: dict[str, str] | None,
    broker: dict[str, str],
) -> CheckResult:
    name = f"topic {wanted.name}"
    if topic is None:
        return _missing(wanted, broker)
    partitions = list(topic.partitions.values())
    replication = min((len(p.replicas) for p in partitions), default=0)
    policy = (config or {}).get("cleanup.policy", "unknown")
    min_isr = int((config or {}).get("min.insync.replicas") or 1)
    detail = (
        f"{len(partitions)} partition(s), replication {replication}, cleanup.policy {policy} "
        f"(used by {wanted.used_by})"
    )
    leaderless = [p.id for p in partitions if p.leader < 0]
    if leaderless:
        return fail(
            "topic",
            name,
            f"{detail}; no leader for partition(s) {leaderless}",
            "bring the brokers holding these partitions back (Kafka's log says which)",
        )
    if config is None:
        return warn(
            "topic",
            name,
            f"{detail}; its configuration could not be read (cleanup policy not checked)",
            "let this user describe topic configurations (ACL DescribeConfigs), or check "
            "cleanup.policy with kafka-configs.sh --describe",
        )
    if wanted.compacted and policy != "compact":
        return fail(
            "topic",
            name,
            f"{detail}; the alert state needs cleanup.policy compact, or retention deletes it",
            f"kafka-configs.sh --bootstrap-server ... --alter --entity-type topics "
            f"--entity-name {wanted.name} --add-config cleanup.policy=compact",
        )
    if not wanted.compacted and "compact" in policy:
        return fail(
            "topic",
            name,
            f"{detail}; compaction keeps only the newest record per key (one per train)",
            f"kafka-configs.sh --bootstrap-server ... --alter --entity-type topics "
            f"--entity-name {wanted.name} --add-config cleanup.policy=delete",
        )
    if len(partitions) < wanted.min_partitions or replication < wanted.min_replication:
        return fail(
            "topic",
            name,
            f"{detail}; configured: at least {wanted.min_partitions} partition(s), "
            f"replication {wanted.min_replication}",
            "add partitions (kafka-topics.sh --alter --partitions N) or reassign replicas "
            "(kafka-reassign-partitions.sh), or lower alerts.kafka.partitions / "
            "replication_factor to what the topic has",
        )
    if min_isr > replication:
        return fail(
            "topic",
            name,
            f"{detail}; min.insync.replicas {min_isr} is more than its "
            "replicas: every acks=all write is refused",
            f"set min.insync.replicas of {wanted.name} to {replication} or less",
        )
    lagging = [p.id for p in partitions if len(p.isrs) < len(p.replicas)]
    if lagging:
        return warn(
            "topic",
            name,
            f"{detail}; under-replicated partition(s) {lagging}",
            "a broker is down or behind: check the brokers holding them",
        )
    return ok("topic", name, detail)


def _missing(wanted: TopicWanted, broker: dict[str, str]) -> CheckResult:
    name = f"topic {wanted.name}"
    auto = broker.get("auto.create.topics.enable")
    if auto == "true" and not wanted.compacted:
        defaults = (
            f"{broker.get('num.partitions', '?')} partition(s), replication "
            f"{broker.get('default.replication.factor', '?')}"
        )
        return warn(
            "topic",
            name,
            f"missing (used by {wanted.used_by}); Kafka creates it on first use with its "
            f"defaults: {defaults}",
            f"create it with the settings you want: {_create_hint(wanted)}",
        )
    why = (
        "a created-on-use topic would not be compacted"
        if wanted.compacted
        else "Kafka does not create topics on use (auto.create.topics.enable "
        f"{auto or 'unknown'}): readings wait in the spool"
    )
    fix = _create_hint(wanted)
    if "alert service" in wanted.used_by:
        fix = f"restart the gateway (the alert service creates its topics at start), or {fix}"
    return fail("topic", name, f"missing (used by {wanted.used_by}); {why}", fix)


def _create_doctor_topic(admin: AdminClient, timeout: float) -> str | None:
    """Create DOCTOR_TOPIC unless it exists; why not, when that fails."""
    new = NewTopic(
        DOCTOR_TOPIC,
        num_partitions=1,
        config={"message.timestamp.type": "LogAppendTime", "retention.ms": "3600000"},
    )
    future = admin.create_topics([new], request_timeout=timeout)[DOCTOR_TOPIC]
    try:
        future.result()
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            return f"cannot create topic {DOCTOR_TOPIC}: {_text(exc)}"
    return None


def _samples(cluster: Cluster, timeout: float) -> Iterable[tuple[float, float, int, int]]:
    """(sent, acknowledged, Kafka's stamp in ms, the stamp's kind) per record; local times
    in seconds."""
    # Plain records, outside any transaction the alert service's settings may name.
    settings = {k: v for k, v in cluster.settings.items() if not k.startswith("transactional.")}
    producer = Producer({**_quiet(settings, cluster.bootstrap_servers), "linger.ms": 0})
    sent: list[float] = []
    acked: dict[int, tuple[float, Message]] = {}  # by record: a late report keeps its own

    def on_delivery(record: int, _err: KafkaError | None, message: Message) -> None:
        acked[record] = (time.time(), message)

    for record in range(_CLOCK_SAMPLES):
        sent.append(time.time())
        producer.produce(DOCTOR_TOPIC, b"clock", on_delivery=partial(on_delivery, record))
        producer.flush(timeout)
    for record, (at, message) in acked.items():
        if message.error() is None:
            kind, stamp = message.timestamp()
            yield sent[record], at, stamp, kind


def check_clock(cluster: Cluster, admin: AdminClient, timeout: float) -> CheckResult:
    """This machine's clock against Kafka's: Kafka stamps a record in the doctor's topic with
    its own time (LogAppendTime), compared with the middle of its round trip here."""
    name = f"clock vs kafka {cluster.bootstrap_servers}"
    problem = _create_doctor_topic(admin, timeout)
    samples = [] if problem else list(_samples(cluster, timeout))
    if not samples:
        return warn(
            "clock",
            name,
            f"not measured: {problem or 'Kafka acknowledged none of its records in time'}",
            f"let this user create and write topic {DOCTOR_TOPIC}",
        )
    if any(kind != TIMESTAMP_LOG_APPEND_TIME for *_, kind in samples):
        return warn(
            "clock",
            name,
            f"not measured: topic {DOCTOR_TOPIC} keeps the producer's time, not Kafka's",
            f"kafka-configs.sh --bootstrap-server ... --alter --entity-type topics "
            f"--entity-name {DOCTOR_TOPIC} --add-config message.timestamp.type=LogAppendTime",
        )
    sent, acked, stamp, _ = min(samples, key=lambda s: s[1] - s[0])
    offset = (sent + acked) / 2 - stamp / 1000
    error = (acked - sent) / 2
    detail = (
        f"this machine is {abs(offset) * 1000:.0f} ms {'ahead of' if offset > 0 else 'behind'} "
        f"Kafka (+/- {error * 1000:.0f} ms)"
    )
    fix = "synchronise both clocks with NTP (`timedatectl status`; chrony or systemd-timesyncd)"
    if abs(offset) - error > CLOCK_FAIL_S:
        return fail("clock", name, detail, fix)
    if abs(offset) - error > CLOCK_WARN_S:
        return warn("clock", name, detail, fix)
    return ok("clock", name, detail)
