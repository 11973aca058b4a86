"""The firmware on the MicroPython unix port against real brokers: readings, outage, commands."""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import Callable

import pytest

from firmware import wire
from tests.fixtures.micropython import UnixDevice
from tests.fixtures.mqtt import BrokerHandle

from .conftest import Observer

pytestmark = pytest.mark.integration

Boot = Callable[..., UnixDevice]
Observe = Callable[[BrokerHandle, UnixDevice], Observer]


def _booted(broker: BrokerHandle, unix_device: Boot, observe: Observe, **cfg: object) -> Observer:
    device = unix_device(broker, boot=False, **cfg)
    observer = observe(broker, device)
    device.start()
    return observer


def _last_seq(observer: Observer) -> int:
    return max((r[3] for r in observer.readings()), default=-1)


def test_readings_decode_as_the_bridge_decodes_them(
    mqtt_broker: BrokerHandle, unix_device: Boot, observe: Observe
) -> None:
    obs = _booted(mqtt_broker, unix_device, observe)
    readings = obs.wait(lambda: len(obs.readings()) >= 10 and obs.readings(), "10 readings")
    flags, device_id, boot_id, _, ts_ms, values = readings[0]
    assert device_id == 42 and flags & wire.FLAG_WALL_CLOCK
    assert abs(ts_ms - time.time() * 1000) < 60_000
    assert [r[3] for r in readings[:10]] == list(range(10))
    assert {r[2] for r in readings} == {boot_id}
    assert set(values) == set(wire.CHANNEL_IDS)
    assert 20.0 < values["supply_voltage"] / wire.scale("supply_voltage") < 30.0
    status = obs.wait(lambda: obs.json("status"), "the retained status")[-1]
    assert status["state"] == "online" and status["boot_id"] == boot_id and status["fw"]


def test_broker_restart_loses_no_reading(
    mosquitto_factory: Callable[..., BrokerHandle], unix_device: Boot, observe: Observe
) -> None:
    broker = mosquitto_factory()
    obs = _booted(broker, unix_device, observe)
    obs.wait(lambda: _last_seq(obs) >= 10, "10 readings before the restart")
    broker.stop()
    time.sleep(3)  # the device keeps sampling into its outbox meanwhile (not an assertion)
    broker.start()
    before = _last_seq(obs)
    obs.wait(lambda: _last_seq(obs) >= before + 30, "readings after the restart")
    seqs = {r[3] for r in obs.readings()}
    missing = sorted(set(range(max(seqs) + 1)) - seqs)
    assert not missing, f"readings lost across the broker restart: {missing}"
    assert "mqtt:" in obs.device.log()  # it did notice the outage and reconnect


def test_disable_stops_telemetry_and_enable_resumes_it(
    mqtt_broker: BrokerHandle, unix_device: Boot, observe: Observe
) -> None:
    obs = _booted(mqtt_broker, unix_device, observe)
    obs.wait(lambda: len(obs.readings()) >= 3, "first readings")
    obs.send("cmd", json.dumps({"id": "d1", "op": "disable"}))
    reply = obs.wait(lambda: obs.json("reply"), "the reply to disable")[0]
    assert reply == {"id": "d1", "ok": True, "state": "disabled"}
    obs.wait(lambda: any(s["state"] == "disabled" for s in obs.json("status")), "status disabled")
    quiet_from = time.monotonic() + 1.0  # readings already in flight may still land
    time.sleep(3.0)  # fifteen sample periods of silence
    assert obs.readings(since=quiet_from) == []
    obs.send("cmd", json.dumps({"id": "e1", "op": "enable"}))
    obs.wait(lambda: len(obs.json("reply")) == 2, "the reply to enable")
    assert obs.json("reply")[1] == {"id": "e1", "ok": True, "state": "online"}
    resumed = time.monotonic()
    obs.wait(lambda: len(obs.readings(since=resumed)) >= 3, "telemetry after enable")
    assert obs.json("status")[-1]["state"] == "online"


def test_retained_config_changes_rate_and_channels(
    mosquitto: BrokerHandle, unix_device: Boot, observe: Observe
) -> None:
    obs = _booted(mosquitto, unix_device, observe)
    obs.wait(lambda: len(obs.readings()) >= 5, "readings at 200 ms")
    obs.send("config", json.dumps({"sample_ms": 1000, "enable": {"speed": False}}), retain=True)
    obs.wait(lambda: len(_without_speed(obs)) >= 5, "five readings at the new config")
    slow = _without_speed(obs)
    gaps = [b[4] - a[4] for a, b in itertools.pairwise(slow)]
    assert 800 <= statistics.median(gaps) <= 1300, gaps
    fast = [r for r in obs.readings() if "speed" in r[5]]
    fast_gaps = [b[4] - a[4] for a, b in itertools.pairwise(fast)]
    assert statistics.median(fast_gaps) < 500, fast_gaps


def _without_speed(obs: Observer) -> list[tuple[int, int, int, int, int, dict[str, int]]]:
    return [r for r in obs.readings() if "speed" not in r[5]]


def test_malformed_commands_get_error_replies_and_the_device_keeps_running(
    mqtt_broker: BrokerHandle, unix_device: Boot, observe: Observe
) -> None:
    obs = _booted(mqtt_broker, unix_device, observe)
    obs.wait(lambda: len(obs.readings()) >= 3, "first readings")
    obs.send("cmd", b"\xff not json")
    obs.send("cmd", json.dumps({"op": "disable"}))
    obs.send("cmd", json.dumps({"id": "x1", "op": "explode"}))
    obs.send("cmd", json.dumps([1, 2]))
    replies = obs.wait(lambda: len(obs.json("reply")) >= 4 and obs.json("reply"), "four replies")
    assert [r["ok"] for r in replies] == [False] * 4
    assert all(r["error"] and r["state"] == "online" for r in replies), replies
    assert replies[2]["id"] == "x1" and "explode" in replies[2]["error"]
    after = time.monotonic()
    obs.wait(lambda: len(obs.readings(since=after)) >= 5, "telemetry after the bad commands")


def test_full_outbox_drops_the_oldest_and_reports_the_count(
    mosquitto_factory: Callable[..., BrokerHandle], unix_device: Boot, observe: Observe
) -> None:
    broker = mosquitto_factory()
    device = unix_device(broker, boot=False, outbox=8)
    obs = observe(broker, device)  # a persistent session: it misses nothing while it is away
    broker.stop()
    device.start()
    time.sleep(4)  # twenty sample periods with no broker: the outbox of 8 overflows
    broker.start()
    status = obs.wait(lambda: [s for s in obs.json("status") if s["dropped"]], "status")[0]
    assert status["dropped"] >= 8 and status["outbox"] == 8  # at connect: full, oldest gone
    obs.wait(lambda: _last_seq(obs) >= status["seq"] + 20, "readings after the outage")
    seqs = sorted({r[3] for r in obs.readings()})
    # The oldest readings went (one more may go between the status and the first publish);
    # from the oldest kept one on, nothing is missing.
    assert status["dropped"] <= seqs[0] <= status["dropped"] + 1
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), seqs


def test_ctrl_c_stops_the_app_with_no_watchdog_armed(
    mqtt_broker: BrokerHandle, unix_device: Boot, observe: Observe
) -> None:
    obs = _booted(mqtt_broker, unix_device, observe)
    obs.wait(lambda: len(obs.readings()) >= 3, "first readings")
    assert obs.device.interrupt() == 0
    assert "stopped; no watchdog armed" in obs.device.log()
