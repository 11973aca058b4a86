"""The Kafka topic names every part agrees on (docs/architecture.md), in one place, and their
creation before anything subscribes to them."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from pydantic import BaseModel, ConfigDict

from bridge.topics import TopicError, create_missing, new_topic
from bridge.topics import min_insync_replicas as min_insync_replicas_for
from gateway import GatewayError

__all__ = ["Topics", "compacted_topics", "create_topics", "ensure_topics"]


class Topics(BaseModel):
    """Every Kafka topic of Trackside; each name can be changed in config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    telemetry: str = "trackside.telemetry"
    device_status: str = "trackside.device-status"
    operator_actions: str = "trackside.operator-actions"
    alerts: str = "trackside.alerts"
    alert_state: str = "trackside.alert-state"
    maintenance: str = "trackside.maintenance"
    commands: str = "trackside.commands"
    # Desired config per device, key {train_id}/{device_id} (gateway/devices_config.py).
    device_config: str = "trackside.device-config"
    # Device statuses and operator actions, routed by the alert service to their train's
    # partition (docs/alerts.md#partitions); read by the alert service only.
    alert_repartition: str = "trackside.alert-repartition"
    # Staged OTA rollouts (docs/ota.md#staged-rollouts): plans and states by rollout id, each
    # device's progress by rollout/train/device, signed bundles by release id; all compacted.
    ota_rollouts: str = "trackside.ota-rollouts"
    ota_progress: str = "trackside.ota-progress"
    ota_releases: str = "trackside.ota-releases"

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        """The default names with `trackside` replaced by `prefix` (`test-1.telemetry`, ...)."""
        return cls(
            **{
                name: value.replace("trackside.", f"{prefix}.", 1)
                for name, value in cls().model_dump().items()
            }
        )


def compacted_topics(topics: Topics) -> set[str]:
    """The names of the topics where only each key's last record matters (compacted)."""
    return {topics.alert_state, topics.maintenance, topics.device_config, topics.ota_rollouts,
            topics.ota_progress, topics.ota_releases}


def create_topics(
    admin: AdminClient,
    topics: Topics,
    existing: Collection[str],
    partitions: int = 1,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
    *,
    min_insync_replicas: int | None = None,
    only: Collection[str] | None = None,
) -> list[str]:
    """Create each topic of `topics` (or of them, those named in `only`) not in `existing`
    (the alert-state, maintenance, device-config and OTA topics compacted: only each key's
    last record matters); the names created.
    `min_insync_replicas` defaults to one fewer than `replication_factor`, at least 1."""
    compacted = compacted_topics(topics)
    insync = min_insync_replicas_for(replication_factor, min_insync_replicas)
    wanted = [
        new_topic(
            name,
            partitions,
            replication_factor,
            insync,
            {"cleanup.policy": "compact"} if name in compacted else None,
        )
        for name in dict.fromkeys(topics.model_dump().values())
        if only is None or name in only
    ]
    try:
        return create_missing(admin, wanted, existing, timeout_s)
    except TopicError as exc:
        raise GatewayError(str(exc)) from exc


def ensure_topics(
    bootstrap_servers: str,
    topics: Topics,
    settings: Mapping[str, Any] | None = None,
    timeout_s: float = 30.0,
    *,
    only: Collection[str] | None = None,
    replication_factor: int = 1,
) -> list[str]:
    """Create the topics Kafka does not have yet, so that no consumer subscribes to a topic
    that is missing (librdkafka warns "Subscribed topic not available" until it appears); the
    names created. `settings` go to librdkafka untouched (security.protocol, sasl.*); `only`
    and `replication_factor` as for `create_topics`."""
    admin = AdminClient(
        {"bootstrap.servers": bootstrap_servers, "log_level": 0, **(settings or {})}
    )
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise GatewayError(
            f"cannot list the topics of {bootstrap_servers}: {exc.args[0].str()}; check that "
            "Kafka runs there (`trackside kafka status`)"
        ) from exc
    return create_topics(admin, topics, existing, replication_factor=replication_factor,
                         timeout_s=timeout_s, only=only)
