"""The embedded MQTT broker (amqtt) that the gateway runs when no Mosquitto is configured.

`DurableBroker` is amqtt's broker with two changes: a PUBLISH on a connector's topics is
acknowledged only once the connector has it in Kafka or in the spool (see gateway.intake), and
a PUBLISH larger than `max_payload_bytes` closes its connection, as Mosquitto's
`max_packet_size` does.

What it overrides, and why: amqtt has no hook between reading a PUBLISH and acknowledging it,
and its reader is slow: an `await` per field read, a packet object, a task and a future per
PUBLISH, a write per PUBACK. With it the gateway spent 100-116 us of CPU per reading, four
fifths of it on the event loop (py-spy), about 9,000 readings/s per core. So, when connectors
run in-process, each connection's `ProtocolHandler._reader_loop` (amqtt 0.12's internals, hence
the upper version bound in pyproject.toml) is replaced by `_read_packets`: it reads up to 256
KiB at once and parses every complete packet in it; a QoS 0/1 PUBLISH on a connector's topic
that its sender may publish (the registry's topic ACL, checked per reading) is handed to the
intake right there, and its PUBACK is written when the connector acknowledges it (in a batch
per connection). While a connector is paused (or stopping), a connection's PUBLISH for it is
kept unacknowledged in the reader's buffer, and nothing after it is read, until the connector
takes readings again; while a connector has `intake.WAITING_MAX` readings not yet safe (a full
spool), the readers pause before their next read: the devices keep the rest (TCP backpressure;
before, amqtt took and held them all). Every other packet (CONNECT, SUBSCRIBE, PINGREQ,
DISCONNECT, PUBACKs of commands, PUBLISHes on other topics or at QoS 2, PUBLISHes amqtt
refuses) is decoded by amqtt's own packet classes and handled by amqtt's own handler methods,
in a task, as amqtt's loop does. Everything else is amqtt's own: authentication, sessions,
subscriptions, retained messages, last wills. A reading on a connector's topic is still
delivered to MQTT subscribers of that topic and retained if flagged (after the connector took
it). Not kept: amqtt's per-packet plugin events (`PACKET_RECEIVED`, `PACKET_SENT`) for the
readings taken and their PUBACKs; no plugin here listens to them.

Without connectors (`trackside broker run`) every connection keeps amqtt's own reader, with the
size check added to its `handle_publish`: a faster intake there would only let amqtt, which
acknowledges on receipt, take in more than its subscribers can keep up with (it drops a
delivery whose PUBACK takes over 5 s).

Two amqtt 0.12 bugs are mended here, for both: at each CONNECT amqtt sent the connecting client
the retained messages matching any topic filter any client had subscribed to (so a device got
another device's retained config, and the registry's read ACL was bypassed); it now gets only
those of its own subscriptions. And that loop over the subscription table awaited while other
connections subscribed, which ended the connecting client's session with "dictionary changed
size during iteration"; the table is now iterated over a copy of its keys.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from amqtt.adapters import BufferReader, StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.errors import MQTTError
from amqtt.events import MQTTEvents
from amqtt.mqtt import packet_class
from amqtt.mqtt.packet import (
    CONNACK,
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    RESERVED_0,
    RESERVED_15,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
    MQTTFixedHeader,
)
from amqtt.session import Session
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.broker_auth import current_registry
from gateway.intake import BrokerIntake, topic_matches

__all__ = [
    "BrokerSettings",
    "BrokerTls",
    "DurableBroker",
    "broker_config",
    "publish_check",
    "serve",
]

log = logging.getLogger(__name__)

MayPublish = Callable[[str | None, str], bool]  # account (None: anonymous), topic

_CHUNK = 256 * 1024  # read at once: every complete packet in it is handled in one pass
_TOPIC_MAX = 2 + 65535 + 2  # topic length, topic, packet id: a PUBLISH's most beside its payload
_ROUTES = 100_000  # topics remembered (one per device and kind of message)
_PUBACK = 0x40020000  # PUBACK, remaining length 2, packet id in the low 16 bits
# amqtt's handler method for each packet type it handles in a task (as its reader loop does)
_HANDLERS = {
    CONNACK: "handle_connack",
    SUBSCRIBE: "handle_subscribe",
    UNSUBSCRIBE: "handle_unsubscribe",
    SUBACK: "handle_suback",
    UNSUBACK: "handle_unsuback",
    PUBACK: "handle_puback",
    PUBREC: "handle_pubrec",
    PUBREL: "handle_pubrel",
    PUBCOMP: "handle_pubcomp",
    PINGREQ: "handle_pingreq",
    PINGRESP: "handle_pingresp",
    PUBLISH: "handle_publish",
    DISCONNECT: "handle_disconnect",
}


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
        plugins = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
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


class _Subscriptions(dict[str, list[tuple[Session, int]]]):
    """amqtt's subscription table (topic filter -> subscribers); iterating it walks a copy of
    its keys, as amqtt awaits inside such loops while other connections change the table."""

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.keys()))


class DurableBroker(Broker):  # type: ignore[misc]
    """amqtt's broker, with PUBLISHes on the intakes' topics acknowledged only when safe."""

    def __init__(
        self, settings: BrokerSettings, intakes: Iterable[BrokerIntake], may_publish: MayPublish
    ) -> None:
        super().__init__(broker_config(settings))
        self._subscriptions = _Subscriptions()
        self.intakes = tuple(intakes)
        self.may_publish = may_publish
        self.max_payload = settings.max_payload_bytes
        self._routes: dict[bytes, tuple[str, BrokerIntake] | None] = {}  # topic as sent -> ...
        self._sharing: set[asyncio.Task[None]] = set()  # readings on their way to subscribers
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

    def _route(self, raw_topic: bytes) -> tuple[str, BrokerIntake] | None:
        """The topic and its intake, for a valid topic name that an intake takes; cached by
        the topic's bytes, so a device's readings decode and match their topic once."""
        try:
            return self._routes[raw_topic]
        except KeyError:
            pass
        route = None
        try:
            topic = raw_topic.decode("utf-8")
        except UnicodeDecodeError:
            topic = ""  # amqtt refuses it as it always did
        if topic and "#" not in topic and "+" not in topic and "\x00" not in topic:
            intake = self.intake_for(topic)
            if intake is not None:
                route = (topic, intake)
        if len(self._routes) >= _ROUTES:
            self._routes.clear()
        self._routes[raw_topic] = route
        return route

    async def _handle_client_session(
        self, reader: Any, writer: Any, session: Session, handler: Any, *args: Any
    ) -> None:
        if self.intakes:
            handler._reader_loop = partial(self._read_packets, handler, session)
        else:  # `trackside broker run`: amqtt's reader, with the size check only
            amqtt_publish = handler.handle_publish

            async def handle_publish(packet: Any) -> None:
                if packet.data is not None and len(packet.data) > self.max_payload:
                    await self._refuse(handler, session, len(packet.data))
                else:
                    await amqtt_publish(packet)

            handler.handle_publish = handle_publish
        await super()._handle_client_session(reader, writer, session, handler, *args)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        """The retained messages of `subscription`, if it is the session's own: amqtt calls
        this at CONNECT for every topic filter of every client."""
        subscribers = self._subscriptions.get(subscription[0], ())
        if any(s.client_id == session.client_id for s, _ in subscribers):
            await super()._publish_retained_messages_for_subscription(subscription, session)

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

    async def _read_packets(self, handler: Any, session: Session) -> None:
        """amqtt's `ProtocolHandler._reader_loop` for one connection, reading whole chunks:
        PUBLISHes on an intake's topic are parsed here and handed over at once, in order; every
        other packet is decoded by amqtt's own classes and handled as amqtt does, in a task."""
        handler._reader_ready.set()
        reader, writer = handler.reader, handler.writer
        if not isinstance(reader, StreamReaderAdapter) or not isinstance(
            writer, StreamWriterAdapter
        ):  # only TCP and TLS listeners are configured; anything else would ack on receipt
            log.error("refused a connection on a listener that is not TCP: %r", reader)
            await self._reader_done(handler, deque())
            return
        stream: asyncio.StreamReader = reader._reader
        link = _Link(writer._writer)
        tasks: deque[asyncio.Task[None]] = deque()
        buffer: bytes | None = b""
        while buffer is not None:
            try:
                held, link.held = link.held, None
                if held is not None:  # its connector is paused: nothing more is read till then
                    await held.ready()
                for intake in self.intakes:
                    if intake.full:  # backpressure: see gateway.intake.WAITING_MAX
                        await intake.ready()
                if held is None:
                    chunk = await stream.read(_CHUNK)
                    if not chunk:
                        break  # EOF
                    buffer = buffer + chunk if buffer else chunk
                buffer = await self._packets(handler, session, link, tasks, buffer)
            except MQTTError:
                log.debug("message discarded")
                buffer = b""
            except asyncio.CancelledError:
                break
            except Exception as exc:  # noqa: BLE001 - as amqtt's reader: end the connection
                log.warning("unhandled exception in the reader of %r: %r", session.client_id, exc)
                break
        await self._reader_done(handler, tasks)

    async def _packets(
        self,
        handler: Any,
        session: Session,
        link: _Link,
        tasks: deque[asyncio.Task[None]],
        buffer: bytes,
    ) -> bytes | None:
        """Handle every complete packet in `buffer` up to one its connector cannot take now
        (`link.held` says which); the rest, or None when the connection is to close."""
        end, pos = len(buffer), 0
        while end - pos >= 2:
            first, length, start = buffer[pos], 0, pos + 1
            for shift in (0, 7, 14, 21):
                if start == end:
                    return buffer[pos:]  # the length is still on its way
                byte = buffer[start]
                start += 1
                length |= (byte & 0x7F) << shift
                if byte < 0x80:
                    break
            else:
                raise MQTTError("invalid remaining length")
            if start + length > end:  # the rest of the packet is still on its way
                if first >> 4 == PUBLISH and length > self.max_payload + _TOPIC_MAX:
                    await self._refuse(handler, session, length)
                    return None
                break
            if first >> 4 == PUBLISH:
                taken = self._publish(link, session, first, buffer, start, start + length)
                if taken is None:
                    await self._refuse(handler, session, length)
                    return None
                if link.held is not None:
                    break  # kept, unacknowledged, with everything after it
                if taken:
                    pos = start + length
                    continue
            pos = start + length
            while tasks and tasks[0].done():
                tasks.popleft()
            try:
                task = await self._amqtt_packet(handler, first, buffer[start:pos], length)
            except MQTTError:
                log.debug("message discarded")  # as amqtt's reader: the next packet follows
                continue
            if task is not None:
                tasks.append(task)
        return buffer[pos:] if pos else buffer

    def _publish(
        self, link: _Link, session: Session, first: int, buffer: bytes, start: int, end: int
    ) -> bool | None:
        """A PUBLISH on an intake's topic that its sender may publish: handed over (True), or
        held while its connector takes nothing (True, `link.held` set). False: amqtt handles it
        (other topics, QoS 2, refusals, malformed packets). None: its payload is over the
        limit, the connection is to close."""
        if end - start < 2:
            return False
        qos = (first >> 1) & 3
        topic_end = start + 2 + (buffer[start] << 8 | buffer[start + 1])
        payload_start = topic_end + 2 if qos else topic_end
        if payload_start > end:
            return False
        if end - payload_start > self.max_payload:
            return None
        route = self._route(buffer[start + 2 : topic_end])
        if route is None or qos == 2:
            return False
        topic, intake = route
        if not self.may_publish(session.username, topic):
            return False  # amqtt refuses it and logs so
        if not intake.taking:  # paused or stopping: held unacknowledged (`link.held`)
            link.held = intake
            return True
        payload = buffer[payload_start:end]
        if qos:
            intake.take(topic, payload, qos, link, buffer[topic_end] << 8 | buffer[topic_end + 1])
        else:
            intake.take(topic, payload, qos)
        if self._subscriptions or first & 1:  # MQTT subscribers of the topic get it too
            share = asyncio.create_task(self._share(session, topic, payload, qos, first & 1))
            self._sharing.add(share)
            share.add_done_callback(self._sharing.discard)
        return True

    async def _share(
        self, session: Session, topic: str, payload: bytes, qos: int, retain: int
    ) -> None:
        if self._subscriptions:
            await super()._broadcast_message(session, topic, payload)
        if retain:
            await self.retain_message(session, topic, payload, qos)

    async def _refuse(self, handler: Any, session: Session, size: int) -> None:
        log.warning(
            "refused a %d-byte PUBLISH from %r (broker.max_payload_bytes is %d): "
            "disconnecting it", size, session.username, self.max_payload,
        )  # fmt: skip
        await handler.handle_connection_closed()

    async def _amqtt_packet(
        self, handler: Any, first: int, body: bytes, length: int
    ) -> asyncio.Task[None] | None:
        """One packet the way amqtt's reader loop handles it."""
        kind = first >> 4
        if kind in (RESERVED_0, RESERVED_15):
            log.warning("%r sent a reserved packet type: closing", handler.session.client_id)
            await handler.handle_connection_closed()
            return None
        header = MQTTFixedHeader(kind, first & 0x0F, length)
        packet = await packet_class(header).from_stream(BufferReader(body), fixed_header=header)
        await self.plugins_manager.fire_event(
            MQTTEvents.PACKET_RECEIVED, packet=packet, session=handler.session
        )
        if kind == CONNECT:
            await handler.handle_connect(packet)
            return None
        method = _HANDLERS.get(kind)
        if method is None:
            return None
        return asyncio.create_task(getattr(handler, method)(packet))

    async def _reader_done(self, handler: Any, tasks: deque[asyncio.Task[None]]) -> None:
        """What amqtt's reader loop does when its connection ends."""
        while tasks:
            tasks.popleft().cancel()
        await handler.handle_connection_closed()
        handler._reader_stopped.set()
        await handler.stop()


class _Link:
    """One connection's PUBACKs (an `AckTarget`): a batch in one write. `held`: the intake of
    a PUBLISH kept unread while that intake takes nothing."""

    __slots__ = ("_stream", "held")

    def __init__(self, stream: asyncio.StreamWriter) -> None:
        self._stream = stream
        self.held: BrokerIntake | None = None

    def puback(self, packet_ids: list[int]) -> None:
        if not self._stream.is_closing():  # gone: the device sends those readings again
            pubacks = struct.pack(f">{len(packet_ids)}I", *(_PUBACK | i for i in packet_ids))
            self._stream.write(pubacks)


async def serve(settings: BrokerSettings) -> None:
    """Run the broker on its own until SIGTERM or SIGINT, then shut it down cleanly."""
    broker = DurableBroker(settings, (), publish_check(settings))
    await broker.start()
    log.info("embedded MQTT broker listening on %s:%d", settings.host, settings.port)
    log.warning(
        "this broker acknowledges a PUBLISH on receipt and keeps messages in memory only%s: for "
        "development; for the delivery guarantee run `trackside gateway run` (broker and "
        "connectors in one process) or Mosquitto",
        "" if settings.registry else ", and without a registry it keeps nothing for a client "
        "that is away",
    )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()
