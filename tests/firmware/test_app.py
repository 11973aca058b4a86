"""The firmware on the MicroPython unix port against real brokers: readings, outage, commands."""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import Callable

import pytest

from bridge.wire_decoder import decode
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
    obs.wait(lambda: "retry in" in obs.device.log(), "the device to notice the outage")
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


def _outage(broker: BrokerHandle, unix_device: Boot, observe: Observe, **cfg: object) -> Observer:
    """Boot a device with its broker down; start the broker once the outbox overflows."""
    device = unix_device(broker, boot=False, **cfg)
    obs = observe(broker, device)  # a persistent session: it misses nothing while it is away
    broker.stop()
    device.start()
    obs.wait(lambda: "outbox full" in device.log(), "the outbox to overflow")
    broker.start()
    return obs


def test_every_gap_is_reported_before_the_readings_after_it(
    mosquitto_factory: Callable[..., BrokerHandle], unix_device: Boot, observe: Observe
) -> None:
    obs = _outage(mosquitto_factory(), unix_device, observe, outbox=8, sample_ms=100)
    status = obs.wait(lambda: obs.json("status"), "the status at connect")[0]
    obs.wait(lambda: _last_seq(obs) >= status["seq"] + 20, "readings after the outage")
    # In the order the observer got them: each reading comes after a status whose drop count
    # covers every sequence number missing below it (the dropped readings are the oldest).
    reported, seen = 0, set[int]()
    for topic, payload, _ in list(obs.messages):
        if topic == obs.device.topic("status"):
            reported = max(reported, json.loads(payload)["dropped"])
        elif topic == obs.device.topic("telemetry"):
            seq = decode(payload)[3]
            missing = seq - len({s for s in seen if s < seq})
            assert missing <= reported, (
                f"reading {seq} came with {missing} missing below it, {reported} reported dropped"
            )
            seen.add(seq)
    assert reported and reported == max(seen) + 1 - len(seen)  # the count is exact
    assert sorted(seen) == list(range(reported, max(seen) + 1))  # the oldest went, no others


def test_the_outbox_drains_fast_and_sampling_keeps_its_schedule(
    mosquitto_factory: Callable[..., BrokerHandle], unix_device: Boot, observe: Observe
) -> None:
    # A status every 200 ms reports the outbox and the uptime as the device sees them, so the
    # drain is timed on the device, whenever the observer gets the messages.
    obs = _outage(mosquitto_factory(), unix_device, observe, outbox=128, sample_ms=50,
                  status_ms=200)
    online = obs.wait(lambda: [s for s in obs.json("status") if s["outbox"] == 128], "status")[0]
    later = obs.wait(
        lambda: [s for s in obs.json("status") if s["uptime_s"] >= online["uptime_s"] + 2],
        "a status 1-2 s after the connect",
    )[0]
    # umqtt.simple as it was drained 22 readings/s, and sampled 1.4/s meanwhile (issue 9)
    assert later["outbox"] <= 1, f"128 readings not sent within 2 s of the connect: {later}"
    obs.wait(lambda: _last_seq(obs) >= online["seq"] + 60, "readings after the drain")
    after = sorted((r[3], r[4]) for r in obs.readings() if r[3] >= online["seq"])
    gaps = [b[1] - a[1] for a, b in itertools.pairwise(after)]
    assert max(gaps) <= 250, f"sampling fell behind its 50 ms schedule while draining: {gaps}"


def test_ctrl_c_stops_the_app_with_no_watchdog_armed(
    mqtt_broker: BrokerHandle, unix_device: Boot, observe: Observe
) -> None:
    obs = _booted(mqtt_broker, unix_device, observe)
    obs.wait(lambda: len(obs.readings()) >= 3, "first readings")
    assert obs.device.interrupt() == 0
    assert "stopped; no watchdog armed" in obs.device.log()
