"""The wheel a Raspberry Pi installs: built with `python -m build`, installed into a fresh
virtual environment outside the checkout, and run from a folder with no checkout around it.

The build and the install (dependencies from PyPI) happen once for this module; each test
then runs the installed `trackside` and the installed Python with the repository out of reach.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from gateway.localkafka import free_port
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Installed:
    """A virtual environment holding only the wheel and its dependencies."""

    venv: Path
    wheel: Path

    @property
    def trackside(self) -> str:
        return str(self.venv / "bin" / "trackside")

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")


def _env() -> dict[str, str]:
    """This process's environment without anything that would point at the checkout."""
    hidden = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {k: v for k, v in os.environ.items() if k not in hidden}


def _run(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("packaging")
    dist = root / "dist"
    # The sdist first, then the wheel from the sdist: both must carry every file.
    _ok(_run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)], root, 300))
    (wheel,) = dist.glob("trackside-*-py3-none-any.whl")
    assert list(dist.glob("trackside-*.tar.gz")), "python -m build made no sdist"
    venv = root / "venv"
    _ok(_run([sys.executable, "-m", "venv", str(venv)], root))
    _ok(_run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)], root, 600))
    yield Installed(venv, wheel)


def test_installed_cli_writes_a_gateway_file_that_passes_check(
    installed: Installed, tmp_path: Path
) -> None:
    assert "gateway" in _ok(_run([installed.trackside, "--help"], tmp_path))
    _ok(_run([installed.trackside, "gateway", "init"], tmp_path))
    written = tmp_path / "gateway.yaml"
    assert written.stat().st_mode & 0o777 == 0o600  # it holds the tokens
    again = _run([installed.trackside, "gateway", "init"], tmp_path)
    assert again.returncode == 1
    assert "--force" in again.stdout + again.stderr
    _ok(_run([installed.trackside, "gateway", "init", "--force"], tmp_path))
    checked = _ok(_run([installed.trackside, "gateway", "check", "-c", "gateway.yaml"], tmp_path))
    assert "valid (2 connector(s))" in checked


# Run by the installed Python: where its data files are, and the app compiled for a board as
# `trackside deploy` compiles it before copying.
_FIND_DATA = """
import json, sys
import gateway
from gateway.alertmanager import DEFAULT_NOTIFICATIONS
from gateway.alerts.config import DEFAULT_RULES
from gateway.dashboard.server import STATIC
from gateway.devicetools.deploy import DeviceConfig, board_files
from gateway.firmware_bundle import BOARDS, bundle
from gateway.hardware import HARDWARE

bundles = {board: {f.target: str(f.source) for f in bundle(board)} for board in BOARDS}
config = DeviceConfig.model_validate({
    "device_id": 1, "train_id": "T1", "board": "esp32-devkitc",
    "broker": {"host": "gateway.local"}, "wifi": {"ssid": "train"},
})
compiled = [f.target for f in board_files(bundle("esp32-devkitc"), config)]
json.dump({
    "package": gateway.__file__,
    "bundles": bundles,
    "compiled": compiled,
    "data": [str(p) for p in (DEFAULT_NOTIFICATIONS, DEFAULT_RULES, HARDWARE / "bom.csv")]
    + [str(STATIC / name) for name in ("index.html", "app.js", "style.css")],
}, sys.stdout)
"""


def test_installed_package_carries_firmware_hardware_and_defaults(
    installed: Installed, tmp_path: Path
) -> None:
    found = json.loads(_ok(_run([installed.python, "-c", _FIND_DATA], tmp_path)))
    assert Path(found["package"]).is_relative_to(installed.venv)
    for board, files in found["bundles"].items():
        umqtt = Path(files.pop("lib/umqtt/simple.py"))  # from PyPI into the user cache
        assert umqtt.is_file()
        for target, source in files.items():
            assert Path(source).is_file(), (board, target, source)
            assert Path(source).is_relative_to(installed.venv), (board, target, source)
    assert {"main.py", "app.mpy", "board_esp32.mpy", "lib/umqtt/simple.mpy", "board.json"} <= set(
        found["compiled"]
    )
    for data in map(Path, found["data"]):
        assert data.is_file() and data.is_relative_to(installed.venv), data
    _ok(_run([installed.trackside, "hardware", "check"], tmp_path))


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def test_installed_gateway_runs_with_the_embedded_broker_and_stops_on_sigterm(
    installed: Installed, tmp_path: Path
) -> None:
    unreachable = f"127.0.0.1:{free_port()}"  # nothing listens: the connectors spool
    init = [installed.trackside, "gateway", "init", "--bootstrap-servers", unreachable]
    _ok(_run(init, tmp_path))
    config = yaml.safe_load((tmp_path / "gateway.yaml").read_text())
    mqtt_port, dashboard_port, http_port = free_port(), free_port(), free_port()
    config["broker"].update(host="127.0.0.1", port=mqtt_port)
    config["dashboard"]["port"] = dashboard_port
    config["http"]["port"] = http_port
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config))
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        gateway = subprocess.Popen(
            [installed.trackside, "gateway", "run", "-c", "gateway.yaml"],
            cwd=tmp_path,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:

        def healthy() -> bool:
            assert gateway.poll() is None, f"gateway exited:\n{log.read_text()}"
            return _get(f"http://127.0.0.1:{http_port}/healthz")[0] == 200

        wait_until(healthy, 30, "the installed gateway's /healthz")
        status, body = _get(f"http://127.0.0.1:{http_port}/healthz")
        assert status == 200
        assert json.loads(body)["status"] in ("ok", "spooling")
        dashboard = f"http://127.0.0.1:{dashboard_port}"
        assert _get(f"{dashboard}/")[0] == 200
        assert _get(f"{dashboard}/static/app.js")[0] == 200
        assert f"MQTT broker (embedded) on 127.0.0.1:{mqtt_port}" in log.read_text()
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(30) == 0, log.read_text()
        assert "gateway stopped" in log.read_text()
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait(10)
