"""Both simulator modes against the real brokers, read back by a plain paho-mqtt subscriber."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bridge.wire_decoder import decode
from firmware import wire
from gateway.simulate import BrokerAddress, FastFleet, FaultAssignment, FleetSpec, run_fleet
from gateway.simulate.firmware_mode import FirmwareFleet
from tests.fixtures.mqtt import BrokerHandle

pytestmark = pytest.mark.integration

Reading = tuple[int, int, int, int, int, dict[str, int]]


class Subscriber:
    """A paho-mqtt client that records every message of its subscriptions."""

    def __init__(self, broker: BrokerHandle, *topics: str) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex}")
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe([(t, 1) for t in topics])
        assert self._subscribed.wait(30), "no SUBACK within 30 s"

    def _message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def on(self, suffix: str) -> list[mqtt.MQTTMessage]:
        """Messages so far whose topic ends with `suffix`."""
        with self._lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def readings(self) -> tuple[dict[int, list[Reading]], int]:
        """Decoded telemetry per device, and how many telemetry frames did not decode."""
        by_device: dict[int, list[Reading]] = defaultdict(list)
        rejected = 0
        for msg in self.on("/telemetry"):
            try:
                reading = decode(msg.payload)
            except wire.WireError:
                rejected += 1
                continue
            assert int(msg.topic.split("/")[3]) == reading[1]
            by_device[reading[1]].append(reading)
        return by_device, rejected

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def subscriber() -> Iterator[Callable[..., Subscriber]]:
    made: list[Subscriber] = []

    def make(broker: BrokerHandle, *topics: str) -> Subscriber:
        made.append(Subscriber(broker, *topics))
        return made[-1]

    yield make
    for sub in made:
        sub.close()


async def until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Wait for `condition`, failing with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _broker(handle: BrokerHandle) -> BrokerAddress:
    return BrokerAddress(host=handle.host, port=handle.port)


def _prefix(unique_topic: str) -> str:
    return unique_topic.replace(".", "-")


def _contiguous(readings: list[Reading]) -> bool:
    return sorted({r[3] for r in readings}) == list(range(max(r[3] for r in readings) + 1))


async def test_every_device_arrives_decodable_in_sequence(
    mqtt_broker: BrokerHandle, subscriber: Callable[..., Subscriber], unique_topic: str
) -> None:
    prefix = _prefix(unique_topic)
    sub = subscriber(mqtt_broker, f"{prefix}/v1/+/+/telemetry")
    spec = FleetSpec(trains=10, devices_per_train=5, rate_hz=5, topic_prefix=prefix)
    stats = await run_fleet(spec, _broker(mqtt_broker), duration_s=3)
    assert stats.acked == stats.published >= 50 * 10
    await until(lambda: len(sub.on("/telemetry")) >= stats.published, "every reading")
    by_device, rejected = sub.readings()
    assert rejected == 0
    assert set(by_device) == {d.device_id for d in spec.devices()}
    for readings in by_device.values():
        assert [r[3] for r in readings] == list(range(len(readings)))  # in order, no gap
        assert len({r[2] for r in readings}) == 1  # one boot


async def test_bearing_fault_shows_in_the_values_with_time_acceleration(
    mosquitto: BrokerHandle, subscriber: Callable[..., Subscriber], unique_topic: str
) -> None:
    prefix = _prefix(unique_topic)
    sub = subscriber(mosquitto, f"{prefix}/v1/+/+/telemetry")
    spec = FleetSpec(
        trains=2,
        rate_hz=5,
        speedup=600,  # two simulated minutes per reading
        topic_prefix=prefix,
        faults=(FaultAssignment.parse("T101:bearing_overheat_gradual@0"),),
    )
    await run_fleet(spec, _broker(mosquitto), duration_s=3)

    def last_spread(device_id: int) -> float:
        values = sub.readings()[0][device_id][-1][5]
        return (values["bearing_left_temp"] - values["bearing_right_temp"]) / 10

    await until(lambda: len(sub.readings()[0]) == 2, "both trains")
    assert last_spread(10101) > 20  # 2 degC per simulated minute on the left bearing
    assert abs(last_spread(10201)) < 5


async def test_malformed_frames_are_rejected_by_the_codec_and_readings_stay_whole(
    mqtt_broker: BrokerHandle, subscriber: Callable[..., Subscriber], unique_topic: str
) -> None:
    prefix = _prefix(unique_topic)
    sub = subscriber(mqtt_broker, f"{prefix}/v1/+/+/telemetry")
    spec = FleetSpec(
        trains=4,
        rate_hz=10,
        topic_prefix=prefix,
        faults=(FaultAssignment.parse("malformed_frames@0"),),
    )
    stats = await run_fleet(spec, _broker(mqtt_broker), duration_s=2)
    assert stats.malformed > 0
    total = stats.published + stats.malformed
    await until(lambda: len(sub.on("/telemetry")) >= total, "readings and malformed frames")
    by_device, rejected = sub.readings()
    assert rejected == stats.malformed
    assert all(_contiguous(readings) for readings in by_device.values())


async def test_disable_stops_a_device_and_enable_resumes_it(
    mqtt_broker: BrokerHandle, subscriber: Callable[..., Subscriber], unique_topic: str
) -> None:
    prefix = _prefix(unique_topic)
    sub = subscriber(mqtt_broker, f"{prefix}/v1/#")
    spec = FleetSpec(trains=3, rate_hz=10, topic_prefix=prefix)
    target = f"{prefix}/v1/T102/10201"

    def count(device_id: int) -> int:
        return len(sub.readings()[0].get(device_id, []))

    def state(suffix: str, request_id: str | None = None) -> str | None:
        for msg in reversed(sub.on(suffix)):
            body = json.loads(msg.payload)
            if request_id is None or body.get("id") == request_id:
                return str(body["state"])
        return None

    async with FastFleet(spec, _broker(mqtt_broker)) as fleet:
        await until(lambda: count(10201) >= 3, "readings of T102")
        sub.client.publish(f"{target}/cmd", json.dumps({"id": "d1", "op": "disable"}), qos=1)
        await until(lambda: state("10201/reply", "d1") == "disabled", "the disable reply")
        await until(lambda: state("10201/status") == "disabled", "status disabled")
        stopped_at, others = count(10201), count(10101)
        await until(lambda: count(10101) >= others + 10, "more readings of the others")
        assert count(10201) <= stopped_at + 1  # at most one already in flight
        assert fleet.stats.disabled == 1

        sub.client.publish(f"{target}/cmd", json.dumps({"id": "e1", "op": "enable"}), qos=1)
        await until(lambda: state("10201/reply", "e1") == "online", "the enable reply")
        await until(lambda: count(10201) >= stopped_at + 5, "readings after enable")
    readings = sub.readings()[0][10201]
    assert [r[3] for r in readings] == list(range(len(readings)))  # same boot, no gap
    assert state("10201/status") == "offline"


async def test_reconnect_storm_loses_no_reading(
    mosquitto: BrokerHandle, subscriber: Callable[..., Subscriber], unique_topic: str
) -> None:
    prefix = _prefix(unique_topic)
    sub = subscriber(mosquitto, f"{prefix}/v1/+/+/telemetry")
    spec = FleetSpec(
        trains=20,
        devices_per_train=5,
        rate_hz=20,
        topic_prefix=prefix,
        faults=(FaultAssignment.parse("reconnect_storm@1"),),
    )
    stats = await run_fleet(spec, _broker(mosquitto), duration_s=3, connections=4)
    assert stats.reconnects == 4
    assert stats.acked == stats.published and stats.lost == 0
    await until(lambda: len(sub.on("/telemetry")) >= stats.published, "every reading")
    by_device, _ = sub.readings()
    assert len(by_device) == 100
    assert sum(len({r[3] for r in rs}) for rs in by_device.values()) == stats.published
    assert all(_contiguous(readings) for readings in by_device.values())


async def test_per_device_connections_carry_each_devices_last_will(
    mosquitto: BrokerHandle, subscriber: Callable[..., Subscriber], unique_topic: str
) -> None:
    prefix = _prefix(unique_topic)
    spec = FleetSpec(trains=3, rate_hz=5, topic_prefix=prefix)
    async with FastFleet(spec, _broker(mosquitto), per_device_connections=True) as fleet:
        assert fleet.stats.connections == 3
        sub = subscriber(mosquitto, f"{prefix}/v1/+/+/status")
        await until(lambda: len(sub.on("/status")) >= 3, "three retained statuses")
        assert {json.loads(m.payload)["state"] for m in sub.on("/status")} == {"online"}
        assert all(m.retain for m in sub.on("/status"))
    await until(
        lambda: [json.loads(m.payload) for m in sub.on("/status")][-3:]
        == [{"state": "offline"}] * 3,
        "offline at stop",
    )


async def test_firmware_mode_two_devices_publish_readings_that_decode(
    mosquitto: BrokerHandle, subscriber: Callable[..., Subscriber], tmp_path: Path
) -> None:
    first = random.randrange(1000, 9000)  # train ids apart from other tests' retained topics
    spec = FleetSpec(trains=2, rate_hz=5, first_train=first)
    sub = subscriber(mosquitto, "trackside/v1/+/+/telemetry")
    devices = {first * 100 + 1, (first + 1) * 100 + 1}

    def mine() -> dict[int, list[Reading]]:
        return {d: rs for d, rs in sub.readings()[0].items() if d in devices}

    async with FirmwareFleet(spec, _broker(mosquitto), tmp_path) as fleet:
        await until(
            lambda: len(mine()) == 2 and all(len(rs) >= 5 for rs in mine().values()),
            "five readings from each firmware device",
        )
        assert fleet.stats.connections == 2  # both processes alive
    for readings in mine().values():
        assert [r[3] for r in readings][:5] == [0, 1, 2, 3, 4]
        assert set(readings[0][5]) >= {"engine_temp", "bearing_left_temp", "speed"}
    assert (tmp_path / f"T{first}-{first * 100 + 1}" / "trackside.json").exists()


def test_the_cli_runs_a_fleet_and_reports_the_rate(mosquitto: BrokerHandle) -> None:
    argv = [sys.executable, "-m", "gateway", "simulate", "--broker-host", mosquitto.host]
    argv += ["--broker-port", str(mosquitto.port), "--trains", "3", "--first-train", "7101"]
    done = subprocess.run(
        [*argv, "--rate-hz", "5", "--duration", "2", "--fault", "T7102:coolant_loss@1"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "readings published" in done.stdout and "readings/s" in done.stdout
    wrong = subprocess.run(
        [*argv, "--fault", "T9999:coolant_loss"], capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert wrong.returncode == 1 and "T7101..T7103" in wrong.stderr
