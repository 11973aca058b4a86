"""The dashboard's Kafka clients: one place that merges their settings and translates errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import KafkaException

from bridge.redact import mask
from gateway.dashboard import DashboardError
from gateway.dashboard.config import DashboardConfig

__all__ = ["kafka_client"]

Client = TypeVar("Client")


def kafka_client(
    make: Callable[[dict[str, Any]], Client], config: DashboardConfig, settings: dict[str, Any]
) -> Client:
    """`make` (Producer or Consumer) with `settings`, then the config's own librdkafka settings."""
    merged: dict[str, Any] = {
        "bootstrap.servers": config.bootstrap_servers,
        **settings,
        # Errors reach us through error_cb or the delivery report; librdkafka's own log
        # would repeat each failed connection attempt many times a second.
        "log_level": 0,
        **config.kafka_settings,
    }
    try:
        return make(merged)
    except KafkaException as exc:
        raise DashboardError(
            f"Kafka settings refused by librdkafka: {mask(str(exc), merged)}"
        ) from exc
