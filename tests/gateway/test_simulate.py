"""The simulator's fleet spec, devices and scenarios, without a broker."""

from __future__ import annotations

import json
import random

import pytest

from bridge.wire_decoder import decode
from firmware import wire
from gateway.simulate.device import SimDevice
from gateway.simulate.fleet import FaultAssignment, FleetSpec, SimulateError, fleet_spec
from gateway.simulate.scenarios import CLOCK_SKEW_MS, malformed_frame


def test_device_ids_are_unique_and_follow_the_train_numbers() -> None:
    spec = FleetSpec(trains=20, devices_per_train=3)
    devices = spec.devices()
    assert spec.train_ids()[0] == "T101" and spec.train_ids()[-1] == "T120"
    assert [d.device_id for d in devices[:4]] == [10101, 10102, 10103, 10201]
    assert len({d.device_id for d in devices}) == 60
    assert devices == FleetSpec(trains=20, devices_per_train=3).devices()  # deterministic


@pytest.mark.parametrize(
    ("text", "train", "scenario", "start"),
    [
        ("T103:bearing_overheat_gradual@30", "T103", "bearing_overheat_gradual", 30.0),
        ("*:malformed_frames", None, "malformed_frames", 0.0),
        ("reconnect_storm@2.5", None, "reconnect_storm", 2.5),
    ],
)
def test_fault_syntax(text: str, train: str | None, scenario: str, start: float) -> None:
    assert FaultAssignment.parse(text) == FaultAssignment(
        train_id=train, scenario=scenario, start_s=start
    )


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        (["T103:melting@1"], "unknown scenario"),
        (["T999:coolant_loss"], "T101..T120"),
        (["T101:reconnect_storm"], "whole fleet"),
        (["T101:coolant_loss", "T101:vibration_growth"], "two sensor-model faults"),
        (["T101:coolant_loss@-1"], "TRAIN:SCENARIO@SECONDS"),
    ],
)
def test_bad_faults_say_what_to_change(faults: list[str], message: str) -> None:
    with pytest.raises(SimulateError, match=message):
        fleet_spec(trains=20, faults=tuple(FaultAssignment.parse(f) for f in faults))


def test_faults_reach_only_their_train() -> None:
    spec = fleet_spec(
        trains=3,
        faults=(
            FaultAssignment.parse("T102:coolant_loss@30"),
            FaultAssignment.parse("clock_skew@5"),
        ),
    )
    by_train = {d.train_id: d for d in spec.devices()}
    assert by_train["T102"].fault == "coolant_loss" and by_train["T102"].fault_start_s == 30
    assert by_train["T101"].fault is None
    assert all(d.scenarios == {"clock_skew": 5.0} for d in by_train.values())


def test_readings_decode_with_contiguous_seq_and_skewed_clock() -> None:
    spec = fleet_spec(trains=1, faults=(FaultAssignment.parse("clock_skew@3"),))
    device = SimDevice(spec.devices()[0], "trackside", step_s=1.0)
    decoded = [decode(device.reading(1_767_225_600_000)[0]) for _ in range(5)]
    assert [d[3] for d in decoded] == [0, 1, 2, 3, 4]
    assert {d[1] for d in decoded} == {10101} and {d[2] for d in decoded} == {device.boot_id}
    assert [d[4] - 1_767_225_600_000 for d in decoded] == [0, 0, CLOCK_SKEW_MS, CLOCK_SKEW_MS,
                                                           CLOCK_SKEW_MS]
    assert set(decoded[0][5]) == {name for name, _, _ in wire.CHANNELS}


@pytest.mark.parametrize("n", range(25))
def test_malformed_frames_are_rejected_by_the_codec(n: int) -> None:
    good = wire.encode(10101, 7, n, 1_767_225_600_000, {"engine_temp": 873, "speed": 1234})
    with pytest.raises(wire.WireError):
        decode(malformed_frame(good, n, random.Random(n)))


def test_commands_behave_as_the_firmware() -> None:
    device = SimDevice(FleetSpec(trains=1).devices()[0], "trackside", step_s=1.0)
    reply, changed = device.command(b'{"id": "r1", "op": "disable"}')
    assert json.loads(reply) == {"id": "r1", "ok": True, "state": "disabled"} and changed
    assert json.loads(device.status())["state"] == "disabled"
    assert device.command(b'{"id": "r2", "op": "disable"}')[1] is False
    reply, _ = device.command(b'{"id": "r3", "op": "fly"}')
    assert json.loads(reply)["ok"] is False and "unknown op" in json.loads(reply)["error"]
    reply, _ = device.command(b"not json")
    assert json.loads(reply)["id"] is None and json.loads(reply)["ok"] is False
    device.reading(0)
    reply, changed = device.command(b'{"id": "r4", "op": "reboot"}')
    assert changed and device.seq == 0 and json.loads(reply)["ok"]
    assert device.command(b'{"id": "r5", "op": "enable"}')[1] is True and device.enabled


def test_a_disabled_train_stands_cools_and_runs_healthy_once_enabled() -> None:
    """The demo's story: T104's seized bearing flags and disables it; held, it cools under
    every default bearing level within about five minutes; enabled, it stays cool."""
    spec = fleet_spec(trains=1, faults=(FaultAssignment.parse("T101:bearing_overheat_sudden@0"),))
    device = SimDevice(spec.devices()[0], "trackside", step_s=1.0)

    def over_ambient() -> tuple[float, float]:
        left, right, ambient = (
            device.channel(c) for c in ("bearing_left_temp", "bearing_right_temp", "ambient_temp")
        )
        assert left is not None and right is not None and ambient is not None
        return left - ambient, left - right

    for _ in range(60):
        device.reading(0)
    assert over_ambient()[0] > 111  # past bearing_critical
    device.command(b'{"id": "d", "op": "disable"}')
    for _ in range(300):
        device.rest()
    relative, difference = over_ambient()
    # under every default bearing level (94 over ambient, 53 between the pair): after a clear,
    # from fresh rule state, nothing fires again
    assert relative < 94 and difference < 53
    assert device.channel("speed") == 0.0
    device.command(b'{"id": "e", "op": "enable"}')
    for _ in range(900):
        device.reading(0)
    relative, difference = over_ambient()
    assert relative < 60 and difference < 30  # running again, and no fault heat comes back


def test_the_status_has_the_firmwares_fields_and_an_update_is_refused() -> None:
    device = SimDevice(FleetSpec(trains=1).devices()[0], "trackside", step_s=1.0)
    status = json.loads(device.status())
    assert {"app", "slot", "cfg"} <= set(status) and status["cfg"] == 0
    assert "heap" not in status and "rssi" not in status  # no MicroPython heap, no radio
    reply, changed = device.command(b'{"id": "u1", "op": "ota", "m": "{}", "sig": "00"}')
    assert json.loads(reply) == {
        "id": "u1", "ok": False, "state": "online", "ota": "refused",
        "error": "a simulated device cannot be updated over the air"}
    assert not changed
