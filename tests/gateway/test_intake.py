"""gateway/intake.py: topic filters, the hand-over to the connector and the PUBACKs back,
alone and behind the embedded broker's reader (gateway/broker.py), with a fake connector."""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bridge.mqtt_source import encode_length, encode_string
from bridge.source import Received
from gateway import intake as intake_module
from gateway.broker import BrokerSettings, DurableBroker, publish_check
from gateway.intake import BrokerIntake, topic_matches
from gateway.localkafka import free_port

TOPIC = "trackside/v1/T1/7/telemetry"


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("trackside/v1/+/+/telemetry", TOPIC, True),
        ("trackside/v1/+/+/telemetry", "trackside/v1/T1/7/status", False),
        ("trackside/v1/+/+/telemetry", "trackside/v1/T1/telemetry", False),
        ("trackside/v1/+/+/telemetry", "trackside/v1/T1/7/telemetry/x", False),
        ("trackside/#", TOPIC, True),
        ("trackside/#", "trackside", True),
        ("#", "$SYS/broker", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/broker", True),
        (TOPIC, TOPIC, True),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


async def until(condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    """Let the event loop run until `condition` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(0.01)


class Connector:
    """The connector's side: records each batch; acknowledges at once unless `hold`."""

    def __init__(self, intake: BrokerIntake, hold: bool = False) -> None:
        self.intake = intake
        self.hold = hold
        self.batches: list[list[Received]] = []
        self.lock = threading.Lock()
        intake.source(self.on_messages)

    def on_messages(self, batch: list[Received], gen: int) -> None:
        with self.lock:
            self.batches.append(list(batch))
        if not self.hold:
            self.ack([mid for _, _, _, mid in batch])

    def ack(self, mids: list[int]) -> None:
        self.intake.ack_all((mid, 1 if mid else 0, 0) for mid in mids)
        self.intake.flush_acks()

    @property
    def readings(self) -> list[Received]:
        with self.lock:
            return [reading for batch in self.batches for reading in batch]


class Target:
    """One connection's PUBACKs."""

    def __init__(self) -> None:
        self.pubacks: list[int] = []

    def puback(self, packet_ids: list[int]) -> None:
        self.pubacks += packet_ids


class NoBroker:
    async def internal_message_broadcast(self, topic: str, data: bytes, qos: int | None) -> None:
        raise AssertionError("not used here")


@pytest.fixture
async def intake() -> AsyncIterator[BrokerIntake]:
    intake = BrokerIntake("telemetry", ["trackside/v1/+/+/telemetry"])
    intake.bind(NoBroker(), asyncio.get_running_loop())
    yield intake
    await asyncio.to_thread(intake.stop)


async def test_readings_reach_the_connector_in_order_and_pubacks_go_back_per_connection(
    intake: BrokerIntake,
) -> None:
    connector = Connector(intake, hold=True)
    intake.start()
    first, second = Target(), Target()
    for i in range(300):  # one turn of the event loop: one batch, both connections interleaved
        intake.take(TOPIC, b"%d" % i, 1, first if i % 2 else second, 1000 + i)
    intake.take(TOPIC, b"qos0", 0)
    await until(lambda: len(connector.readings) == 301, "the readings handed over")
    assert len(connector.batches) == 1
    assert [payload for _, payload, _, _ in connector.readings] == [
        *(b"%d" % i for i in range(300)),
        b"qos0",
    ]
    mids = [mid for _, _, _, mid in connector.readings]
    assert mids[-1] == 0  # QoS 0: nothing to acknowledge
    # The connector acknowledges out of order, in two rounds: each round is one write per
    # connection, in the order the connector acknowledged.
    await asyncio.to_thread(connector.ack, mids[200:300])
    await until(lambda: len(first.pubacks) + len(second.pubacks) == 100, "first round")
    assert first.pubacks == [1000 + i for i in range(200, 300) if i % 2]
    await asyncio.to_thread(connector.ack, mids[:200])
    await until(lambda: len(first.pubacks) + len(second.pubacks) == 300, "second round")
    assert second.pubacks == [1000 + i for i in range(200, 300, 2)] + [
        1000 + i for i in range(0, 200, 2)
    ]


async def test_nothing_is_acknowledged_before_the_connector_acks_or_after_abandon(
    intake: BrokerIntake,
) -> None:
    connector = Connector(intake, hold=True)
    intake.start()
    target = Target()
    intake.take(TOPIC, b"a", 1, target, 1)
    intake.take(TOPIC, b"b", 1, target, 2)
    await until(lambda: len(connector.readings) == 2, "the readings handed over")
    await asyncio.sleep(0.05)
    assert target.pubacks == []
    intake.abandon()  # the broker closes: these will never be acknowledged here
    await asyncio.to_thread(connector.ack, [mid for _, _, _, mid in connector.readings])
    await asyncio.sleep(0.05)
    assert target.pubacks == []


async def test_stop_intake_hands_over_what_was_taken_and_takes_no_more(
    intake: BrokerIntake,
) -> None:
    Connector(intake)  # acknowledges at once
    intake.start()
    assert intake.taking
    target = Target()
    intake.take(TOPIC, b"a", 1, target, 1)
    await until(lambda: target.pubacks == [1], "the PUBACK")
    await asyncio.to_thread(intake.stop_intake)
    assert not intake.taking
    assert intake.worker_failure() is None


async def test_a_connector_that_raises_is_a_worker_failure(intake: BrokerIntake) -> None:
    def broken(batch: list[Received], gen: int) -> None:
        raise RuntimeError("boom")

    intake.source(broken)
    intake.start()
    intake.take(TOPIC, b"a", 1, Target(), 1)
    await until(lambda: intake.worker_failure() is not None, "the failure")
    assert "boom" in (intake.worker_failure() or "")


# -- behind the embedded broker's reader ---------------------------------------------------------


def connect_packet(client_id: str) -> bytes:
    body = encode_string("MQTT") + bytes([4, 0x02]) + struct.pack(">H", 60)
    body += encode_string(client_id)
    return b"\x10" + encode_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, packet_id: int, qos: int = 1) -> bytes:
    body = encode_string(topic) + (struct.pack(">H", packet_id) if qos else b"") + payload
    return bytes([0x30 | qos << 1]) + encode_length(len(body)) + body


@pytest.fixture
async def broker() -> AsyncIterator[tuple[DurableBroker, Connector]]:
    settings = BrokerSettings(port=free_port(), max_payload_bytes=1024)
    intake = BrokerIntake("telemetry", ["trackside/v1/+/+/telemetry"])
    broker = DurableBroker(settings, [intake], publish_check(settings))
    connector = Connector(intake, hold=True)
    intake.start()
    await broker.start()
    yield broker, connector
    await asyncio.to_thread(intake.stop)
    await broker.shutdown()


async def open_client(broker: DurableBroker, name: str) -> tuple[Any, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", broker_port(broker))
    writer.write(connect_packet(name))
    assert await reader.readexactly(4) == b"\x20\x02\x00\x00"
    return reader, writer


def broker_port(broker: DurableBroker) -> int:
    return int(broker.config["listeners"]["default"]["bind"].rsplit(":", 1)[1])


async def test_pubacks_wait_for_the_connector_and_follow_the_order_of_its_acks(
    broker: tuple[DurableBroker, Connector],
) -> None:
    durable, connector = broker
    reader, writer = await open_client(durable, "device-7")
    stream = b"".join(publish_packet(TOPIC, b"r%d" % i, 100 + i) for i in range(5))
    for piece in (stream[:1], stream[1:3], stream[3:40], stream[40:]):  # split anywhere
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.02)
    await until(lambda: len(connector.readings) == 5, "the readings handed over")
    assert [(t, p) for t, p, _, _ in connector.readings] == [(TOPIC, b"r%d" % i) for i in range(5)]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(4), 0.2)  # nothing is safe yet
    mids = [mid for _, _, _, mid in connector.readings]
    await asyncio.to_thread(connector.ack, mids[3:] + mids[:3])
    pubacks = await asyncio.wait_for(reader.readexactly(20), 5)
    assert [struct.unpack(">BBH", pubacks[i : i + 4]) for i in range(0, 20, 4)] == [
        (0x40, 2, 100 + i) for i in (3, 4, 0, 1, 2)
    ]
    writer.close()


async def test_other_topics_take_amqtts_path_and_oversized_publishes_close_the_connection(
    broker: tuple[DurableBroker, Connector],
) -> None:
    durable, connector = broker
    reader, writer = await open_client(durable, "device-8")
    writer.write(publish_packet("elsewhere/x", b"hello", 9))  # amqtt acknowledges on receipt
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x40\x02\x00\x09"
    writer.write(publish_packet(TOPIC, b"q0", 0, qos=0) + publish_packet(TOPIC, bytes(2000), 10))
    await until(lambda: len(connector.readings) == 1, "the QoS 0 reading handed over")
    assert connector.readings[0][1:3] == (b"q0", 0)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing acknowledged
    assert len(connector.readings) == 1


async def test_readers_pause_while_too_many_readings_wait_to_be_safe(
    broker: tuple[DurableBroker, Connector], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake_module, "WAITING_MAX", 4)
    durable, connector = broker
    reader, writer = await open_client(durable, "device-9")
    writer.write(b"".join(publish_packet(TOPIC, b"a%d" % i, 1 + i) for i in range(6)))
    await until(lambda: len(connector.readings) == 6, "the first write handed over")
    writer.write(b"".join(publish_packet(TOPIC, b"b%d" % i, 11 + i) for i in range(2)))
    await asyncio.sleep(0.2)
    assert len(connector.readings) == 6  # paused: the second write waits in TCP buffers
    await asyncio.to_thread(connector.ack, [mid for _, _, _, mid in connector.readings])
    await until(lambda: len(connector.readings) == 8, "the second write after the acks")
    assert await asyncio.wait_for(reader.readexactly(24), 5) == b"".join(
        struct.pack(">BBH", 0x40, 2, 1 + i) for i in range(6)
    )
    writer.close()


async def test_a_paused_connector_has_readings_held_unacknowledged_until_it_resumes(
    broker: tuple[DurableBroker, Connector],
) -> None:
    durable, connector = broker
    reader, writer = await open_client(durable, "device-10")
    await asyncio.to_thread(connector.intake.stop_intake)  # the connector pauses
    writer.write(publish_packet(TOPIC, b"held", 5) + b"\xc0\x00")  # and a PINGREQ after it
    await asyncio.sleep(0.2)
    assert connector.readings == []
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(2), 0.2)  # nothing after it is read either
    await asyncio.to_thread(connector.intake.start)
    await until(lambda: len(connector.readings) == 1, "the held reading after resume")
    assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\xd0\x00"  # PINGRESP
    await asyncio.to_thread(connector.ack, [connector.readings[0][3]])
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x40\x02\x00\x05"
    writer.close()
