"""`bridge/topics.py`: a connector's topics created as its config says, before its first
reading; an existing topic left alone; what cannot be created is one error naming the topic."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka.admin import AdminClient, ConfigResource
from confluent_kafka.cimpl import NewTopic

from bridge.config import ConfigError, ConnectorConfig, load_config
from bridge.connector import Connector
from bridge.topics import TopicError, create_connector_topics, min_insync_replicas
from tests.bridge.streams import connector_file
from tests.fixtures.kafka import KafkaService
from tests.fixtures.mqtt import BrokerHandle


def _config(tmp_path: Path, **kafka: Any) -> Path:
    path = tmp_path / "connector.yaml"
    path.write_text(yaml.safe_dump({"kafka": kafka}))
    return path


def test_min_insync_replicas_is_one_fewer_than_the_copies_unless_set() -> None:
    assert [min_insync_replicas(rf) for rf in (1, 2, 3, 5)] == [1, 1, 2, 4]
    assert min_insync_replicas(3, 3) == 3


def test_more_insync_replicas_than_copies_is_a_config_error_naming_both(tmp_path: Path) -> None:
    path = _config(tmp_path, replication_factor=2, min_insync_replicas=3)
    with pytest.raises(ConfigError, match=r"kafka: .*min_insync_replicas 3 is more than "):
        load_config(path)
    assert load_config(_config(tmp_path, replication_factor=3)).kafka.min_insync_replicas is None


def _described(bootstrap: str, topic: str) -> tuple[int, int, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions.values()
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    copies = {len(p.replicas) for p in partitions}
    return len(partitions), copies.pop(), configs["min.insync.replicas"].value


@pytest.mark.integration
def test_a_started_connector_has_created_its_topics_as_configured(
    mosquitto: BrokerHandle, kafka: KafkaService, tmp_path: Path, unique_topic: str
) -> None:
    name = unique_topic.replace(".", "-")
    kafka_section = {"partitions": 3, "min_insync_replicas": 1}
    path = connector_file(tmp_path, mosquitto, kafka.bootstrap_servers, name, kafka=kafka_section)
    connector = Connector(load_config(path))
    connector.start()  # returns once the topics exist (Kafka answers)
    try:
        assert _described(kafka.bootstrap_servers, f"{name}.telemetry") == (3, 1, "1")
        assert _described(kafka.bootstrap_servers, f"{name}.dead-letter") == (3, 1, "1")
    finally:
        connector.stop()


@pytest.mark.integration
def test_an_existing_topic_is_left_as_it_is(kafka: KafkaService) -> None:
    topic = f"existing-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers, "log_level": 0})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(timeout=30)
    config = ConnectorConfig.model_validate(
        {
            "kafka": {"bootstrap_servers": kafka.bootstrap_servers, "topic": topic},
            "errors": {"deadletterqueue_topic_name": None},
        }
    )
    assert create_connector_topics(config, admin) == []
    assert _described(kafka.bootstrap_servers, topic)[0] == 2


@pytest.mark.integration
def test_more_copies_than_brokers_is_one_error_naming_the_topic(kafka: KafkaService) -> None:
    topic = f"too-many-copies-{uuid.uuid4().hex[:8]}"
    config = ConnectorConfig.model_validate(
        {
            "kafka": {
                "bootstrap_servers": kafka.bootstrap_servers,
                "topic": topic,
                "replication_factor": 3,
            },
            "errors": {"deadletterqueue_topic_name": None},
        }
    )
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers, "log_level": 0})
    with pytest.raises(TopicError, match=rf"cannot create topic '{topic}': .*replication") as err:
        create_connector_topics(config, admin)
    assert not err.value.unreachable


def test_kafka_that_does_not_answer_is_unreachable_not_refused() -> None:
    config = ConnectorConfig.model_validate({"kafka": {"bootstrap_servers": "127.0.0.1:9"}})
    admin = AdminClient({"bootstrap.servers": "127.0.0.1:9", "log_level": 0})
    with pytest.raises(TopicError, match=r"cannot list the topics of 127\.0\.0\.1:9") as err:
        create_connector_topics(config, admin, timeout_s=1.0)
    assert err.value.unreachable
