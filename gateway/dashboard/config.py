"""The dashboard's settings, validated once at start and frozen."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr

from gateway.alerts.config import DEFAULT_RULES
from gateway.topics import Topics

__all__ = ["DashboardConfig"]


class DashboardConfig(BaseModel):
    """Where to read from, where to listen, and the token that operator actions need."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field(min_length=1)
    token: SecretStr
    topics: Topics = Topics()
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # Values kept per channel and train for the sparklines (memory stays bounded).
    history: int = Field(120, ge=2, le=10_000)
    # Telemetry records read back per partition at start, to fill the sparklines.
    telemetry_backlog: int = Field(5000, ge=0)
    # librdkafka settings passed through untouched to the consumer and the producer.
    kafka_settings: dict[str, str] = Field(default_factory=dict)
    # The alert service's rule file: its levels are drawn on the charts (`GET /api/rules`).
    rules_file: Path = DEFAULT_RULES
    # Alertmanager, for maintenance windows (silences); None hides them.
    alertmanager_url: HttpUrl | None = None
