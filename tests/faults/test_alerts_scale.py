"""Three alert service instances on the three-broker cluster: one SIGKILLed mid-burst and
another started later, each alert written once and every flag right (read_committed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.topics import Topics
from tests.fixtures.kafka import KafkaService, LocalKafkaClusterHandle
from tests.gateway.alerts.conftest import TopicReader
from tests.gateway.alerts.test_partitions import PARTITIONS, running_fleet, sigkill_mid_burst

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_three_instances_on_the_cluster_one_sigkilled_write_each_alert_once(
    kafka_cluster: LocalKafkaClusterHandle, unique_topic: str, tmp_path: Path
) -> None:
    kafka = KafkaService(kafka_cluster.bootstrap_servers)
    topics = Topics.with_prefix(unique_topic)
    # Three copies of every topic, two of them in sync for each write.
    with running_fleet(kafka, unique_topic, tmp_path, replication_factor=3) as fleet:
        alerts = TopicReader(kafka.bootstrap_servers, topics.alerts, PARTITIONS)
        flags = TopicReader(kafka.bootstrap_servers, topics.maintenance, PARTITIONS)
        try:
            sigkill_mid_burst(kafka, fleet, topics, alerts, flags)
        finally:
            alerts.close()
            flags.close()
