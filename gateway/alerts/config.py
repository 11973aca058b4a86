"""The alert service's own settings (`alerts.yaml`): Kafka, topic names, the rule file, and
where to post notifications (Alertmanager)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from gateway.alerts.notify import AlertmanagerSettings
from gateway.alerts.rules import load_model
from gateway.topics import Topics

__all__ = [
    "DEFAULT_RULES",
    "AlertmanagerSettings",
    "KafkaSettings",
    "ServiceConfig",
    "Topics",
    "load_service_config",
]

DEFAULT_RULES = Path(__file__).resolve().parent / "default_rules.yaml"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Frozen):
    """The cluster, the group, the transactional id; `settings` go to librdkafka untouched."""

    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "trackside-alerts"
    # Stable per instance: a restarted instance fences the transactions of its old self.
    transactional_id: str = "trackside-alerts-0"
    partitions: int = Field(1, ge=1)
    replication_factor: int = Field(1, ge=1)
    settings: dict[str, str | int | float | bool] = Field(default_factory=dict)


class ServiceConfig(_Frozen):
    """One alert service instance."""

    kafka: KafkaSettings = KafkaSettings()
    topics: Topics = Topics()
    rules_file: Path = DEFAULT_RULES
    stale_check_s: float = Field(1.0, gt=0)
    # Input records per transaction at most: over a backlog, fewer commits to wait for (2,000:
    # 41,000 readings/s; 10,000: 55,000-59,000; docs/alerts.md#numbers).
    max_batch: int = Field(10_000, ge=1)
    # Post alert changes to this Alertmanager (docs/alerts.md#notifications); None: do not.
    alertmanager: AlertmanagerSettings | None = None


def load_service_config(path: Path) -> ServiceConfig:
    """Read `alerts.yaml`; a relative `rules_file` is resolved against its folder."""
    config = load_model(path, ServiceConfig, "alert service file")
    if not config.rules_file.is_absolute():
        config = config.model_copy(update={"rules_file": path.parent / config.rules_file})
    return config
