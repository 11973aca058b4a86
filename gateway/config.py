"""The gateway's one configuration file: broker, connectors, HTTP control; validated once."""

from __future__ import annotations

from pathlib import Path

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
    broker = config.broker
    updates: dict[str, object] = {}
    if broker.registry is not None and not broker.registry.is_absolute():
        updates["registry"] = path.parent / broker.registry
    if broker.tls is not None:
        updates["tls"] = broker.tls.model_copy(
            update={
                "cert_file": path.parent / broker.tls.cert_file,
                "key_file": path.parent / broker.tls.key_file,
            }
        )
    alerts = config.alerts
    if alerts is not None and not alerts.rules_file.is_absolute():
        alerts = alerts.model_copy(update={"rules_file": path.parent / alerts.rules_file})
    dashboard = config.dashboard
    if dashboard is not None:
        dashboard = dashboard.model_copy(update=_dashboard_paths(path, dashboard))
    alertmanager = config.alertmanager
    if alertmanager is not None:
        alertmanager = alertmanager.model_copy(
            update={
                "notifications": path.parent / alertmanager.notifications,
                "state_dir": path.parent / alertmanager.state_dir,
            }
        )
    return config.model_copy(
        update={
            "connectors": connectors,
            "broker": broker.model_copy(update=updates),
            "alerts": alerts,
            "dashboard": dashboard,
            "alertmanager": alertmanager,
        }
    )


def _dashboard_paths(path: Path, dashboard: DashboardConfig) -> dict[str, object]:
    """The dashboard's users file and TLS files, taken from `path`'s folder when relative."""
    updates: dict[str, object] = {}
    if dashboard.users_file is not None:
        updates["users_file"] = path.parent / dashboard.users_file
    if dashboard.tls is not None:
        updates["tls"] = dashboard.tls.model_copy(
            update={
                "cert_file": path.parent / dashboard.tls.cert_file,
                "key_file": path.parent / dashboard.tls.key_file,
            }
        )
    return updates
