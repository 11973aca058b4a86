"""Desired device configs (gateway/devices_config.py, `trackside devices configure`): the
validation and the drift logic alone, then a real firmware device on the MicroPython unix port
behind a real `trackside gateway run` (embedded broker, or Mosquitto) and real Kafka."""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from gateway import GatewayError
from gateway.cli import build_app
from gateway.devices_config import (
    ConfigPublisher,
    ConfigSettings,
    DesiredConfig,
    DeviceConfig,
    Twins,
    config_topic,
    drifts,
    parse_desired,
    twin_key,
)
from gateway.localkafka import free_port
from gateway.topics import Topics
from tests.firmware.conftest import Observer
from tests.fixtures.kafka import KafkaService
from tests.fixtures.micropython import UnixDevice
from tests.fixtures.mqtt import BrokerHandle
from tests.fixtures.processes import LOG_ROOT, ServiceProcess
from tests.fixtures.waiting import wait_until

# -- validation and drift, unit ---------------------------------------------------------------


def test_a_config_is_checked_as_the_firmware_checks_it() -> None:
    assert DeviceConfig().sample_ms == 1000
    DeviceConfig(sample_ms=100, enable={"speed": False, "ambient_temp": True})
    for bad in ({"sample_ms": 99}, {"sample_ms": 3_600_001}, {"sample_ms": 500.0},
                {"sample_ms": "500"}, {"enable": {"speed": 0}}, {"colour": "red"}):
        with pytest.raises(ValueError):
            DeviceConfig.model_validate(bad)
    with pytest.raises(ValueError, match="unknown channel warp_drive: expected one of engine_temp"):
        DeviceConfig(enable={"warp_drive": False})
    with pytest.raises(ValueError):
        DesiredConfig(version=0, config=DeviceConfig())


def test_the_retained_message_carries_the_version_and_the_whole_config() -> None:
    desired = DesiredConfig(version=3, config=DeviceConfig(sample_ms=500, enable={"speed": False}))
    assert json.loads(desired.mqtt_payload()) == {
        "version": 3, "sample_ms": 500, "enable": {"speed": False}}
    record = json.dumps(desired.model_dump()).encode()
    assert parse_desired(record) == desired and parse_desired(None) is None
    with pytest.raises(ValueError):
        parse_desired(b'{"version": 1}')
    assert twin_key("T101", 42) == "T101/42"
    assert config_topic("T101/42") == "trackside/v1/T101/42/config"
    with pytest.raises(GatewayError, match="train id 'T1/#' is not"):
        twin_key("T1/#", 42)


def test_drift_is_a_reported_version_other_than_the_desired_one() -> None:
    assert not drifts(None, None) and not drifts(None, 4)  # nothing desired: nothing to drift
    assert drifts(2, None)  # older firmware reports no version at all
    assert drifts(2, 1) and drifts(2, 3) and not drifts(2, 2)


def test_a_device_online_with_an_older_version_is_sent_its_config_again() -> None:
    now = [100.0]
    twins = Twins(resend_s=30, clock=lambda: now[0])
    v1 = DesiredConfig(version=1, config=DeviceConfig(sample_ms=500))
    assert twins.desire("T1/1", v1)  # new: published
    assert not twins.desire("T1/1", v1)  # the same record read again: not
    assert twins.drifting() == ["T1/1"]
    # Right after the publish the device still reports its boot's 0: no second send yet.
    assert not twins.report("T1/1", {"state": "online", "cfg": 0})
    now[0] += 31
    assert not twins.report("T1/1", {"state": "offline"})  # offline: it reads nothing
    assert twins.report("T1/1", {"state": "online", "cfg": 0})  # back, still old: again
    assert not twins.report("T1/1", {"state": "online", "cfg": 0})  # and not at once again
    assert not twins.report("T1/1", {"state": "disabled", "cfg": 1})
    assert twins.drifting() == []
    assert not twins.report("T9/9", {"state": "online", "cfg": 0})  # nothing desired for it
    assert twins.desire("T1/1", DesiredConfig(version=2, config=DeviceConfig()))
    assert twins.drifting() == ["T1/1"]


def test_configure_refuses_what_the_firmware_would_ignore_before_asking_kafka() -> None:
    # Port 1: nothing listens there, so an answer naming the problem cannot come from Kafka.
    result = CliRunner().invoke(build_app(), [
        "devices", "configure", "--train", "T1", "--device", "1", "--sample-ms", "50",
        "--disable", "warp", "--bootstrap-servers", "127.0.0.1:1"])
    assert result.exit_code == 1
    assert str(result.exception) == (
        "config refused: sample_ms: Input should be greater than or equal to 100; enable: Value "
        "error, unknown channel warp: expected one of engine_temp, bearing_left_temp, "
        "bearing_right_temp, vibration_rms, speed, supply_voltage, ambient_temp")


class _Recorder:
    """A retainer that keeps what it is given."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes) -> None:
        self.sent.append((topic, payload))


def test_the_publisher_sends_new_configs_and_passes_over_garbage() -> None:
    settings = ConfigSettings(resend_s=30)
    recorder = _Recorder()
    now = [0.0]
    publisher = ConfigPublisher(settings, "127.0.0.1:1", recorder, clock=lambda: now[0])
    desired = DesiredConfig(version=1, config=DeviceConfig(sample_ms=500))
    record = json.dumps(desired.model_dump()).encode()
    publisher.apply(settings.topic, b"T1/1", record)
    assert recorder.sent == [("trackside/v1/T1/1/config", desired.mqtt_payload())]
    for garbage in (b"[1]", b"\xff", b"{", b"[" * 100_000, b"null"):
        publisher.apply(settings.status_topic, b"T1/1", garbage)
        publisher.apply(settings.topic, b"T1/2", garbage)
    publisher.apply(settings.topic, None, record)  # no key: whose would it be
    assert len(recorder.sent) == 1
    now[0] += 30
    publisher.apply(settings.status_topic, b"T1/1", b'{"state": "online", "cfg": 0}')
    assert len(recorder.sent) == 2  # resend_s passed: sent again
    publisher.apply(settings.status_topic, b"T1/1", b'{"state": "online", "cfg": 1}')
    assert len(recorder.sent) == 2 and publisher.twins.drifting() == []


# -- a firmware device behind `trackside gateway run`, integration ----------------------------


@dataclass
class Rig:
    """A gateway on its own Kafka topics and one unix-port device behind it."""

    gateway: ServiceProcess
    broker: BrokerHandle
    topics: Topics
    bootstrap_servers: str
    http: str
    device: UnixDevice
    observer: Observer

    def configure(self, *options: str) -> str:
        """`trackside devices configure` for the device; its output."""
        result = CliRunner().invoke(build_app(), [
            "devices", "configure", "--train", self.device.train_id,
            "--device", str(self.device.device_id), "--bootstrap-servers",
            self.bootstrap_servers, "--topic", self.topics.device_config, *options])
        assert result.exit_code == 0, result.output
        return result.output

    def statuses(self) -> list[dict[str, Any]]:
        return self.observer.json("status")

    def drift_metric(self) -> float:
        with urllib.request.urlopen(f"{self.http}/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("trackside_devices_config_drift "):
                    return float(line.split()[1])
        raise AssertionError("no trackside_devices_config_drift in /metrics")


@pytest.fixture
def rig(
    request: pytest.FixtureRequest, tmp_path: Path, kafka: KafkaService,
    unix_device: Callable[..., UnixDevice],
) -> Iterator[Callable[[str], Rig]]:
    """`make("embedded")` or `make("mosquitto")`: the gateway with that broker (the command
    connector and the config publisher on it), and a device sampling every 200 ms (its other
    trackside.json keys as keywords)."""
    made: list[Rig] = []

    def make(broker_kind: str, **device_config: Any) -> Rig:
        prefix = f"cfg-{uuid.uuid4().hex[:8]}"
        topics = Topics.with_prefix(prefix)
        http_port = free_port()
        if broker_kind == "embedded":
            broker = BrokerHandle("gateway", [], "127.0.0.1", free_port(), tmp_path / "unused")
            broker_config: dict[str, Any] = {"port": broker.port}
        else:
            broker = request.getfixturevalue("mosquitto")
            broker_config = {"enabled": False}
        mqtt_at = {"host": broker.host, "port": broker.port}
        kafka_at = {"bootstrap_servers": kafka.bootstrap_servers}
        config = {
            "broker": broker_config,
            "connectors": [
                {"name": "telemetry", "mqtt": {**mqtt_at, "client_id": f"{prefix}-t"},
                 "kafka": {**kafka_at, "topic": topics.telemetry},
                 "commands": {"topic": topics.commands, "group_id": prefix},
                 "spool": {"path": "spool-t"}},
                {"name": "device-status",
                 "mqtt": {**mqtt_at, "client_id": f"{prefix}-s",
                          "topics": ["trackside/v1/+/+/status"],
                          "topic_pattern": "trackside/v1/{train_id}/{device_id}/status"},
                 "kafka": {**kafka_at, "topic": topics.device_status,
                           "key": "{train_id}/{device_id}"},
                 "transforms": [{"type": "headers"}], "converter": "raw",
                 "spool": {"path": "spool-s"}},
            ],
            "http": {"port": http_port},
            "device_config": {"topic": topics.device_config,
                              "status_topic": topics.device_status, "resend_s": 1},
        }
        (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config))
        gateway = ServiceProcess(
            "gateway", [sys.executable, "-m", "gateway", "gateway", "run", "-c",
                        str(tmp_path / "gateway.yaml")], "127.0.0.1", http_port,
            LOG_ROOT / f"gateway-{prefix}.log")
        gateway.start(60)
        device = unix_device(broker, boot=False, **device_config)
        observer = Observer(broker, device)
        device.start()
        made.append(rig := Rig(gateway, broker, topics, kafka.bootstrap_servers,
                               f"http://127.0.0.1:{http_port}", device, observer))
        observer.wait(rig.statuses, "the device's first status")
        return rig

    yield make
    for made_rig in made:
        made_rig.observer.close()
        made_rig.device.stop()
        assert "Traceback" not in made_rig.gateway.tail(200), made_rig.gateway.tail(200)
        made_rig.gateway.stop(30)


def _intervals_ms(rig: Rig, since: float) -> list[int]:
    """Milliseconds between the device's consecutive readings received after `since`."""
    stamps = [reading[4] for reading in rig.observer.readings(since)]  # (..., ts_ms, values)
    return [b - a for a, b in itertools.pairwise(stamps)]


@pytest.mark.integration
@pytest.mark.parametrize("broker_kind", ["embedded", "mosquitto"])
def test_a_desired_config_reaches_the_device_through_kafka_and_the_gateway(
    rig: Callable[[str], Rig], broker_kind: str
) -> None:
    r = rig(broker_kind)
    status = r.statuses()[-1]
    assert status["cfg"] == 0 and status["board"] == "unix" and "rssi" not in status
    assert 0 < status["heap"] < 51 * 1024  # gc.mem_free() of the device's fixed heap
    before = r.observer.wait(lambda: len(_intervals_ms(r, 0)) >= 5 and _intervals_ms(r, 0),
                             "readings at the booted 200 ms")
    assert statistics.median(before) < 300

    out = r.configure("--sample-ms", "1000", "--disable", "speed")
    assert "config version 1 (sample_ms 1000, disabled: speed)" in out
    r.observer.wait(lambda: any(s.get("cfg") == 1 for s in r.statuses()),
                    "a status reporting config version 1")
    applied = time.monotonic()  # the readings from here on are sampled at the new period
    after = r.observer.wait(lambda: len(_intervals_ms(r, applied)) >= 4
                            and _intervals_ms(r, applied), "four readings at 1000 ms")
    assert 900 <= statistics.median(after) <= 1100, after
    assert all("speed" not in reading[5] for reading in r.observer.readings(applied))
    r.observer.wait(lambda: r.drift_metric() == 0, "no drift in /metrics")

    # The next version keeps what it does not change: speed stays off.
    r.configure("--sample-ms", "400")
    r.observer.wait(lambda: any(s.get("cfg") == 2 for s in r.statuses()), "config version 2")
    retained = r.observer.payloads("config")[-1]
    assert json.loads(retained) == {"version": 2, "sample_ms": 400, "enable": {"speed": False}}


@pytest.mark.integration
def test_a_device_that_was_offline_gets_its_config_on_reconnect(rig: Callable[[str], Rig]) -> None:
    # A status every second: the gateway sends again on a status, at most every resend_s (1 s)
    r = rig("embedded", status_ms=1000)
    r.device.stop()  # power off: the broker publishes its last will
    # (wait_until: the observer's own wait fails as soon as the device is not running)
    wait_until(lambda: r.statuses()[-1]["state"] == "offline", 60, "the last will")
    r.configure("--sample-ms", "600")
    wait_until(lambda: r.drift_metric() == 1, 60, "drift while it is away")
    r.device.start()
    r.observer.wait(lambda: r.statuses()[-1].get("cfg") == 1, "version 1 after the reconnect")

    # The broker lost the retained config (cleared here) while the device was away: it
    # reconnects with its boot's version 0, and the gateway sends the config again.
    r.device.stop()
    wait_until(lambda: r.statuses()[-1]["state"] == "offline", 60, "the last will again")
    _clear_retained(r.broker, config_topic(twin_key(r.device.train_id, r.device.device_id)))
    r.device.start()
    r.observer.wait(lambda: r.statuses()[-1].get("cfg") == 1, "version 1 sent again")
    configs = r.observer.payloads("config")
    assert b"" in configs and configs[configs.index(b"") + 1:], "no config sent after the clear"
    wait_until(lambda: r.drift_metric() == 0, 30, "no drift once the gateway has the status")
    assert "config ignored" not in r.device.log()


def _clear_retained(broker: BrokerHandle, topic: str) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"clear-{uuid.uuid4().hex[:6]}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
