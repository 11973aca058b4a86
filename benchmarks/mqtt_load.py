"""Load for the bridge benchmark: wire-format readings published at QoS 1 over a raw socket.

A hand-written MQTT 3.1.1 publisher (CONNECT, PUBLISH QoS 1, PUBACK counting) is several times
faster than any Python client library, so the load generator takes as little of the shared
cores as possible. Readings come from `devices` devices, `devices_per_train` per train, on the
v1 telemetry topics under a benchmark-specific prefix; each carries its publish time as ts_ms.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.mqtt_source import encode_length, encode_string
from firmware import wire

__all__ = ["Publisher", "prepare_session"]

VALUES = {
    "engine_temp": 873,
    "bearing_left_temp": 412,
    "bearing_right_temp": 405,
    "vibration_rms": 120,
    "speed": 1234,
    "supply_voltage": 24050,
}
WINDOW = 30_000  # unacknowledged PUBLISHes at most; below 65535 so packet ids never collide
SLICE_S = 0.005  # a paced publisher sends what is due every SLICE_S


class Publisher:
    """One MQTT 3.1.1 connection publishing readings at QoS 1; counts the broker's PUBACKs."""

    def __init__(self, host: str, port: int, prefix: str, devices: int, per_train: int) -> None:
        self.topics = [
            encode_string(f"{prefix}/v1/T{d // per_train}/{d}/telemetry") for d in range(devices)
        ]
        self.sent = 0
        self.acked = 0
        self._seq = [0] * devices
        self._sock = socket.create_connection((host, port))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = (
            encode_string("MQTT") + bytes([4, 0x02]) + struct.pack(">H", 0)
        )  # clean, no keepalive
        body += encode_string(f"bench-load-{uuid.uuid4().hex[:8]}")
        self._sock.sendall(b"\x10" + encode_length(len(body)) + body)
        if self._sock.recv(4) != b"\x20\x02\x00\x00":
            raise ConnectionError("the broker refused the benchmark publisher")
        self._reader = threading.Thread(target=self._count_acks, daemon=True)
        self._reader.start()

    def _count_acks(self) -> None:
        received = 0
        while chunk := self._sock.recv(65536):
            received += len(chunk)
            self.acked = received // 4  # only 4-byte PUBACKs come back

    def _packets(self, count: int, boot_id: int) -> bytes:
        out = bytearray()
        ts_ms = int(time.time() * 1000)
        devices = len(self.topics)
        for i in range(self.sent, self.sent + count):
            device = i % devices
            seq = self._seq[device]
            self._seq[device] = seq + 1
            payload = wire.encode(device, boot_id, seq, ts_ms, VALUES)
            topic = self.topics[device]
            out += b"\x32" + encode_length(len(topic) + 2 + len(payload))
            out += topic + struct.pack(">H", i % 65535 + 1) + payload
        self.sent += count
        return bytes(out)

    def _send(self, count: int, boot_id: int) -> None:
        while self.sent - self.acked > WINDOW:
            time.sleep(0.001)
        self._sock.sendall(self._packets(count, boot_id))

    def burst(self, count: int, boot_id: int = 1) -> None:
        """Publish `count` readings as fast as the broker takes them."""
        for start in range(0, count, 1000):
            self._send(min(1000, count - start), boot_id)

    def paced(self, rate: float, seconds: float, boot_id: int = 1) -> None:
        """Publish `rate` readings per second for `seconds`, in slices of SLICE_S."""
        start, total, done = time.monotonic(), int(rate * seconds), 0
        while done < total:
            due = min(total, int(rate * (time.monotonic() - start)))
            if due > done:
                self._send(due - done, boot_id)
                done = due
            time.sleep(SLICE_S)

    def wait_acked(self, timeout: float = 120.0) -> bool:
        """True once the broker acknowledged everything sent."""
        deadline = time.monotonic() + timeout
        while self.acked < self.sent and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.acked >= self.sent

    def close(self) -> None:
        """Disconnect cleanly."""
        self._sock.sendall(b"\xe0\x00")
        self._sock.close()


def prepare_session(host: str, port: int, client_id: str, topic_filter: str) -> None:
    """Create the persistent MQTT 5 session a bridge will resume, so nothing published is lost."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect(host, port, clean_start=True, properties=properties)
    client.loop_start()
    client.subscribe(topic_filter, qos=1)
    if not subscribed.wait(30):
        raise ConnectionError(f"no SUBACK for {topic_filter!r} within 30 s")
    client.disconnect()
    client.loop_stop()
