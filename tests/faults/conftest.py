"""Fixtures of the fault suite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from gateway.localkafka import LocalKafka
from tests.fixtures.kafka import LocalKafkaHandle
from tests.fixtures.processes import LOG_ROOT


@pytest.fixture
def kafka_later() -> Iterator[LocalKafkaHandle]:
    """A private Kafka on free ports, not started: Kafka is down until the test starts it."""
    handle = LocalKafkaHandle(LocalKafka.on_free_ports(LOG_ROOT / f"kafka-{uuid.uuid4().hex[:8]}"))
    yield handle
    handle.stop()
