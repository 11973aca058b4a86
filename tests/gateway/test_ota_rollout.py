"""Staged rollouts (gateway/ota/rollout.py, executor.py, store.py, `trackside ota rollout`):
the wave planning and the abort rule alone, then a fleet of real firmware devices on the
MicroPython unix port behind a real `trackside gateway run` (embedded broker, `ota:`
configured) and real Kafka, driven through the CLI."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from gateway.cli import build_app
from gateway.firmware_bundle import FIRMWARE
from gateway.localkafka import free_port
from gateway.ota import OtaError
from gateway.ota.push import Target
from gateway.ota.release import build_release
from gateway.ota.rollout import (
    AbortRule,
    DeviceProgress,
    RolloutPlan,
    abort_reason,
    assign_waves,
    parse_device,
    summarize,
)
from gateway.ota.store import RolloutStore
from gateway.topics import Topics
from tests.firmware.test_ota import Supervised
from tests.fixtures import micropython as micropython_fixture
from tests.fixtures.kafka import KafkaService
from tests.fixtures.micropython import UnixDevice, layout_board
from tests.fixtures.processes import LOG_ROOT, ServiceProcess
from tests.fixtures.waiting import wait_until

KEY = Ed25519PrivateKey.generate()
PUBLIC_HEX = KEY.public_key().public_bytes_raw().hex()
# Not the firmware tests' 51 KiB: since the status gained the device-twin fields, an app on
# probation (slots.py still loaded) at 51 KiB fails with MemoryError at its first status on
# some devices of a rollout (and, rolled back, again while its verdict waits, into safe mode).
# That is the firmware's heap budget, which tests/firmware measures; these tests are about the
# rollout, so their devices get room.
ROLLOUT_HEAP_BYTES = 64 * 1024


# -- the plan, unit -------------------------------------------------------------------------


def _plan(**fields: Any) -> RolloutPlan:
    return RolloutPlan.model_validate({"id": "r1", "release": "1.1.0-ab", "version": "1.1.0",
                                       **fields})


def _targets(n: int, train: str = "T1") -> list[Target]:
    return [Target(train, d) for d in range(1, n + 1)]


def test_waves_take_cumulative_percentages_after_the_canaries() -> None:
    plan = _plan(canaries=["T1/5"], waves=[10, 50, 100])
    waves = assign_waves(plan, _targets(11))
    assert waves[Target("T1", 5)] == 0
    by_wave: dict[int, list[int]] = {}
    for target, wave in waves.items():
        by_wave.setdefault(wave, []).append(target.device_id)
    # 10 non-canaries: ceil(1) by wave 1, ceil(5) by wave 2, all by wave 3, in device order.
    assert by_wave == {0: [5], 1: [1], 2: [2, 3, 4, 6], 3: [7, 8, 9, 10, 11]}
    # A gateway with few devices: a wave that rounds to no new device is empty.
    assert sorted(assign_waves(plan, _targets(2, "T9")).values()) == [1, 3]
    assert assign_waves(plan, []) == {}


def test_a_plan_says_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="rise to 100"):
        _plan(waves=[50, 10])
    with pytest.raises(ValueError, match="rise to 100"):
        _plan(waves=[10, 50])
    with pytest.raises(OtaError, match="TRAIN/DEVICE"):
        parse_device("T1-4")
    with pytest.raises(ValueError, match="TRAIN/DEVICE"):
        _plan(canaries=["nope"])
    selective = _plan(trains=["T1"], devices=["T2/3"], canaries=["T3/1"])
    assert [selective.selects(t) for t in (Target("T1", 9), Target("T2", 3), Target("T2", 4),
                                           Target("T3", 1))] == [True, True, False, True]
    assert _plan().selects(Target("T7", 1))  # no selection: every device


def _progress(state: str, device: int, wave: int = 1) -> DeviceProgress:
    return DeviceProgress(rollout="r1", train_id="T1", device_id=device, gateway="g",
                          wave=wave, state=state)


def test_the_abort_rule_counts_verdicts_from_its_minimum() -> None:
    plan = _plan(abort=AbortRule(min_devices=3, max_failure_pct=20))
    bad = [_progress("rolled_back", 1, 0), _progress("rolled_back", 2)]
    assert abort_reason(plan, bad) is None  # 2 verdicts: below the minimum
    assert abort_reason(plan, [*bad, _progress("fetching", 3)]) is None  # not a verdict
    reason = abort_reason(plan, [*bad, _progress("timed_out", 3)])
    assert reason is not None and reason.startswith("3 of 3 devices failed (100% > 20%)")
    good = [_progress("confirmed", d) for d in range(1, 10)]
    assert abort_reason(plan, [*good, _progress("refused", 10)]) is None  # 10% <= 20%
    assert abort_reason(plan, [*good[:3], _progress("refused", 10)]) is not None  # 25%
    counts = summarize([*bad, _progress("confirmed", 4)])
    assert (counts[0]["rolled_back"], counts[1]["rolled_back"], counts[1]["confirmed"]) == (1, 1, 1)


# -- a fleet behind a real gateway, integration ---------------------------------------------


class StatusWatch:
    """Each device's last status on the gateway's broker."""

    def __init__(self, host: str, port: int) -> None:
        self._lock = threading.Lock()
        self.last: dict[str, dict[str, Any]] = {}
        subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                   client_id=f"watch-{uuid.uuid4().hex[:8]}")
        self._client.on_connect = lambda c, *_: c.subscribe("trackside/v1/+/+/status", 1)
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.loop_start()
        if not subscribed.wait(30):
            raise AssertionError(f"could not subscribe on {host}:{port}")

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        train, device = msg.topic.split("/")[2:4]
        with self._lock:
            self.last[f"{train}/{device}"] = json.loads(msg.payload)

    def app(self, name: str) -> object:
        """The release the device says it runs (None before its first status)."""
        with self._lock:
            return self.last.get(name, {}).get("app")

    def close(self) -> None:
        """Leave the broker."""
        self._client.loop_stop()
        self._client.disconnect()


@dataclass
class Rig:
    """A gateway with `ota:` on its own topics, and its fleet of unix-port devices."""

    gateway: ServiceProcess
    bootstrap_servers: str
    prefix: str
    devices: dict[str, UnixDevice]
    supervised: dict[str, Supervised]
    watch: StatusWatch
    workdir: Path

    def cli(self, *args: str) -> str:
        """`trackside ota ARGS --bootstrap-servers ... --topic-prefix ...`; its output."""
        result = CliRunner().invoke(build_app(), ["ota", *args, "--bootstrap-servers",
                                                  self.bootstrap_servers, "--topic-prefix",
                                                  self.prefix])
        assert result.exit_code == 0, f"{args}: {result.output}\n{result.exception!r}"
        return result.output

    def rollout(self, bundle: Path, rollout_id: str, *options: str) -> None:
        """Start a rollout of `bundle` signed by KEY."""
        self.cli("rollout", str(bundle), "--id", rollout_id, "--public-key",
                 str(self.workdir / "release.pub"), *options)

    def history(self, rollout_id: str) -> list[DeviceProgress]:
        """Every progress record of the rollout so far, in the order written."""
        records: list[DeviceProgress] = []
        store = RolloutStore(self.bootstrap_servers, Topics.with_prefix(self.prefix),
                             with_releases=False, on_progress=records.append)
        try:
            store.catch_up()
        finally:
            store.close()
        return [p for p in records if p.rollout == rollout_id]

    def states(self, rollout_id: str) -> dict[str, str]:
        """Each device's last state."""
        return {f"{p.train_id}/{p.device_id}": p.state for p in self.history(rollout_id)}

    def plan_state(self, rollout_id: str) -> str:
        """What `trackside ota status` says of the rollout's state."""
        return self.cli("status", rollout_id).split("\n")[0].split()[2]


@pytest.fixture
def rig(
    tmp_path: Path, kafka: KafkaService, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Rig]]:
    """A gateway (`trackside gateway run` with `ota:`) and `n` devices on it: trains T1 and
    T2 (`first_train` 1), devices 1.. alternating between them, each restarted whenever it
    exits. Gateways made with the same `prefix` share the OTA topics."""
    monkeypatch.setattr(micropython_fixture, "HEAP_BYTES", ROLLOUT_HEAP_BYTES)
    made: list[Rig] = []

    def make(n: int, prefix: str = "", first_train: int = 1) -> Rig:
        mqtt_port, http_port = free_port(), free_port()
        prefix = prefix or f"ota-{uuid.uuid4().hex[:8]}"
        name = f"gw-{len(made)}"
        (tmp_path / "release.pub").write_text(PUBLIC_HEX)
        config = {
            "broker": {"port": mqtt_port},
            "connectors": [],
            "http": {"port": http_port},
            "ota": {"bootstrap_servers": kafka.bootstrap_servers,
                    "topics": Topics.with_prefix(prefix).model_dump(),
                    "public_key": "release.pub", "gateway_id": name,
                    "retry_s": 3, "discovery_s": 1},
        }
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        gateway = ServiceProcess(
            "gateway", [sys.executable, "-m", "gateway", "gateway", "run", "-c",
                        str(tmp_path / f"{name}.yaml")], "127.0.0.1", http_port,
            LOG_ROOT / f"gateway-{prefix}-{name}.log")
        gateway.start(60)
        devices: dict[str, UnixDevice] = {}
        for d in range(1, n + 1):
            train = f"T{first_train + d % 2}"  # the test's own broker: no other test's T1
            device_config = {
                "device_id": d, "train_id": train, "board": "unix",
                "broker": {"host": "127.0.0.1", "port": mqtt_port}, "sample_ms": 1000,
                "backoff_ms": [200, 2000], "keepalive_s": 10, "ota_key": PUBLIC_HEX,
                "sim": {"seed": d, "fault": None, "fault_start_s": 0.0},
            }
            board = LOG_ROOT / f"device-{prefix}-{train}-{d}"
            board.mkdir(parents=True)
            devices[f"{train}/{d}"] = UnixDevice(layout_board(board, device_config),
                                                 device_config)
        rig = Rig(gateway, kafka.bootstrap_servers, prefix, devices,
                  {name: Supervised(device) for name, device in devices.items()},
                  StatusWatch("127.0.0.1", mqtt_port), tmp_path)
        made.append(rig)
        wait_until(lambda: all(rig.watch.app(name) == "" for name in devices), 60,
                   "every device online, running the app deploy put at the root")
        return rig

    yield make
    for rig in made:
        for supervised in rig.supervised.values():
            supervised.close()
        for device in rig.devices.values():
            device.stop()
        rig.watch.close()
        rig.gateway.stop(30)


def _bundle(tmp_path: Path, version: str, app_prefix: str = "") -> Path:
    """A signed unix release; `app_prefix` goes at the top of its app.py."""
    firmware = None
    if app_prefix:
        firmware = tmp_path / f"firmware-{version}"
        shutil.copytree(FIRMWARE, firmware)
        source = firmware / "app.py"
        source.write_text(app_prefix + source.read_text())
    path = tmp_path / f"app-{version}.tar"
    path.write_bytes(build_release("unix", version, KEY, firmware))
    return path


def _first(history: list[DeviceProgress], state: str) -> dict[str, float]:
    """When each device first reached `state`."""
    seen: dict[str, float] = {}
    for p in history:
        if p.state == state:
            seen.setdefault(f"{p.train_id}/{p.device_id}", p.at)
    return seen


@pytest.mark.integration
def test_a_good_release_goes_canary_first_then_wave_by_wave(
    rig: Callable[..., Rig], tmp_path: Path
) -> None:
    r = rig(8)
    canary = sorted(r.devices)[0]
    r.rollout(_bundle(tmp_path, "1.1.0"), "good", "--canary", canary, "--waves", "25,50,100",
              "--abort-after", "3", "--max-failures", "20%", "--timeout", "120")
    wait_until(lambda: r.plan_state("good") == "done", 240, "the rollout done")
    states = r.states("good")
    assert states == dict.fromkeys(r.devices, "confirmed"), states
    wait_until(lambda: all(r.watch.app(n) == "1.1.0" for n in r.devices), 30,
               "every device's status showing the new release")
    history = r.history("good")
    waves = {f"{p.train_id}/{p.device_id}": p.wave for p in history}
    assert waves[canary] == 0 and sorted(waves.values()) == [0, 1, 1, 2, 2, 3, 3, 3]
    offered, confirmed = _first(history, "offered"), _first(history, "confirmed")
    for name, wave in waves.items():
        earlier = [n for n, w in waves.items() if w < wave]
        # Each wave is offered only once every device of the waves before it has its verdict.
        assert all(confirmed[n] <= offered[name] for n in earlier), (name, history)
    table = r.cli("status", "good")
    assert "canary" in table and "3 (100%)" in table and "confirmed" in table
    with urllib.request.urlopen(f"http://127.0.0.1:{r.gateway.port}/status", timeout=10) as got:
        worker = json.loads(got.read())["workers"]["ota"]
    assert (worker["state"], worker["restarts"]) == ("running", 0), worker
    # The same release again: every device already runs it, so none is updated (or rebooted).
    boots = {name: s.starts for name, s in r.supervised.items()}
    r.rollout(tmp_path / "app-1.1.0.tar", "again", "--waves", "100")
    wait_until(lambda: r.plan_state("again") == "done", 60, "the second rollout done")
    assert {p.detail for p in r.history("again") if p.state == "confirmed"} == {
        "already running this release"}
    assert {name: s.starts for name, s in r.supervised.items()} == boots


@pytest.mark.integration
def test_a_release_that_fails_at_import_aborts_at_the_threshold(
    rig: Callable[..., Rig], tmp_path: Path
) -> None:
    r = rig(8)
    canary = sorted(r.devices)[0]
    broken = _bundle(tmp_path, "6.6.6", 'raise RuntimeError("broken release")\n')
    # One canary, then 2 of the other 7 in wave 1: the third verdict crosses the threshold.
    r.rollout(broken, "bad", "--canary", canary, "--waves", "25,100", "--abort-after", "3",
              "--max-failures", "50%", "--timeout", "120")
    wait_until(lambda: r.plan_state("bad") == "aborted", 240, "the rollout aborted")
    status = " ".join(r.cli("status", "bad").split())  # as one line, however rich wraps it
    assert "3 of 3 devices failed (100% > 50%)" in status, status
    history = r.history("bad")
    waves = {f"{p.train_id}/{p.device_id}": p.wave for p in history}
    offered = set(_first(history, "offered"))
    assert offered == {n for n, w in waves.items() if w <= 1} and canary in offered
    states = r.states("bad")
    assert all(states[n] == "rolled_back" for n in offered), states
    assert "broken release" in " ".join(p.detail for p in history)
    untouched = set(r.devices) - offered
    assert len(untouched) == 5 and all(states[n] == "pending" for n in untouched)
    wait_until(lambda: all(r.watch.app(n) == "" for n in r.devices), 30,
               "every device back on (or still on) the app deploy put at the root")
    for name in untouched:  # never offered: no slot, no update state on its flash
        board = r.devices[name].board_dir
        assert not (board / "ota.json").exists() and not (board / "a").exists()


@pytest.mark.integration
def test_pause_stops_new_offers_and_a_restarted_gateway_resumes_without_offering_again(
    rig: Callable[..., Rig], tmp_path: Path
) -> None:
    r = rig(4)
    canary = sorted(r.devices)[0]
    r.rollout(_bundle(tmp_path, "1.2.0"), "paused", "--canary", canary, "--timeout", "120")
    wait_until(lambda: canary in _first(r.history("paused"), "offered"), 60, "the canary offered")
    r.cli("pause", "paused")
    assert r.plan_state("paused") == "paused"
    # The canary, offered before the pause, carries on to its verdict; nothing else starts
    # (running, the next wave would be offered within 0.2 s of that verdict, the executor's
    # tick: 2 s is ten of them).
    wait_until(lambda: r.states("paused")[canary] == "confirmed", 120, "the canary's verdict")
    with pytest.raises(AssertionError, match="an offer while paused"):
        wait_until(lambda: set(_first(r.history("paused"), "offered")) != {canary}, 2,
                   "an offer while paused")
    # A gateway restarted mid-rollout reads the progress back; confirmed devices stay so.
    canary_boots = r.supervised[canary].starts
    r.gateway.stop(30)
    r.gateway.start(60)
    r.cli("resume", "paused")
    wait_until(lambda: r.plan_state("paused") == "done", 240, "the rollout done")
    assert r.states("paused") == dict.fromkeys(r.devices, "confirmed")
    assert r.supervised[canary].starts == canary_boots  # not offered (nor rebooted) again
    canary_states = [p.state for p in r.history("paused")
                     if f"{p.train_id}/{p.device_id}" == canary]
    assert canary_states.count("confirmed") == 1, canary_states
    wait_until(lambda: all(r.watch.app(n) == "1.2.0" for n in r.devices), 30, "new release")


@pytest.mark.integration
def test_an_abort_on_one_gateway_stops_the_others(
    rig: Callable[..., Rig], tmp_path: Path
) -> None:
    near = rig(2)  # T1/2 (the canary) and T2/1
    far = rig(2, prefix=near.prefix, first_train=3)  # T3/2 and T4/1, on another gateway
    broken = _bundle(tmp_path, "6.6.6", 'raise RuntimeError("broken release")\n')
    near.rollout(broken, "central", "--canary", "T1/2", "--abort-after", "1",
                 "--max-failures", "0%", "--timeout", "120")
    wait_until(lambda: near.plan_state("central") == "aborted", 120, "the rollout aborted")
    history = near.history("central")
    assert {p.gateway for p in history} == {"gw-0", "gw-1"}  # both took it up
    states = near.states("central")
    # The far gateway waited for the canary it does not serve, then saw the abort.
    assert states == {"T1/2": "rolled_back", "T2/1": "pending", "T3/2": "pending",
                      "T4/1": "pending"}, states
    assert set(_first(history, "offered")) == {"T1/2"}
    wait_until(lambda: all(far.watch.app(n) == "" for n in far.devices), 30, "far untouched")
