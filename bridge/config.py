"""Connector configuration: YAML, validated once, frozen; errors name the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from bridge import BridgeError
from bridge.converters import CONVERTERS
from bridge.transforms import TRANSFORMS

__all__ = [
    "CommandsConfig",
    "ConfigError",
    "ConnectorConfig",
    "ErrorsConfig",
    "KafkaTarget",
    "MqttSource",
    "SpoolConfig",
    "TlsConfig",
    "TransformConfig",
    "checked",
    "load_config",
    "load_yaml_model",
    "read_yaml_mapping",
]

M = TypeVar("M", bound=BaseModel)


class ConfigError(BridgeError):
    """The connector configuration is invalid; the message names the file and the key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TlsConfig(_Frozen):
    """TLS towards the MQTT broker."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False


class MqttSource(_Frozen):
    """Where readings come from."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str = "trackside-bridge"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = Field(
        None,
        description="File holding the password (as `trackside devices add-service "
        "--password-file` writes it); read when the config is loaded, instead of `password`.",
    )
    tls: TlsConfig | None = None
    topics: tuple[str, ...] = ("trackside/v1/+/+/telemetry",)
    topic_pattern: str = "trackside/v1/{train_id}/{device_id}/telemetry"
    qos: Literal[0, 1] = 1
    persistent_session: bool = True
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0)
    shared_group: str | None = None
    keepalive_s: int = Field(30, ge=5)
    receive_maximum: int = Field(10000, ge=1, le=65535)

    @model_validator(mode="after")
    def _one_password(self) -> MqttSource:
        if self.password is not None and self.password_file is not None:
            raise ValueError(
                "password and password_file are both set: keep one (password_file keeps the "
                "secret out of this file)"
            )
        return self


class KafkaTarget(_Frozen):
    """Where readings go. `settings` is passed to librdkafka untouched."""

    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "trackside.telemetry"
    key: str = "{train_id}"
    # For the topic and the dead-letter topic, when the connector creates them (bridge.topics).
    partitions: int = Field(1, ge=1)
    replication_factor: int = Field(1, ge=1)
    min_insync_replicas: int | None = Field(
        None, ge=1, description="Default: replication_factor - 1, at least 1."
    )
    settings: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _writable(self) -> KafkaTarget:
        if self.min_insync_replicas is not None and (
            self.min_insync_replicas > self.replication_factor
        ):
            raise ValueError(
                f"min_insync_replicas {self.min_insync_replicas} is more than "
                f"replication_factor {self.replication_factor}: Kafka would refuse every "
                "acks=all write; lower it or raise replication_factor"
            )
        return self


class TransformConfig(_Frozen):
    """One step of the transform chain, chosen by `type` from bridge.transforms.TRANSFORMS."""

    model_config = ConfigDict(frozen=True, extra="allow")
    type: str


class ErrorsConfig(_Frozen):
    """Kafka Connect's error handling: `tolerance: all` routes bad records to the DLQ."""

    tolerance: Literal["none", "all"] = "all"
    deadletterqueue_topic_name: str | None = "trackside.dead-letter"
    deadletterqueue_context_headers_enable: bool = True


class SpoolConfig(_Frozen):
    """The durable local spool used while Kafka is unreachable or slow."""

    path: Path = Path("spool")
    max_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    segment_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    delivery_timeout_ms: int = Field(10_000, ge=100)


class CommandsConfig(_Frozen):
    """Reverse direction: a Kafka command topic to the devices' MQTT command topics."""

    topic: str = "trackside.commands"
    group_id: str = "trackside-bridge-commands"


class ConnectorConfig(_Frozen):
    """One connector: an MQTT source, a transform chain, a converter and a Kafka target."""

    name: str = "telemetry"
    mqtt: MqttSource = MqttSource()
    kafka: KafkaTarget = KafkaTarget()
    transforms: tuple[TransformConfig, ...] = (
        TransformConfig(type="decode_wire"),
        TransformConfig(type="headers"),
    )
    converter: str = "json"
    errors: ErrorsConfig = ErrorsConfig()
    spool: SpoolConfig = SpoolConfig()
    commands: CommandsConfig | None = None


def read_yaml_mapping(
    path: Path, error: type[Exception] = ConfigError, what: str = "file"
) -> dict[str, Any]:
    """The YAML mapping in `path`; anything else raises `error` naming the file."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise error(f"{path}: cannot read the {what}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise error(f"{path}: the top level must be a mapping of keys to values")
    return raw


def load_yaml_model(
    path: Path,
    model: type[M],
    overrides: dict[str, Any] | None = None,
    error: type[Exception] = ConfigError,
    what: str = "file",
) -> M:
    """Read a YAML file into a frozen model; any problem raises `error` naming the file and
    the key."""
    raw = read_yaml_mapping(path, error, what)
    for key, value in (overrides or {}).items():
        raw[key] = {**raw.get(key, {}), **value}
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise error(f"{path}: {problems}") from exc


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> ConnectorConfig:
    """Read and validate a connector file; relative spool paths are resolved against it."""
    return checked(path, load_yaml_model(path, ConnectorConfig, overrides))


def checked(path: Path, config: ConnectorConfig, key: str = "") -> ConnectorConfig:
    """Check transform and converter names; read `mqtt.password_file`; resolve a relative
    spool path against `path`."""
    _check_names(path, config, key)
    config = _read_password_file(path, config, key)
    if not config.spool.path.is_absolute():
        spool = config.spool.model_copy(update={"path": path.parent / config.spool.path})
        config = config.model_copy(update={"spool": spool})
    return config


def _read_password_file(path: Path, config: ConnectorConfig, key: str) -> ConnectorConfig:
    """`mqtt.password` from `mqtt.password_file` (relative to `path`), read once, here."""
    password_file = config.mqtt.password_file
    if password_file is None:
        return config
    if not password_file.is_absolute():
        password_file = path.parent / password_file
    where = f"{path}: {key}mqtt.password_file"
    try:
        text = password_file.read_text()
    except OSError as exc:
        raise ConfigError(
            f"{where}: cannot read {password_file}: {exc.strerror}; check the path and that "
            "this user may read it"
        ) from exc
    password = text.rstrip("\r\n")
    if not password:
        raise ConfigError(
            f"{where}: {password_file} is empty; write the account's password into it "
            "(`trackside devices add-service NAME --password-file FILE`)"
        )
    mqtt = config.mqtt.model_copy(
        update={"password": SecretStr(password), "password_file": password_file}
    )
    return config.model_copy(update={"mqtt": mqtt})


def _check_names(path: Path, config: ConnectorConfig, key: str) -> None:
    if config.converter not in CONVERTERS:
        raise ConfigError(
            f"{path}: {key}converter: unknown converter {config.converter!r}; "
            f"choose one of {', '.join(sorted(CONVERTERS))}"
        )
    for i, step in enumerate(config.transforms):
        if step.type not in TRANSFORMS:
            raise ConfigError(
                f"{path}: {key}transforms.{i}.type: unknown transform {step.type!r}; "
                f"choose one of {', '.join(sorted(TRANSFORMS))}"
            )
