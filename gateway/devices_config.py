"""Device twins: the desired config of each device, what the device reports, and the drift.

The desired config lives in Kafka, in the compacted topic `trackside.device-config`, keyed
`{train_id}/{device_id}`, value `{"version": n, "config": {"sample_ms": ..., "enable": {...}}}`
(`trackside devices configure` writes it, from any machine that reaches Kafka). The gateway's
`ConfigPublisher` reads that topic and the device statuses: it publishes each desired config,
with its version, retained on the device's `.../config` topic, and publishes it again when a
device reports (`cfg` in its status) an older version while online: its broker lost the
retained message, or the device came back with a config it had from before. Drift (desired
version != reported version) is the gauge `trackside_devices_config_drift` and shows per device
on the dashboard's inventory (docs/dashboard.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import Gauge
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bridge.config import MqttSource
from bridge.record import id_problem
from bridge.topics import TopicError, create_missing, new_topic
from firmware import wire
from gateway import GatewayError
from gateway.topics import Topics

__all__ = [
    "CONFIG_DRIFT",
    "ConfigPublisher",
    "ConfigSettings",
    "DesiredConfig",
    "DeviceConfig",
    "EmbeddedRetainer",
    "MqttRetainer",
    "Retainer",
    "Twins",
    "config_topic",
    "drifts",
    "parse_desired",
    "read_desired",
    "twin_key",
    "write_desired",
]

log = logging.getLogger(__name__)

CONFIG_DRIFT = Gauge(
    "trackside_devices_config_drift",
    "Devices whose reported config version differs from the desired one",
)
ONLINE = frozenset({"online", "disabled"})  # statuses of a device that reads its config topic
MAX_VERSION = 2**30 - 1  # a small int on a 32-bit MicroPython port: no heap for the number


class DeviceConfig(BaseModel):
    """What the firmware's `App.configure` accepts (firmware/app.py); checked the same way."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    sample_ms: int = Field(1000, ge=100, le=3_600_000, description="reading period, ms")
    enable: dict[str, bool] = Field(
        default_factory=dict, description="channel name -> false to stop reading it"
    )

    @field_validator("enable")
    @classmethod
    def _known_channels(cls, enable: dict[str, bool]) -> dict[str, bool]:
        unknown = sorted(set(enable) - set(wire.CHANNEL_IDS))
        if unknown:
            raise ValueError(
                f"unknown channel {', '.join(unknown)}: expected one of "
                f"{', '.join(wire.CHANNEL_IDS)}"
            )
        return enable


class DesiredConfig(BaseModel):
    """One record of the device-config topic: a config and its version."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    version: int = Field(ge=1, le=MAX_VERSION)
    config: DeviceConfig

    def mqtt_payload(self) -> bytes:
        """The retained message on `.../config`: the whole config (the device takes partial
        ones too, but a whole one makes the version mean the same on every device)."""
        return json.dumps({"version": self.version, **self.config.model_dump()}).encode()


def twin_key(train_id: str, device_id: int) -> str:
    """The Kafka key of a device's desired config (and of its status): `{train}/{device}`;
    GatewayError when either breaks its id rule (docs/architecture.md)."""
    for name, value in (("train_id", train_id), ("device_id", str(device_id))):
        problem = id_problem(name, value)
        if problem is not None:
            raise GatewayError(problem)
    return f"{train_id}/{device_id}"


def config_topic(key: str) -> str:
    """The device's retained config topic for a twin key."""
    return f"trackside/v1/{key}/config"


def parse_desired(value: bytes | None) -> DesiredConfig | None:
    """A desired-config record's value; None for a tombstone. ValueError says what is wrong."""
    if value is None:
        return None
    try:
        return DesiredConfig.model_validate_json(value)
    except ValidationError as exc:
        raise ValueError(str(exc)) from exc


def drifts(desired: int | None, reported: int | None) -> bool:
    """Whether a device runs another config version than the desired one (none desired: no
    drift; a device that reported no version yet, e.g. older firmware, drifts)."""
    return desired is not None and reported != desired


@dataclass
class _Twin:
    desired: DesiredConfig | None = None
    reported: int | None = None
    state: str | None = None
    sent_at: float = float("-inf")  # monotonic time of the last retained publish


class Twins:
    """The desired and the reported version of every device, and when to publish."""

    def __init__(self, resend_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.resend_s = resend_s
        self._clock = clock
        self._twins: dict[str, _Twin] = {}

    def desire(self, key: str, desired: DesiredConfig | None) -> bool:
        """A desired-config record; True when it is to be published (a new version)."""
        twin = self._twins.setdefault(key, _Twin())
        new = desired is not None and (twin.desired is None or twin.desired != desired)
        twin.desired = desired
        if new:
            twin.sent_at = self._clock()
        return new

    def report(self, key: str, status: dict[str, Any] | None) -> bool:
        """A status record; True when the desired config is to be published again: the device
        is online with an older version and nothing was sent to it for `resend_s`. (Right after
        a connect a device reports the version it booted with, 0, until the retained config
        reaches it a moment later: the wait keeps that from sending it twice.)"""
        twin = self._twins.setdefault(key, _Twin())
        status = status or {}
        reported = status.get("cfg")
        twin.reported = reported if isinstance(reported, int) else None
        twin.state = status.get("state") if isinstance(status.get("state"), str) else None
        desired = twin.desired.version if twin.desired else None
        now = self._clock()
        if (twin.state in ONLINE and drifts(desired, twin.reported)
                and now - twin.sent_at >= self.resend_s):
            twin.sent_at = now
            return True
        return False

    def desired(self, key: str) -> DesiredConfig | None:
        """The desired config of a device, if any."""
        twin = self._twins.get(key)
        return twin.desired if twin else None

    def drifting(self) -> list[str]:
        """Keys of the devices whose reported version is not the desired one."""
        return sorted(
            key for key, twin in self._twins.items()
            if drifts(twin.desired.version if twin.desired else None, twin.reported)
        )


class Retainer(Protocol):
    """Publishes a retained message at QoS 1 on the gateway's broker, acknowledged."""

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish and wait; GatewayError when the broker did not take it."""


class EmbeddedRetainer:
    """The embedded broker, in-process: the message is retained and delivered at once."""

    def __init__(self, broker: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.broker = broker
        self.loop = loop

    async def _publish(self, topic: str, payload: bytes) -> None:
        await self.broker.retain_message(None, topic, payload, 1)
        await self.broker.internal_message_broadcast(topic, payload, 1)

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish from the publisher's thread on the broker's event loop."""
        try:
            asyncio.run_coroutine_threadsafe(self._publish(topic, payload), self.loop).result(10)
        except (TimeoutError, RuntimeError) as exc:
            raise GatewayError(f"the embedded broker did not take {topic}: {exc!r}") from exc


class MqttRetainer:
    """Another broker (Mosquitto), as the command connector reaches it: its host, port,
    account and TLS settings, under its client id with `-config` appended."""

    def __init__(self, source: MqttSource) -> None:
        self.source = source
        self._client: mqtt.Client | None = None

    def _connect(self) -> mqtt.Client:
        source = self.source
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{source.client_id}-config")
        if source.username is not None:
            password = source.password.get_secret_value() if source.password else None
            if source.password_file is not None:
                password = source.password_file.read_text().strip()
            client.username_pw_set(source.username, password)
        if source.tls is not None:
            tls = source.tls
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
            )
            client.tls_insecure_set(tls.insecure)
        try:
            client.connect(source.host, source.port, source.keepalive_s)
        except OSError as exc:
            raise GatewayError(
                f"cannot reach the MQTT broker at {source.host}:{source.port} to publish "
                f"device configs: {exc}"
            ) from exc
        client.loop_start()
        return client

    def publish(self, topic: str, payload: bytes) -> None:
        """Connect when needed, publish retained at QoS 1, wait for the PUBACK."""
        if self._client is None:
            self._client = self._connect()
        info = self._client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(10)
        if not info.is_published():
            self.close()
            raise GatewayError(f"the MQTT broker did not acknowledge {topic} within 10 s")

    def close(self) -> None:
        """Disconnect."""
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
            self._client = None


class ConfigSettings(BaseModel):
    """`device_config` in gateway.yaml: the worker that carries desired configs to devices.
    It runs where a connector has the command path (`commands`), with its Kafka settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    enabled: bool = True
    topic: str = Topics().device_config
    status_topic: str = Topics().device_status
    resend_s: float = Field(30.0, gt=0, description="least time between two sends to a device")


class ConfigPublisher:
    """Reads desired configs and statuses from the beginning (every gateway reads all of
    them: a unique group id, nothing committed) and publishes configs retained."""

    def __init__(
        self,
        settings: ConfigSettings,
        bootstrap_servers: str,
        retainer: Retainer,
        kafka_settings: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.retainer = retainer
        self._clock = clock
        self.twins = Twins(settings.resend_s, clock)
        self.published = 0
        self._kafka = {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"trackside-device-config-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "topic.metadata.refresh.interval.ms": 5000,
            "log_level": 2,
            **(kafka_settings or {}),
        }

    def run(self, stop: threading.Event) -> None:
        """The worker (gateway.supervise): until `stop`, apply each record as it comes. Each
        run starts afresh from the beginning of both topics, so that a config whose publish
        failed (the run ended by it) is published by the next."""
        self.twins = Twins(self.settings.resend_s, self._clock)
        try:
            consumer = Consumer(self._kafka)
        except KafkaException as exc:
            raise GatewayError(f"device config: librdkafka refused the settings: {exc}") from exc
        consumer.subscribe([self.settings.topic, self.settings.status_topic])
        try:
            while not stop.is_set():
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                error = msg.error()
                if error is not None:
                    if error.fatal():
                        raise GatewayError(f"device config: Kafka failed: {error.str()}")
                    continue  # librdkafka retries by itself (Kafka away, topic not there yet)
                self.apply(msg.topic() or "", msg.key(), msg.value())
        finally:
            consumer.close()
            if isinstance(self.retainer, MqttRetainer):
                self.retainer.close()

    def apply(self, topic: str, key_bytes: bytes | None, value: bytes | None) -> None:
        """One record of either topic: publish what is to be published."""
        if key_bytes is None:
            return
        key = key_bytes.decode(errors="replace")
        try:
            if topic == self.settings.topic:
                send = self.twins.desire(key, parse_desired(value))
            else:
                status = json.loads(value) if value else None
                if status is not None and not isinstance(status, dict):
                    raise ValueError("a status is a JSON object")
                send = self.twins.report(key, status)
        except (ValueError, RecursionError) as exc:  # also JSONDecodeError, bad UTF-8
            log.warning("device config: skipped a record of %s for %s: %s", topic, key, exc)
            return
        desired = self.twins.desired(key)
        if send and desired is not None:
            self.retainer.publish(config_topic(key), desired.mqtt_payload())
            self.published += 1
        CONFIG_DRIFT.set(len(self.twins.drifting()))


def write_desired(
    bootstrap_servers: str, topic: str, key: str, desired: DesiredConfig,
    settings: dict[str, Any] | None = None,
) -> None:
    """Produce one desired config and wait for Kafka's acknowledgement; the topic is created
    compacted (one partition) if Kafka lacks it."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0,
                         **(settings or {})})
    try:
        existing = admin.list_topics(timeout=30).topics
        create_missing(admin, [new_topic(topic, 1, 1, 1, {"cleanup.policy": "compact"})],
                       existing, 30)
    except KafkaException as exc:
        raise GatewayError(
            f"cannot list the topics of {bootstrap_servers}: {exc}; check that Kafka runs there"
        ) from exc
    except TopicError as exc:
        raise GatewayError(str(exc)) from exc
    producer = Producer({"bootstrap.servers": bootstrap_servers, "acks": "all",
                         "enable.idempotence": True, **(settings or {})})
    errors: list[KafkaError] = []
    producer.produce(topic, key=key.encode(), value=json.dumps(desired.model_dump()).encode(),
                     on_delivery=lambda err, _msg: errors.append(err) if err else None)
    if producer.flush(30) or errors:
        reason = errors[0].str() if errors else "no acknowledgement within 30 s"
        raise GatewayError(f"Kafka at {bootstrap_servers} did not take the config: {reason}")


def read_desired(
    bootstrap_servers: str, topic: str, key: str, settings: dict[str, Any] | None = None,
    timeout_s: float = 30.0,
) -> DesiredConfig | None:
    """The newest desired config of `key` (None if the topic has none), read to the end of
    the topic: the next version follows from it."""
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": "unused",
                         "enable.auto.commit": False, **(settings or {})})
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return None  # no desired config anywhere yet
        partitions = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions]
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=timeout_s)[1]
                for p in partitions}
        consumer.assign([p for p in partitions if ends[p.partition] > 0])
        found: DesiredConfig | None = None
        done = {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + timeout_s
        while len(done) < len(ends):
            if time.monotonic() > deadline:
                raise GatewayError(f"could not read {topic} to its end within {timeout_s:.0f} s")
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            if msg.key() == key.encode():
                try:
                    found = parse_desired(msg.value())
                except ValueError:
                    log.warning("skipped an invalid desired config of %s in %s", key, topic)
            partition, offset = msg.partition() or 0, msg.offset() or 0
            if offset + 1 >= ends[partition]:
                done.add(partition)
        return found
    except KafkaException as exc:
        raise GatewayError(
            f"cannot read {topic} at {bootstrap_servers}: {exc}; check that Kafka runs there"
        ) from exc
    finally:
        consumer.close()
