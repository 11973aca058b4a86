"""Kafka reachability of the alert service: one line per change, the gauge, fatal errors."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError
from prometheus_client import REGISTRY

from gateway.alerts.kafka_link import KafkaLink


def kafka_up() -> float | None:
    return REGISTRY.get_sample_value("trackside_alerts_kafka_up")


def test_an_outage_is_one_line_down_and_one_line_back(caplog: pytest.LogCaptureFixture) -> None:
    link = KafkaLink("kafka:9092")
    refused = KafkaError(KafkaError._TRANSPORT, "Connect to kafka:9092 failed: refused")
    all_down = KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")
    with caplog.at_level(logging.DEBUG, logger="gateway.alerts.kafka_link"):
        link.reachable()  # normal operation: silent
        assert kafka_up() == 1
        for _ in range(300):  # librdkafka's reconnect attempts while Kafka is away
            link.on_error(refused)
            link.on_error(all_down)
        assert (link.up, kafka_up()) == (False, 0)
        for _ in range(3):
            link.reachable()
        link.on_error(refused)  # a late report of an old attempt: not a new outage
    assert link.up is True
    assert kafka_up() == 1
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert [level for level, _ in lines] == ["WARNING", "WARNING"]
    assert lines[0][1].startswith("Kafka unreachable at kafka:9092 (1/1 brokers are down)")
    assert lines[1][1].startswith("Kafka reachable again at kafka:9092 after ")


def test_other_errors_are_logged_once_per_kind_and_fatal_ones_are_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    link = KafkaLink("kafka:9092")
    denied = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "not authorized")
    fenced = KafkaError(KafkaError._FENCED, "producer fenced", fatal=True)
    with caplog.at_level(logging.WARNING, logger="gateway.alerts.kafka_link"):
        for _ in range(5):
            link.on_error(denied)
        link.on_error(fenced)
        link.on_error(fenced)
    assert link.fatal is fenced
    assert [r.getMessage() for r in caplog.records] == [
        "Kafka at kafka:9092: not authorized (retrying)",
        "Kafka client failed: producer fenced",
    ]
