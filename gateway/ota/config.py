"""gateway.yaml's `ota:` section: this gateway executes staged rollouts for its own devices."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from gateway.topics import Topics

__all__ = ["OtaSettings"]


class OtaSettings(BaseModel):
    """Where the rollouts are (Kafka), how to reach this gateway's devices (its MQTT broker),
    and the key every release must be signed with."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    bootstrap_servers: str = "127.0.0.1:9092"
    kafka_settings: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="librdkafka settings, passed on untouched"
    )
    topics: Topics = Topics()
    replication_factor: int = Field(
        1, ge=1, description="copies of the OTA topics when the gateway creates them (3 on a "
        "cluster of three)"
    )
    public_key: Path = Field(
        Path("release.pub"), description="the fleet's public release key (hex), as devices have it"
    )
    gateway_id: str = Field(
        default_factory=socket.gethostname, description="names this gateway in progress records"
    )
    # The broker the devices are on: the embedded broker's address unless given.
    mqtt_host: str | None = None
    mqtt_port: int | None = Field(None, ge=1, le=65535)
    mqtt_user: str | None = Field(None, description="a service account of the device registry")
    mqtt_password: SecretStr | None = None
    retry_s: float = Field(10.0, gt=0, description="offer again after this long without a word")
    discovery_s: float = Field(
        3.0, ge=0, description="how long the retained statuses are gathered before a rollout "
        "starts here: the devices seen by then are this gateway's targets"
    )
