"""Over-the-air updates end to end: the real firmware on the MicroPython unix port, the embedded
broker, `gateway.ota.push` as `trackside ota push` runs it. A device that exits (a reboot, a
crash) is started again at once, as a supervisor or a board's reset would; SIGKILL is a power
loss at that moment."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from gateway.cli import build_app
from gateway.firmware_bundle import FIRMWARE
from gateway.ota.push import DeviceUpdate, Push, Target
from gateway.ota.release import Release, build_release, read_release
from tests.firmware.conftest import Observer
from tests.fixtures.micropython import UnixDevice
from tests.fixtures.mqtt import BrokerHandle
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.integration

KEY = Ed25519PrivateKey.generate()
PUBLIC_HEX = KEY.public_key().public_bytes_raw().hex()


class Supervised:
    """Starts the device again whenever it exits, until closed."""

    def __init__(self, device: UnixDevice) -> None:
        self.device = device
        self.starts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            if not self.device.running():
                self.device.start()
                self.starts += 1

    def close(self) -> None:
        """Stop restarting; the fixture powers the device off."""
        self._stop.set()
        self._thread.join()


@dataclass
class OtaRig:
    """One device on the embedded broker, supervised and observed."""

    broker: BrokerHandle
    device: UnixDevice
    observer: Observer
    supervised: Supervised
    threads: list[threading.Thread] = field(default_factory=list)

    def push(self, release: Release, timeout_s: float = 60) -> DeviceUpdate:
        """Push and wait for the verdict."""
        target = Target(self.device.train_id, self.device.device_id)
        pusher = Push(release, [target], self.broker.host, self.broker.port, timeout_s=timeout_s,
                      retry_s=3)
        return pusher.run()[0]

    def push_in_background(self, release: Release) -> list[DeviceUpdate]:
        """Start a push; the list gets its verdict."""
        verdict: list[DeviceUpdate] = []
        thread = threading.Thread(target=lambda: verdict.extend(self._run(release)), daemon=True)
        thread.start()
        self.threads.append(thread)
        return verdict

    def _run(self, release: Release) -> list[DeviceUpdate]:
        target = Target(self.device.train_id, self.device.device_id)
        return Push(release, [target], self.broker.host, self.broker.port, timeout_s=90,
                    retry_s=3).run()

    def replies(self) -> list[dict[str, object]]:
        """The device's update replies so far."""
        return [r for r in self.observer.json("reply") if "ota" in r]

    def status(self) -> dict[str, object]:
        """The device's last status."""
        statuses = self.observer.json("status")
        return statuses[-1] if statuses else {}


@pytest.fixture
def rig(
    amqtt_broker: BrokerHandle,
    unix_device: Callable[..., UnixDevice],
    observe: Callable[[BrokerHandle, UnixDevice], Observer],
) -> Iterator[Callable[..., OtaRig]]:
    """A device that trusts KEY, on the embedded broker unless given another."""
    rigs: list[OtaRig] = []

    def make(broker: BrokerHandle | None = None, **overrides: object) -> OtaRig:
        broker = broker or amqtt_broker
        device = unix_device(broker, boot=False, ota_key=PUBLIC_HEX, **overrides)
        observer = observe(broker, device)
        made = OtaRig(broker, device, observer, Supervised(device))
        rigs.append(made)
        wait_until(lambda: made.status().get("state") == "online", 30, "the device online")
        return made

    yield make
    for made in rigs:
        made.supervised.close()
        for thread in made.threads:
            thread.join(120)


# An app prefix whose link dials a port where nothing listens: it runs, but never connects.
NEVER_CONNECTS = (
    "from link import Link\n"
    "_init = Link.__init__\n"
    "def _nowhere(self, cfg, *rest):\n"
    "    cfg['broker']['port'] = 1\n"
    "    _init(self, cfg, *rest)\n"
    "Link.__init__ = _nowhere\n"
)


def _release(version: str, tmp_path: Path, app_prefix: str = "",
             key: Ed25519PrivateKey = KEY) -> Release:
    """A signed unix release; `app_prefix` goes at the top of its app.py."""
    firmware = None
    if app_prefix:
        firmware = tmp_path / f"firmware-{version}"
        shutil.copytree(FIRMWARE, firmware)
        source = firmware / "app.py"
        source.write_text(app_prefix + source.read_text())
    return read_release(build_release("unix", version, key, firmware))


def test_an_update_is_fetched_switched_and_confirmed(
    rig: Callable[..., OtaRig], tmp_path: Path
) -> None:
    r = rig()
    release = _release("1.1.0", tmp_path)
    verdict = r.push(release)
    assert verdict.state == "confirmed", verdict
    assert verdict.fetched == release.size
    wait_until(lambda: r.status().get("app") == "1.1.0", 30, "status from the new release")
    assert r.status()["slot"] == "a"
    state = json.loads((r.device.board_dir / "ota.json").read_text())
    assert (state["slot"], state["good"], state["trial"], state["fails"]) == ("a", "a", 0, 0)
    assert not (r.device.board_dir / "ota.try").exists()  # the boot passed its health check
    # The next release goes to the other slot; the first stays as the one to fall back on.
    assert r.push(_release("1.2.0", tmp_path)).state == "confirmed"
    state = json.loads((r.device.board_dir / "ota.json").read_text())
    assert (state["slot"], state["ver"]) == ("b", "1.2.0")
    before = len(r.observer.readings())
    wait_until(lambda: len(r.observer.readings()) > before + 3, 30, "readings from 1.2.0")
    # An offer of the release it runs (one repeated while it rebooted into it): confirmed at
    # once, and no reboot into the update client.
    starts = r.supervised.starts
    r.observer.send("cmd", json.dumps({"id": "again", "op": "ota", "version": "1.2.0"}))
    wait_until(lambda: any(x.get("id") == "again" for x in r.replies()), 30, "the answer")
    answer = next(x for x in r.replies() if x.get("id") == "again")
    assert (answer["ok"], answer["ota"], answer["why"]) == (
        True, "confirmed", "already running this release")
    assert r.supervised.starts == starts and not (r.device.board_dir / "ota.offer").exists()


def test_the_push_command_updates_a_device_and_says_so(
    rig: Callable[..., OtaRig], tmp_path: Path
) -> None:
    r = rig()
    bundle = tmp_path / "app-1.1.0-unix.tar"
    bundle.write_bytes(build_release("unix", "1.1.0", KEY))
    (tmp_path / "release.pub").write_text(PUBLIC_HEX + "\n")
    result = CliRunner().invoke(build_app(), [
        "ota", "push", str(bundle), "--train", r.device.train_id, "--device",
        str(r.device.device_id), "--host", r.broker.host, "--port", str(r.broker.port),
        "--public-key", str(tmp_path / "release.pub"), "--timeout", "60"])
    assert result.exit_code == 0, result.output
    assert "confirmed" in result.output


def test_an_update_through_mosquitto(
    rig: Callable[..., OtaRig], mosquitto: BrokerHandle, tmp_path: Path
) -> None:
    r = rig(mosquitto)
    assert r.push(_release("1.1.0", tmp_path)).state == "confirmed"
    wait_until(lambda: r.status().get("app") == "1.1.0", 30, "status from the new release")


def test_a_release_that_raises_at_import_is_rolled_back(
    rig: Callable[..., OtaRig], tmp_path: Path
) -> None:
    r = rig()
    verdict = r.push(_release("6.6.6", tmp_path, 'raise RuntimeError("broken release")\n'))
    assert verdict.state == "rolled_back", verdict
    assert verdict.detail == "RuntimeError: broken release"
    wait_until(lambda: r.status().get("state") == "online", 30, "the old app online")
    assert (r.status()["app"], r.status()["slot"]) == ("", "")
    assert "ota: rolled back: RuntimeError: broken release" in r.device.log()


def test_a_release_that_never_passes_its_health_check_is_rolled_back_at_the_deadline(
    rig: Callable[..., OtaRig], tmp_path: Path
) -> None:
    r = rig(ota_probation_s=3)
    verdict = r.push(_release("7.0.0", tmp_path, NEVER_CONNECTS))
    assert verdict.state == "rolled_back", verdict
    assert verdict.detail == "no health check within 3 s"
    assert (r.status()["app"], r.status()["slot"]) == ("", "")


def test_a_release_signed_by_another_key_is_refused(
    rig: Callable[..., OtaRig], tmp_path: Path
) -> None:
    r = rig()
    verdict = r.push(_release("1.1.0", tmp_path, key=Ed25519PrivateKey.generate()))
    assert verdict.state == "refused"
    assert verdict.detail == "signature: not signed by this fleet's release key"
    wait_until(lambda: r.status().get("state") == "online", 30, "the app online again")
    assert not (r.device.board_dir / "a" / "app.mpy").exists()


def test_a_changed_manifest_byte_is_refused(rig: Callable[..., OtaRig], tmp_path: Path) -> None:
    r = rig()
    good = _release("1.1.0", tmp_path)
    tampered = Release(good.manifest_bytes.replace(b"1.1.0", b"1.1.1"), good.signature,
                       good.files)
    assert r.push(tampered).state == "refused"


def test_a_changed_file_byte_is_never_installed(
    rig: Callable[..., OtaRig], tmp_path: Path
) -> None:
    r = rig()
    good = _release("1.1.0", tmp_path)
    files = dict(good.files)
    body = bytearray(files["app.mpy"])
    body[100] ^= 1
    files["app.mpy"] = bytes(body)
    verdict = r.push(Release(good.manifest_bytes, good.signature, files))
    assert verdict.state == "abandoned"
    assert verdict.detail == "app.mpy failed its SHA-256 check 4 times"
    wait_until(lambda: r.status().get("state") == "online", 30, "the old app online")
    assert r.status()["app"] == ""


def test_power_lost_mid_download_resumes_where_it_stopped(
    rig: Callable[..., OtaRig], tmp_path: Path
) -> None:
    r = rig(ota_chunk=256)
    release = _release("1.1.0", tmp_path)
    verdict = r.push_in_background(release)

    def far_enough() -> bool:
        return any(g.get("ota") == "get" and int(str(g["f"])) >= 3 for g in r.replies())

    wait_until(far_enough, 60, "the device fetching its fourth file")
    starts = r.supervised.starts
    r.device.stop()  # SIGKILL: power lost mid-download
    wait_until(lambda: r.supervised.starts > starts, 10, "the device powered on again")
    wait_until(lambda: bool(verdict), 90, "the verdict")
    assert verdict[0].state == "confirmed", verdict
    gets = [(int(str(g["f"])), int(str(g["o"]))) for g in r.replies() if g.get("ota") == "get"]
    restarts = [i for i in range(1, len(gets)) if gets[i] <= gets[i - 1]]
    assert restarts, gets
    # After the power loss it asked for what was missing, not for the release from the start.
    assert all(gets[i] >= (3, 0) for i in restarts), gets
    assert gets.count((0, 0)) == 1


def test_power_lost_mid_switch_boots_and_ends_on_the_release(
    rig: Callable[..., OtaRig], tmp_path: Path
) -> None:
    r = rig()
    verdict = r.push_in_background(_release("1.1.0", tmp_path))
    wait_until(lambda: any(g.get("ota") == "switching" for g in r.replies()), 60, "the switch")
    r.device.stop()  # SIGKILL while it switches slots
    wait_until(lambda: bool(verdict), 90, "the verdict")
    assert verdict[0].state in ("confirmed", "rolled_back"), verdict
    wait_until(lambda: r.status().get("state") == "online", 30, "an app online")
    assert r.status()["app"] in ("1.1.0", "")


def test_power_lost_on_probation_boots_the_previous_app_and_says_why(
    rig: Callable[..., OtaRig], tmp_path: Path
) -> None:
    r = rig(ota_probation_s=60)
    # A release that never connects stays on probation (until 60 s): time to pull the plug.
    verdict = r.push_in_background(_release("7.0.0", tmp_path, NEVER_CONNECTS))
    state_file, trying = r.device.board_dir / "ota.json", r.device.board_dir / "ota.try"

    def on_probation() -> bool:
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            return False
        return bool(state.get("trial")) and state.get("slot") == "a" and trying.exists()

    wait_until(on_probation, 60, "the release booted on probation")
    starts = r.supervised.starts
    r.device.stop()  # SIGKILL: power lost before the new app passed its health check
    wait_until(lambda: r.supervised.starts > starts, 10, "the device powered on again")
    wait_until(lambda: bool(verdict), 60, "the verdict")
    assert verdict[0].state == "rolled_back", verdict
    assert "reset" in verdict[0].detail, verdict  # why: it went down on probation
    wait_until(lambda: r.status().get("state") == "online", 30, "the previous app online")
    assert (r.status()["app"], r.status()["slot"]) == ("", "")


def test_safe_mode_after_ten_failed_boots_runs_the_update_client_only(
    rig: Callable[..., OtaRig], tmp_path: Path
) -> None:
    r = rig()
    r.supervised.close()
    r.device.stop()
    (r.device.board_dir / "ota.json").write_text(json.dumps({"fails": 9}))
    (r.device.board_dir / "ota.try").touch()  # and the boot before did not pass either
    r.supervised = Supervised(r.device)
    wait_until(lambda: r.status().get("state") == "safe", 30, "safe mode")
    assert r.status()["fails"] == 10
    verdict = r.push(_release("1.1.0", tmp_path))
    assert verdict.state == "confirmed", verdict
    wait_until(lambda: r.status().get("app") == "1.1.0", 30, "the release running")
