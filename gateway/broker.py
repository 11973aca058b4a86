"""The embedded MQTT broker (amqtt) that the gateway runs when no Mosquitto is configured.

`DurableBroker` is amqtt's broker with two changes: a PUBLISH on a connector's topics is
acknowledged only once the connector has it in Kafka or in the spool (see gateway.intake), and
a PUBLISH larger than `max_payload_bytes` closes its connection, as Mosquitto's
`max_packet_size` does.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from amqtt.broker import Broker
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.publish import PublishPacket
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.broker_auth import current_registry
from gateway.intake import BrokerIntake, topic_matches

__all__ = [
    "BrokerSettings",
    "BrokerTls",
    "DurableBroker",
    "OpenAuthPlugin",
    "broker_config",
    "publish_check",
    "serve",
]

log = logging.getLogger(__name__)

MayPublish = Callable[[str | None, str], bool]  # account (None: anonymous), topic


class BrokerTls(BaseModel):
    """A TLS listener beside the plain one."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    port: int = Field(8883, ge=1, le=65535)
    cert_file: Path
    key_file: Path


class BrokerSettings(BaseModel):
    """Where the embedded broker listens and whom it admits."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    plain: bool = Field(
        True,
        description="Listen without TLS on `port`. Off, devices can only reach the TLS "
        "listener, so no password crosses the network readable.",
    )
    tls: BrokerTls | None = None
    registry: Path | None = Field(
        None, description="Device registry file; without it anyone may connect (development)."
    )
    max_payload_bytes: int = Field(
        256 * 1024,
        ge=64,
        le=900_000,
        description="A larger PUBLISH closes its connection. The default is far below Kafka's "
        "message.max.bytes (1 MB), so every accepted message, even a dead letter with its "
        "headers, fits in one Kafka record.",
    )

    @model_validator(mode="after")
    def _some_listener(self) -> BrokerSettings:
        if not self.plain and self.tls is None:
            raise ValueError(
                "plain is false and tls is not set: the broker would listen nowhere; set "
                "tls (cert_file, key_file from `trackside gateway certs`) or plain: true"
            )
        return self


class OpenAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """Admit everyone (no registry: development), without amqtt's "anonymous" mark, under
    which it keeps no messages for a persistent session while its client is away."""

    async def authenticate(self, *, session: Session) -> bool:
        """Always True."""
        return True


def broker_config(settings: BrokerSettings) -> dict[str, Any]:
    """amqtt's configuration: listeners, and the registry's password and topic checks."""
    # amqtt requires a listener named "default" and binds it to 0.0.0.0:1883 unless told
    # otherwise: with the plain listener off it stays, unbound.
    plain = f"{settings.host}:{settings.port}" if settings.plain else None
    listeners: dict[str, Any] = {"default": {"type": "tcp", "bind": plain}}
    if settings.tls:
        listeners["tls"] = {
            "type": "tcp",
            "bind": f"{settings.host}:{settings.tls.port}",
            "ssl": True,
            "certfile": str(settings.tls.cert_file),
            "keyfile": str(settings.tls.key_file),
        }
    plugins: dict[str, Any]
    if settings.registry is None:
        plugins = {"gateway.broker.OpenAuthPlugin": {}}
    else:
        registry = {"registry": str(settings.registry)}
        plugins = {
            "gateway.broker_auth.RegistryAuthPlugin": registry,
            "gateway.broker_auth.RegistryTopicPlugin": registry,
        }
    return {"listeners": listeners, "plugins": plugins}


def publish_check(settings: BrokerSettings) -> MayPublish:
    """Whether an account may publish on a topic: the registry's rule, or yes without one."""
    if settings.registry is None:
        return lambda _account, _topic: True
    path = str(settings.registry)

    def may_publish(account: str | None, topic: str) -> bool:
        entry = current_registry(path).accounts.get(account or "")
        return entry is not None and entry.may("write", topic)

    return may_publish


class DurableBroker(Broker):  # type: ignore[misc]
    """amqtt's broker, with PUBLISHes on the intakes' topics acknowledged only when safe."""

    def __init__(
        self, settings: BrokerSettings, intakes: Iterable[BrokerIntake], may_publish: MayPublish
    ) -> None:
        super().__init__(broker_config(settings))
        self.intakes = tuple(intakes)
        self.may_publish = may_publish
        self.max_payload = settings.max_payload_bytes
        loop = asyncio.get_running_loop()  # made in the loop it will serve
        for intake in self.intakes:
            intake.bind(self, loop)

    def intake_for(self, topic: str) -> BrokerIntake | None:
        """The intake whose topics match `topic`, if any."""
        for intake in self.intakes:
            for topic_filter in intake.topics:
                if topic_matches(topic_filter, topic):
                    return intake
        return None

    async def _handle_client_session(
        self, reader: Any, writer: Any, session: Session, handler: Any, *args: Any
    ) -> None:
        amqtt_publish = handler.handle_publish

        async def handle_publish(packet: PublishPacket) -> None:
            if not await self._take(handler, session, packet):
                await amqtt_publish(packet)

        handler.handle_publish = handle_publish
        await super()._handle_client_session(reader, writer, session, handler, *args)

    async def _broadcast_message(
        self, session: Session | None, topic: str | None, data: Any, force_qos: int | None = None
    ) -> None:
        """What amqtt broadcasts itself on an intake's topic (a device's last will) goes to
        the connector too, if the device may publish there."""
        intake = self.intake_for(topic) if topic and data is not None else None
        if intake is not None and intake.taking and topic is not None:
            username = session.username if session is not None else None
            if session is None or self.may_publish(username, topic):
                intake.take(topic, bytes(data), 0)
        await super()._broadcast_message(session, topic, data, force_qos)

    async def _take(self, handler: Any, session: Session, packet: PublishPacket) -> bool:
        """Hand a reading to its connector and PUBACK once it is safe; False: not ours, amqtt
        handles it as usual (including refusals, which it logs)."""
        topic, data, qos = packet.topic_name, packet.data, packet.qos
        if data is not None and len(data) > self.max_payload:
            log.warning(
                "refused a %d-byte message on %r from %r (broker.max_payload_bytes is %d): "
                "disconnecting it", len(data), topic, session.username, self.max_payload,
            )  # fmt: skip
            await handler.handle_connection_closed()
            return True
        if not topic or data is None or qos == 2 or "#" in topic or "+" in topic:
            return False
        intake = self.intake_for(topic)
        if intake is None or not self.may_publish(session.username, topic):
            return False
        if not intake.taking:
            return True  # stopping: no PUBACK, the device sends it again later
        mid = intake.take(topic, bytes(data), qos)
        if self._subscriptions:  # MQTT subscribers of the topic get it too
            await super()._broadcast_message(session, topic, data)
        if packet.retain_flag:
            await self.retain_message(session, topic, data, qos)
        if mid:
            try:
                await intake.safe(mid)
            finally:
                intake.forget(mid)
            await handler._send_packet(PubackPacket.build(packet.packet_id))
        return True


async def serve(settings: BrokerSettings) -> None:
    """Run the broker on its own until SIGTERM or SIGINT, then shut it down cleanly."""
    broker = DurableBroker(settings, (), publish_check(settings))
    await broker.start()
    log.info("embedded MQTT broker listening on %s:%d", settings.host, settings.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()
