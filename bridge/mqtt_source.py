"""The MQTT side of a connector: a lean MQTT 3.1.1/5 client that acknowledges only when told to.

A general-purpose client (paho-mqtt) spends about 30 us of Python per QoS 1 message here (one
`recv` per header byte, a message object, properties, locks, a wake-up of its loop for every
PUBACK written from another thread), which caps a bridge below 34k messages/s. This client
does only what the bridge needs: it reads in large chunks, parses every complete packet of a
chunk in one pass and hands its PUBLISH packets over in batches, and sends PUBACKs in batches:
`ack()` / `ack_all()` queue them, `flush_acks()` writes the queue with a single send.
Supported: MQTT 5 and 3.1.1, persistent sessions, shared subscriptions, username/password,
TLS, keepalive, reconnect with backoff, and QoS 1 publish for the reverse direction (commands).
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterable

from bridge import BridgeError
from bridge.config import MqttSource
from bridge.source import Ack, OnMessages, Publication, Received

__all__ = ["MqttSourceClient", "SourceError", "encode_length", "encode_string"]

log = logging.getLogger(__name__)

_CONNECT, _CONNACK, _PUBLISH, _PUBACK, _SUBSCRIBE, _SUBACK = 1, 2, 3, 4, 8, 9
_PINGREQ, _PINGRESP, _DISCONNECT = 12, 13, 14
_SESSION_EXPIRY, _RECEIVE_MAXIMUM = 0x11, 0x21  # MQTT 5 property ids
_READ_TICK_S = 0.5  # how often the reader looks at keepalive and stop while idle
_CHUNK = 256 * 1024
# Most PUBLISH packets handed over at once: one receive time, one lock round and one metrics
# update per batch instead of per reading, while the first of a batch waits only briefly.
_BATCH = 256
_puback = struct.Struct(">BBH").pack


class SourceError(BridgeError):
    """The MQTT broker could not be reached or refused the connector."""


def encode_length(n: int) -> bytes:
    """MQTT's variable-length integer (the remaining length of a packet)."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_string(text: str) -> bytes:
    """An MQTT UTF-8 string: two length bytes, then the bytes."""
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + encode_length(len(body)) + body


def _frame(data: bytes, pos: int) -> tuple[int, int] | None:
    """(body start, end) of the packet at `pos`, or None while it is incomplete."""
    length, shift, i, size = 0, 0, pos + 1, len(data)
    while True:
        if i >= size:
            return None
        byte = data[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return (i, i + length) if i + length <= size else None
        shift += 7
        if shift > 21:
            raise ValueError("malformed remaining length from the broker")


class MqttSourceClient:
    """Subscribes with a persistent session; `ack(mid, qos, generation)` queues the PUBACK.

    A PUBACK belongs to the connection that received the message: after a reconnect the broker
    redelivers what was not acknowledged, so acks of an older connection are dropped.
    """

    def __init__(self, config: MqttSource, on_messages: OnMessages) -> None:
        self.config = config
        self._on_messages = on_messages
        self._v5 = config.protocol == "5"
        self.generation = 0
        self.connected = threading.Event()
        self.refused: str | None = None
        self._lock = threading.Lock()  # guards the socket, the generation and the ack queue
        self._sock: socket.socket | None = None
        self._acks = bytearray()
        self._rest = b""  # bytes read but not yet parsed
        self._outgoing: dict[int, Publication] = {}
        self._next_mid = 0
        self._last_send = self._last_recv = 0.0
        self._stopped = threading.Event()
        self._taking = False  # the reader hands messages over; cleared by stop_intake()
        self._thread: threading.Thread | None = None
        self._pinger: threading.Thread | None = None
        self._failure: str | None = None

    @property
    def filters(self) -> list[str]:
        """The subscriptions, with the shared-subscription prefix when a group is set."""
        group = self.config.shared_group
        return [f"$share/{group}/{t}" if group else t for t in self.config.topics]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        """Connect, subscribe and wait for the broker's yes."""
        self.refused = None
        self._failure = None
        self._stopped.clear()
        try:
            self._connect(timeout)
        except SourceError:
            self._stopped.set()
            raise
        self._taking = True
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-{self.config.client_id}", daemon=True
        )
        self._thread.start()
        # Pings do not wait for the reader, which may be held by backpressure for a while.
        self._pinger = threading.Thread(
            target=self._ping_while_connected, name=f"mqtt-ping-{self.config.client_id}",
            daemon=True,
        )  # fmt: skip
        self._pinger.start()
        if not self.connected.wait(timeout) or self.refused:
            self.stop()
            raise SourceError(
                f"the MQTT broker at {self.config.host}:{self.config.port} did not accept the "
                f"subscriptions: {self.refused or 'no answer'}; check the topics and the ACLs"
            )

    def stop_intake(self) -> None:
        """Read no more messages; the connection stays for the PUBACKs still to come, and what
        the broker sent and was not handed over is sent again after the next connect."""
        self._taking = False
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)

    def broker_connected(self) -> bool:
        """Whether the session with the broker is up (CONNACK received, not lost since)."""
        return self.connected.is_set()

    def worker_failure(self) -> str | None:
        """Why the reader or the pinger ended while they should run, else None."""
        if self._failure is not None:
            return self._failure
        if self._taking:
            for thread in (self._thread, self._pinger):
                if thread is not None and not thread.is_alive():
                    return f"thread {thread.name} ended"
        return None

    def stop(self) -> None:
        """Send the queued PUBACKs and disconnect; the broker keeps the session."""
        self._taking = False
        self._stopped.set()
        self.flush_acks()
        with self._lock:
            sock, self._sock = self._sock, None
            self.generation += 1  # acks still to come belong to a closed connection
            self._acks.clear()
        self.connected.clear()
        if sock is not None:
            try:
                sock.sendall(_packet(_DISCONNECT, 0, b""))
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone: the broker keeps the session all the same
            sock.close()
        for thread in (self._thread, self._pinger):
            if thread is not None and thread is not threading.current_thread():
                thread.join(10)

    # -- acknowledgements and publishing ----------------------------------------------------

    def ack(self, mid: int, qos: int, generation: int) -> None:
        """Queue the PUBACK for a message of this connection (QoS 0 needs none)."""
        if qos:
            with self._lock:
                if generation == self.generation:
                    self._acks += _puback(0x40, 2, mid)

    def ack_all(self, acks: Iterable[Ack]) -> None:
        """Queue the PUBACKs for many messages (packet id, qos, generation) at once."""
        with self._lock:
            current = self.generation
            self._acks += b"".join(
                [_puback(0x40, 2, mid) for mid, qos, gen in acks if qos and gen == current]
            )

    def flush_acks(self) -> None:
        """Send every queued PUBACK in one write."""
        with self._lock:
            if not self._acks or self._sock is None:
                return
            try:
                self._sock.sendall(self._acks)
                self._last_send = time.monotonic()
            except OSError as exc:
                log.debug("PUBACKs not sent (%s); the broker redelivers after reconnecting", exc)
            self._acks.clear()

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> Publication:
        """Publish at QoS 1 (the reverse direction: commands to devices)."""
        publication = Publication()
        with self._lock:
            self._next_mid = self._next_mid % 65535 + 1
            body = encode_string(topic) + struct.pack(">H", self._next_mid)
            body += (b"\x00" if self._v5 else b"") + payload
            self._outgoing[self._next_mid] = publication
            if self._sock is not None:
                try:
                    self._sock.sendall(_packet(_PUBLISH, 0x02, body))
                    self._last_send = time.monotonic()
                except OSError as exc:
                    log.debug("publish to %s not sent (%s)", topic, exc)
        return publication

    # -- connection --------------------------------------------------------------------------

    def _connect(self, timeout: float) -> None:
        config = self.config
        where = f"{config.host}:{config.port}"
        try:
            sock = socket.create_connection((config.host, config.port), timeout=timeout)
            if config.tls:
                sock = self._tls().wrap_socket(sock, server_hostname=config.host)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(self._connect_packet())
            connack = self._read_connack(sock)
        except OSError as exc:
            raise SourceError(
                f"cannot reach the MQTT broker at {where}: {exc}; "
                "check mqtt.host and mqtt.port and that the broker runs"
            ) from exc
        code = connack[1] if len(connack) > 1 else 0xFF
        if code != 0:
            sock.close()
            self.refused = f"CONNACK reason code {code:#04x}"
            raise SourceError(
                f"the MQTT broker at {where} did not accept the connector: {self.refused}; "
                "check mqtt.username and mqtt.password"
            )
        sock.settimeout(_READ_TICK_S)
        with self._lock:
            self.generation += 1
            self._acks.clear()
            self._sock = sock
            self._last_send = self._last_recv = time.monotonic()
            options = bytes([self.config.qos])
            body = struct.pack(">H", 1) + (b"\x00" if self._v5 else b"")
            body += b"".join(encode_string(f) + options for f in self.filters)
            sock.sendall(_packet(_SUBSCRIBE, 0x02, body))
        log.info("connected to MQTT %s", where)

    def _tls(self) -> ssl.SSLContext:
        tls = self.config.tls
        assert tls is not None
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
        if tls.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _connect_packet(self) -> bytes:
        config = self.config
        persistent = config.persistent_session
        flags = 0 if persistent else 0x02  # clean start / clean session
        payload = encode_string(config.client_id)
        if config.username:
            flags |= 0x80
            payload += encode_string(config.username)
            if config.password:
                flags |= 0x40
                payload += encode_string(config.password.get_secret_value())
        body = encode_string("MQTT") + bytes([5 if self._v5 else 4, flags])
        body += struct.pack(">H", config.keepalive_s)
        if self._v5:
            expiry = config.session_expiry_s if persistent else 0
            props = struct.pack(">BIBH", _SESSION_EXPIRY, expiry, _RECEIVE_MAXIMUM,
                                config.receive_maximum)  # fmt: skip
            body += encode_length(len(props)) + props
        return _packet(_CONNECT, 0, body + payload)

    def _read_connack(self, sock: socket.socket) -> bytes:
        """The CONNACK's variable header; what follows it stays for the reader."""
        data = b""
        while (frame := _frame(data, 0)) is None:
            chunk = sock.recv(_CHUNK)
            if not chunk:
                raise ConnectionError("the broker closed the connection before CONNACK")
            data += chunk
        if data[0] >> 4 != _CONNACK:
            raise ConnectionError(f"expected CONNACK, got packet type {data[0] >> 4}")
        self._rest = data[frame[1] :]
        return data[frame[0] : frame[1]]

    # -- the reader thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._taking:
                try:
                    self._read()
                except (OSError, ValueError, IndexError) as exc:  # IndexError: malformed packet
                    if not self._taking:
                        return
                    with self._lock:
                        self._sock = None
                    self.connected.clear()
                    log.warning("lost the MQTT broker (%s); reconnecting", exc)
                    self._reconnect()
        except Exception as exc:
            self._failure = f"the MQTT reader failed: {exc!r}"
            log.exception("the MQTT reader of %s failed", self.config.client_id)

    def _reconnect(self) -> None:
        delay = 1.0
        while self._taking and not self._stopped.wait(delay):
            try:
                self._connect(10.0)
                return
            except SourceError as exc:
                log.warning("%s; retrying", exc)
                delay = min(delay * 2, 5.0)

    def _read(self) -> None:
        sock = self._sock
        if sock is None:
            raise ConnectionError("not connected")
        data, self._rest = self._rest, b""
        while self._taking:
            if data:
                data = data[self._parse(data) :]
            self.flush_acks()
            try:
                chunk = sock.recv(_CHUNK)
            except TimeoutError:
                self._check_alive()
                continue
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            self._last_recv = time.monotonic()
            data += chunk

    def _check_alive(self) -> None:
        """While idle: the broker answers pings, so silence means a dead connection."""
        limit = 1.5 * self.config.keepalive_s
        if time.monotonic() - self._last_recv > limit:
            raise ConnectionError(f"no answer from the broker for {limit:.0f} s")

    def _ping_while_connected(self) -> None:
        half = self.config.keepalive_s / 2
        try:
            while not self._stopped.wait(1.0):
                with self._lock:
                    if self._sock is not None and time.monotonic() - self._last_send > half:
                        try:
                            self._sock.sendall(_packet(_PINGREQ, 0, b""))
                        except OSError as exc:  # the reader notices and reconnects
                            log.debug("PINGREQ not sent (%s)", exc)
                        self._last_send = time.monotonic()
        except Exception as exc:
            self._failure = f"the MQTT pinger failed: {exc!r}"
            log.exception("the MQTT pinger of %s failed", self.config.client_id)

    def _parse(self, data: bytes) -> int:
        """Handle every complete packet in `data`; returns how many bytes were consumed."""
        pos, size = 0, len(data)
        v5, generation = self._v5, self.generation
        batch: list[Received] = []
        while size - pos >= 2:
            frame = _frame(data, pos)
            if frame is None:
                break
            i, end = frame
            header = data[pos]
            kind = header >> 4
            if kind == _PUBLISH:
                qos = (header >> 1) & 3
                start = i + 2 + (data[i] << 8 | data[i + 1])
                topic = data[i + 2 : start].decode("utf-8", "replace")
                mid = 0
                if qos:
                    mid = data[start] << 8 | data[start + 1]
                    start += 2
                if v5:
                    start += self._properties_length(data, start)
                batch.append((topic, data[start:end], qos, mid))
                if len(batch) == _BATCH:
                    self._on_messages(batch, generation)
                    batch = []
            elif kind == _PUBACK:
                publication = self._outgoing.pop(data[i] << 8 | data[i + 1], None)
                if publication is not None:
                    publication.acked.set()
            elif kind == _SUBACK:
                self._subacked(data[i + 2 : end])
            elif kind == _DISCONNECT:
                raise ConnectionError("the broker sent DISCONNECT")
            pos = end
        if batch:
            self._on_messages(batch, generation)
        return pos

    @staticmethod
    def _properties_length(data: bytes, start: int) -> int:
        """Bytes taken by an MQTT 5 property block (its length field included)."""
        length, shift, i = 0, 0, start
        while True:
            byte = data[i]
            length |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                return i - start + length
            shift += 7

    def _subacked(self, body: bytes) -> None:
        codes = body[self._properties_length(body, 0) :] if self._v5 else body
        refused = [code for code in codes if code >= 0x80]
        if refused:
            self.refused = f"SUBACK reason code {refused[0]:#04x}"
            log.warning("the MQTT broker refused a subscription: %s", self.refused)
        log.info("subscribed to %s", ", ".join(self.filters))
        self.connected.set()
