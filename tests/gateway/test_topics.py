"""`gateway/topics.py`: every topic created before anything subscribes, compaction where the last
record per key is all that matters, and a second run that finds them all."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from gateway import GatewayError
from gateway.topics import Topics, ensure_topics
from tests.fixtures.kafka import KafkaService

pytestmark = pytest.mark.integration


def test_every_topic_is_created_once_and_the_state_topics_are_compacted(
    kafka: KafkaService,
) -> None:
    topics = Topics.with_prefix(f"t-{uuid.uuid4().hex[:8]}")
    created = ensure_topics(kafka.bootstrap_servers, topics)
    assert sorted(created) == sorted(topics.model_dump().values())
    assert ensure_topics(kafka.bootstrap_servers, topics) == []

    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    policies = {}
    for name in (topics.maintenance, topics.alert_state, topics.telemetry):
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)
        configs = admin.describe_configs([resource])[resource].result(timeout=30)
        policies[name] = configs["cleanup.policy"].value
    assert policies == {
        topics.maintenance: "compact",
        topics.alert_state: "compact",
        topics.telemetry: "delete",
    }


def test_a_kafka_that_does_not_answer_is_one_error_saying_what_to_check() -> None:
    with pytest.raises(GatewayError, match=r"cannot list the topics of 127\.0\.0\.1:9.*kafka"):
        ensure_topics("127.0.0.1:9", Topics(), timeout_s=1.0)
