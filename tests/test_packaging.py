"""The wheel a Raspberry Pi installs: built with `python -m build`, installed into a fresh
virtual environment outside the checkout, and run from a folder with no checkout around it.

The build and the install (dependencies from PyPI) happen once for this module; each test
then runs the installed `trackside` and the installed Python with the repository out of reach.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from gateway.localkafka import free_port
from tests.fixtures.guides import blocks, section
from tests.fixtures.guides import commands as guide_commands
from tests.fixtures.kafka import KafkaService
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
def installed() -> Iterator[Installed]:
    # Under /tmp, not pytest's (mode 700) temp folder: the Pi guide's test runs the installed
    # command as an unprivileged user, who must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="trackside-packaging-"))
    root.chmod(0o755)
    dist = root / "dist"
    # The sdist first, then the wheel from the sdist: both must carry every file.
    _ok(_run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)], root, 300))
    (wheel,) = dist.glob("trackside-*-py3-none-any.whl")
    assert list(dist.glob("trackside-*.tar.gz")), "python -m build made no sdist"
    venv = root / "venv"
    _ok(_run([sys.executable, "-m", "venv", str(venv)], root))
    _ok(_run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)], root, 600))
    yield Installed(venv, wheel)
    shutil.rmtree(root)


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


# The Pi guide (docs/raspberry-pi.md), run as written on the installed wheel: `sudo -u trackside`
# as an unprivileged user, its folders under a private root, systemd's part by the unit's own
# ExecStart, User and WorkingDirectory (no systemd runs here).
GUIDE = REPO / "docs" / "raspberry-pi.md"
NOBODY = 65534  # stands for the guide's system user `trackside`
_NOT_HERE = (
    "scp ",  # the wheel is built right here
    "sudo apt-get ",  # bootstrap installs Debian's packages
    "sudo useradd ",  # NOBODY, with the home folder made as useradd --create-home makes it
    "sudo python3 -m venv ",  # the installed fixture did these two, from the same wheel
    "sudo /opt/trackside/bin/pip install ",
    "sudo systemctl ",  # below: the unit's ExecStart as its user
    "journalctl ",
)


def _guide_script(commands: list[str], root: Path, installed: Installed, kafka: str) -> str:
    script = [
        "set -e",
        'sudo() { if [ "$1" = -u ]; then shift 2; '
        f'setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups -- "$@"; else "$@"; fi; }}',
    ]
    moves = [(p, f"{root}{p}") for p in ("/etc/trackside", "/var/lib/trackside", "/etc/systemd")]
    moves += [
        ("/opt/trackside", str(installed.venv)),
        ("kafka.depot.example:9092", kafka),
        ("chgrp trackside ", f"chgrp {NOBODY} "),
    ]
    for command in commands:
        if not command.startswith(_NOT_HERE):
            script.append(functools.reduce(lambda text, m: text.replace(*m), moves, command))
    return "\n".join(script)


def _run_guide(commands: list[str], root: Path, installed: Installed, kafka: str) -> str:
    script = _guide_script(commands, root, installed, kafka)
    state = root / "var/lib/trackside"
    result = subprocess.run(
        ["bash", "-c", script], cwd=state, env={**_env(), "HOME": str(state)},
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, f"{script}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _unit(path: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in path.read_text().splitlines() if "=" in line
    )


def test_the_pi_guide_installs_configures_and_runs_the_service_as_written(
    installed: Installed, kafka: KafkaService
) -> None:
    install, on_the_pi = (guide_commands(b) for b in blocks(section(GUIDE, "Install"), "sh"))
    assert f"scp dist/{installed.wheel.name} gateway.local:" in install, "the guide's wheel"
    assert f"sudo /opt/trackside/bin/pip install ./{installed.wheel.name}" in on_the_pi
    root = Path(tempfile.mkdtemp(prefix="trackside-pi-"))
    root.chmod(0o755)
    try:
        state = root / "var/lib/trackside"
        state.mkdir(parents=True, mode=0o755)  # as useradd --create-home leaves it
        os.chown(state, NOBODY, NOBODY)
        (root / "etc/systemd/system").mkdir(parents=True)  # as on every Debian system
        _run_guide(on_the_pi, root, installed, kafka.bootstrap_servers)
        config_file = root / "etc/trackside/gateway.yaml"
        assert config_file.stat().st_mode & 0o777 == 0o640
        # The guide's ports belong to whatever else runs on this machine: free ones instead.
        config = yaml.safe_load(config_file.read_text())
        http_port = free_port()
        config["broker"]["port"] = free_port()
        config["dashboard"]["port"] = free_port()
        config["http"]["port"] = http_port
        config_file.write_text(yaml.safe_dump(config))
        (configure,) = blocks(section(GUIDE, "Configure"), "sh")
        checked = _run_guide(guide_commands(configure), root, installed, kafka.bootstrap_servers)
        assert "valid" in checked
        assert (state / "tls" / "server.pem").is_file() and (state / "dev-10101.pw").is_file()
        (service,) = blocks(section(GUIDE, "Run as a service"), "sh")
        service_commands = guide_commands(service)
        curl = next(c for c in service_commands if c.startswith("curl "))
        _run_guide(
            [c for c in service_commands if not c.startswith("curl ")],
            root, installed, kafka.bootstrap_servers,
        )  # fmt: skip
        unit_file = root / "etc/systemd/system/trackside-gateway.service"
        verify = _run(["systemd-analyze", "verify", str(unit_file)], root)
        assert not [line for line in verify.stderr.splitlines() if str(unit_file) in line], (
            verify.stderr
        )
        _serve_as_the_unit_says(_unit(unit_file), root, http_port, curl)
    finally:
        shutil.rmtree(root)


def _serve_as_the_unit_says(unit: dict[str, str], root: Path, http_port: int, curl: str) -> None:
    """The unit's ExecStart as an unprivileged user in its WorkingDirectory; the guide's curl
    answers; its KillSignal stops it cleanly within TimeoutStopSec."""
    assert unit["User"] == "trackside" and unit["KillSignal"] == "SIGTERM"
    assert unit["WorkingDirectory"] == unit["ReadWritePaths"] == "/var/lib/trackside"
    workdir = f"{root}/var/lib/trackside"
    log = root / "gateway.log"
    with log.open("wb") as out:
        gateway = subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
             *unit["ExecStart"].split()],
            cwd=workdir, env={**_env(), "HOME": workdir},
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:

        def healthy() -> bool:
            assert gateway.poll() is None, f"the gateway exited:\n{log.read_text()}"
            return _get(f"http://127.0.0.1:{http_port}/healthz")[0] == 200

        wait_until(healthy, 60, "the gateway started as its unit says")
        # Stopped once it is all up, as an operator's `systemctl stop` would find it: the alert
        # service has its partitions (a stop during that start is not what this test is about).
        wait_until(lambda: "took partitions" in log.read_text(), 60, "the alert service up")
        status = _ok(_run(curl.replace(":8081/", f":{http_port}/").split(), root))
        connectors = json.loads(status)["connectors"]
        assert {c["name"] for c in connectors} == {"telemetry", "device-status"}
        gateway.send_signal(signal.SIGTERM)
        try:
            assert gateway.wait(float(unit["TimeoutStopSec"])) == 0, log.read_text()
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no stop within TimeoutStopSec:\n{log.read_text()}") from None
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait(10)
