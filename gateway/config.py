"""The gateway's one configuration file: broker, connectors, HTTP control; validated once."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from bridge.config import (
    CommandsConfig,
    ConfigError,
    ConnectorConfig,
    KafkaTarget,
    MqttSource,
    SpoolConfig,
    TransformConfig,
    checked,
    load_yaml_model,
)
from gateway.alertmanager import DEFAULT_NOTIFICATIONS, DEFAULT_PORT
from gateway.alerts.config import ServiceConfig
from gateway.broker import BrokerSettings
from gateway.dashboard.config import DashboardConfig
from gateway.devices_config import ConfigSettings
from gateway.ota.config import OtaSettings

__all__ = [
    "AlertmanagerRun",
    "EmbeddedBroker",
    "GatewayConfig",
    "HttpSettings",
    "default_connectors",
    "load_gateway_config",
]


class EmbeddedBroker(BrokerSettings):
    """The embedded amqtt broker; `enabled: false` when the connectors use Mosquitto instead."""

    enabled: bool = True


class HttpSettings(BaseModel):
    """Health, status, pause/resume and Prometheus metrics over HTTP."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(8081, ge=0, le=65535)
    token: SecretStr | None = Field(
        None, description="Bearer token required by pause/resume; reads are open."
    )


class AlertmanagerRun(BaseModel):
    """Debian's Alertmanager, run by the gateway for the alert service's notifications."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    port: int = Field(DEFAULT_PORT, ge=1, le=65535, description="on 127.0.0.1")
    notifications: Path = Field(
        DEFAULT_NOTIFICATIONS, description="the notification file alertmanager.yml is made from"
    )
    state_dir: Path = Field(
        Path("alertmanager"), description="silences and notification log, kept across restarts"
    )

    @property
    def url(self) -> str:
        """Its web API, for the alert service and the dashboard's maintenance windows."""
        return f"http://127.0.0.1:{self.port}"


def default_connectors(bootstrap_servers: str = "127.0.0.1:9092") -> tuple[ConnectorConfig, ...]:
    """Telemetry (with the command path back to the devices) and device status."""
    return (
        ConnectorConfig(
            name="telemetry",
            kafka=KafkaTarget(bootstrap_servers=bootstrap_servers),
            commands=CommandsConfig(),
            spool=SpoolConfig(path=Path("spool/telemetry")),
        ),
        ConnectorConfig(
            name="device-status",
            mqtt=MqttSource(
                client_id="trackside-bridge-status",
                topics=("trackside/v1/+/+/status",),
                topic_pattern="trackside/v1/{train_id}/{device_id}/status",
            ),
            kafka=KafkaTarget(
                bootstrap_servers=bootstrap_servers,
                topic="trackside.device-status",
                key="{train_id}/{device_id}",
            ),
            transforms=(TransformConfig(type="headers"),),
            converter="raw",
            spool=SpoolConfig(path=Path("spool/device-status")),
        ),
    )


class GatewayConfig(BaseModel):
    """`gateway.yaml`: what `trackside gateway run` starts."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    broker: EmbeddedBroker = EmbeddedBroker()
    connectors: tuple[ConnectorConfig, ...] = default_connectors()
    http: HttpSettings = HttpSettings()
    alerts: ServiceConfig | None = Field(None, description="Run the alert service here too.")
    dashboard: DashboardConfig | None = Field(None, description="Serve the dashboard here too.")
    alertmanager: AlertmanagerRun | None = Field(
        None, description="Run Alertmanager here too; the alert service posts to it."
    )
    ota: OtaSettings | None = Field(
        None, description="Carry out staged OTA rollouts for this gateway's devices."
    )
    device_config: ConfigSettings = ConfigSettings()


def load_gateway_config(path: Path) -> GatewayConfig:
    """Read `gateway.yaml`; relative paths (registry, certificates, spools) are taken from it."""
    config = load_yaml_model(path, GatewayConfig)
    connectors = tuple(
        checked(path, connector, f"connectors.{i}.")
        for i, connector in enumerate(config.connectors)
    )
    names = [c.name for c in connectors]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: connectors: names must be unique, got {names}")
    folder = path.parent
    broker = _from_folder(config.broker, folder, "registry")
    if broker.tls is not None:
        broker = broker.model_copy(
            update={"tls": _from_folder(broker.tls, folder, "cert_file", "key_file")}
        )
    dashboard = config.dashboard
    if dashboard is not None:
        dashboard = _from_folder(dashboard, folder, "users_file", "rules_file")
        if dashboard.tls is not None:
            tls = _from_folder(dashboard.tls, folder, "cert_file", "key_file")
            dashboard = dashboard.model_copy(update={"tls": tls})
    alerts, alertmanager, ota = config.alerts, config.alertmanager, config.ota
    return config.model_copy(
        update={
            "connectors": connectors,
            "broker": broker,
            "alerts": alerts and _from_folder(alerts, folder, "rules_file"),
            "dashboard": dashboard,
            "alertmanager": alertmanager
            and _from_folder(alertmanager, folder, "notifications", "state_dir"),
            "ota": ota and _from_folder(ota, folder, "public_key"),
        }
    )


_M = TypeVar("_M", bound=BaseModel)


def _from_folder(model: _M, folder: Path, *fields: str) -> _M:
    """`model` with its path `fields` taken from `folder` when relative (absolute ones and
    None stay as they are, and count as not set if they were not)."""
    updates = {
        name: folder / value
        for name in fields
        if (value := getattr(model, name)) is not None and not value.is_absolute()
    }
    return model.model_copy(update=updates) if updates else model
