"""The bridge's MQTT client against a scripted broker on a local socket (a unit test: the
broker is faked here; the connector tests run it against Mosquitto and amqtt)."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from bridge.config import MqttSource
from bridge.mqtt_source import MqttSourceClient, Received, encode_length, encode_string


class ScriptedBroker:
    """Accepts one client, answers CONNECT and SUBSCRIBE, then does what the test says."""

    def __init__(self, v5: bool) -> None:
        self.v5 = v5
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.conn: socket.socket | None = None
        self._ready = threading.Thread(target=self._handshake, daemon=True)
        self._ready.start()

    def _handshake(self) -> None:
        self.conn, _ = self.server.accept()
        self.conn.settimeout(10)
        assert self.read_packet()[0] >> 4 == 1  # CONNECT
        self.conn.sendall(b"\x20\x03\x00\x00\x00" if self.v5 else b"\x20\x02\x00\x00")
        subscribe = self.read_packet()
        assert subscribe[0] >> 4 == 8
        mid = subscribe[2:4]
        self.conn.sendall(
            b"\x90\x04" + mid + b"\x00\x01" if self.v5 else b"\x90\x03" + mid + b"\x01"
        )

    def wait(self) -> socket.socket:
        self._ready.join(10)
        assert self.conn is not None
        return self.conn

    def read_packet(self) -> bytes:
        assert self.conn is not None
        head = self._exactly(1)
        length, shift, raw = 0, 0, b""
        while True:
            byte = self._exactly(1)
            raw += byte
            length |= (byte[0] & 0x7F) << shift
            shift += 7
            if not byte[0] & 0x80:
                return head + raw + self._exactly(length)

    def _exactly(self, n: int) -> bytes:
        assert self.conn is not None
        data = b""
        while len(data) < n:
            chunk = self.conn.recv(n - len(data))
            assert chunk, "the client closed the connection"
            data += chunk
        return data


def publish_packet(
    topic: str, payload: bytes, mid: int, v5: bool, properties: bytes = b""
) -> bytes:
    body = encode_string(topic) + struct.pack(">H", mid)
    if v5:
        body += bytes([len(properties)]) + properties
    body += payload
    return b"\x32" + encode_length(len(body)) + body


@pytest.fixture(params=["3.1.1", "5"])
def connected(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[MqttSourceClient, ScriptedBroker, list[list[Received]]]]:
    v5 = request.param == "5"
    broker = ScriptedBroker(v5)
    batches: list[list[Received]] = []
    config = MqttSource(port=broker.port, protocol=request.param, client_id="test")
    client = MqttSourceClient(config, lambda batch, _generation: batches.append(list(batch)))
    client.start(timeout=10)
    broker.wait()
    yield client, broker, batches
    client.stop()
    broker.server.close()


def received(batches: list[list[Received]], count: int) -> list[Received]:
    deadline = time.monotonic() + 10
    while sum(len(b) for b in batches) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return [message for batch in batches for message in batch]


def test_packets_split_anywhere_arrive_whole_in_order(
    connected: tuple[MqttSourceClient, ScriptedBroker, list[list[Received]]],
) -> None:
    _, broker, batches = connected
    conn = broker.wait()
    # MQTT 5 PUBLISH with properties (payload format, message expiry) to be skipped.
    properties = b"\x01\x01\x02\x00\x00\x00\x3c" if broker.v5 else b""
    packets = [
        publish_packet(f"trackside/v1/T1/{i % 7}/telemetry", bytes([i % 256]) * (i % 40), i + 1,
                       broker.v5, properties)
        for i in range(700)
    ]  # fmt: skip
    stream = b"".join(packets)
    rng = random.Random(7)
    pos = 0
    while pos < len(stream):  # cut the stream at random places, even inside a header
        step = rng.randint(1, 300)
        conn.sendall(stream[pos : pos + step])
        pos += step
    messages = received(batches, 700)
    assert [(t, p, q, m) for t, p, q, m in messages] == [
        (f"trackside/v1/T1/{i % 7}/telemetry", bytes([i % 256]) * (i % 40), 1, i + 1)
        for i in range(700)
    ]
    assert max(len(b) for b in batches) <= 256


def test_pubacks_go_only_when_asked_and_in_one_write(
    connected: tuple[MqttSourceClient, ScriptedBroker, list[list[Received]]],
) -> None:
    client, broker, batches = connected
    conn = broker.wait()
    conn.sendall(b"".join(publish_packet("t", b"x", mid, broker.v5) for mid in range(1, 11)))
    received(batches, 10)
    conn.settimeout(0.3)
    with pytest.raises(TimeoutError):
        conn.recv(1)  # nothing acknowledged before the bridge says so
    conn.settimeout(10)
    client.ack_all([(mid, 1, client.generation) for mid in (3, 1, 2)])
    client.ack(9, 1, client.generation - 1)  # a message of an older connection: dropped
    client.ack(10, 0, client.generation)  # QoS 0 needs no PUBACK
    client.flush_acks()
    assert [broker.read_packet() for _ in range(3)] == [
        b"\x40\x02\x00\x03",
        b"\x40\x02\x00\x01",
        b"\x40\x02\x00\x02",
    ]
    conn.settimeout(0.3)
    with pytest.raises(TimeoutError):
        conn.recv(1)


def test_a_malformed_packet_makes_it_reconnect_not_crash(
    connected: tuple[MqttSourceClient, ScriptedBroker, list[list[Received]]],
) -> None:
    client, broker, _ = connected
    broker.server.settimeout(10)
    assert client.broker_connected()  # what /status and trackside_connector_mqtt_up show
    broker.wait().sendall(b"\x30\xff\xff\xff\xff\x7f")  # remaining length beyond the limit
    conn, _ = broker.server.accept()  # the reader survived and connects again
    conn.close()
    assert not client.broker_connected()


def test_pings_go_out_while_the_reader_is_held_by_backpressure() -> None:
    broker = ScriptedBroker(v5=False)
    release = threading.Event()
    config = MqttSource(port=broker.port, protocol="3.1.1", client_id="held", keepalive_s=5)
    client = MqttSourceClient(config, lambda _batch, _generation: release.wait(20))
    client.start(timeout=10)
    conn = broker.wait()
    try:
        conn.sendall(publish_packet("t/1", b"x", 1, v5=False))  # the reader blocks on it
        started = time.monotonic()
        packet = broker.read_packet()  # within keepalive/2 + 1 s of the last send
        assert packet[0] == 0xC0, f"expected PINGREQ, got packet type {packet[0] >> 4}"
        assert time.monotonic() - started < 5
        conn.sendall(b"\xd0\x00")  # PINGRESP
        assert client.connected.is_set()
    finally:
        release.set()
        client.stop()
        broker.server.close()
