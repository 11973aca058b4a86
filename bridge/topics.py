"""Kafka topics created with the partitions, replication and `min.insync.replicas` a config
names, before the first record goes there: a connector's own (readings and dead letters) here,
every Trackside topic in `gateway.topics`.

Without this, Kafka creates a topic on first use with the broker's defaults (one copy on most
brokers): a cluster would hold the readings on one broker only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable, Mapping

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from bridge import BridgeError
from bridge.config import ConnectorConfig

__all__ = [
    "TopicError",
    "create_connector_topics",
    "create_missing",
    "min_insync_replicas",
    "new_topic",
    "wait_and_create_connector_topics",
]

log = logging.getLogger(__name__)

# An answer with these means Kafka is not there (yet): ask again later.
_UNREACHABLE = frozenset(
    {
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TRANSPORT,
        KafkaError._RESOLVE,
        KafkaError._TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
    }
)


class TopicError(BridgeError):
    """A topic could not be listed or created; `unreachable` when Kafka did not answer."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


def min_insync_replicas(replication_factor: int, configured: int | None = None) -> int:
    """`configured`, else one fewer than the copies, at least 1: a write needs 2 of 3 copies,
    so a cluster of three takes writes with one broker down and loses none that it took."""
    return configured if configured is not None else max(1, replication_factor - 1)


def new_topic(
    name: str,
    partitions: int,
    replication_factor: int,
    min_insync_replicas: int,
    config: Mapping[str, str] | None = None,
) -> NewTopic:
    """A topic to create; `min.insync.replicas` is set on the topic itself, so that a
    broker default cannot refuse every acks=all write to a topic with fewer copies."""
    settings = {"min.insync.replicas": str(min_insync_replicas), **(config or {})}
    return NewTopic(
        name,
        num_partitions=partitions,
        replication_factor=replication_factor,
        config=settings,
    )


def create_missing(
    admin: AdminClient, wanted: Iterable[NewTopic], existing: Collection[str], timeout_s: float
) -> list[str]:
    """Create each topic of `wanted` not in `existing`; the names created (a topic another
    client created meanwhile counts as there). TopicError names the topic and what to do."""
    missing = [topic for topic in wanted if topic.topic not in existing]
    if not missing:
        return []
    for name, future in admin.create_topics(missing, request_timeout=timeout_s).items():
        try:
            future.result()
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise TopicError(
                f"cannot create topic {name!r}: {error.str()}; lower its replication_factor "
                "or min_insync_replicas to what the cluster has, create it by hand, or give "
                "this client the right to",
                unreachable=error.code() in _UNREACHABLE,
            ) from exc
    return [topic.topic for topic in missing]


def create_connector_topics(
    config: ConnectorConfig, admin: AdminClient, timeout_s: float = 5.0
) -> list[str]:
    """Create the connector's topic and its dead-letter topic where Kafka lacks them, as
    `kafka.partitions`, `replication_factor` and `min_insync_replicas` say; the names
    created. TopicError (`unreachable` set when Kafka did not answer)."""
    kafka = config.kafka
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        error = exc.args[0]
        raise TopicError(
            f"cannot list the topics of {kafka.bootstrap_servers}: {error.str()}",
            unreachable=error.code() in _UNREACHABLE,
        ) from exc
    names = dict.fromkeys([kafka.topic, *filter(None, [config.errors.deadletterqueue_topic_name])])
    wanted = [
        new_topic(
            name,
            kafka.partitions,
            kafka.replication_factor,
            min_insync_replicas(kafka.replication_factor, kafka.min_insync_replicas),
        )
        for name in names
    ]
    return create_missing(admin, wanted, existing, timeout_s)


def wait_and_create_connector_topics(config: ConnectorConfig, stop: threading.Event) -> None:
    """`create_connector_topics`, asked again with backoff while Kafka does not answer,
    until `stop` is set. Any other refusal is one warning: the readings still go to Kafka,
    which may create the topic itself with its defaults, or wait in the spool until a
    person creates it."""
    kafka = config.kafka
    admin = AdminClient(
        {"bootstrap.servers": kafka.bootstrap_servers, **kafka.settings, "log_level": 0}
    )
    delay = 0.5
    while not stop.is_set():
        try:
            created = create_connector_topics(config, admin)
        except TopicError as exc:
            if not exc.unreachable:
                log.warning("connector %s: %s", config.name, exc)
                return
            stop.wait(delay)
            delay = min(delay * 2, 5.0)  # as the spool's replay asks: before it
            continue
        if created:
            log.info("connector %s created Kafka topic(s) %s", config.name, ", ".join(created))
        return
