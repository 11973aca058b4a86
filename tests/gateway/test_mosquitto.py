"""docs/raspberry-pi.md's Mosquitto set-up, run as written: Debian's Mosquitto started as root
under Debian's own mosquitto.conf drops privileges to user `mosquitto` (as on the Pi), starts,
and admits the bridge's connectors and a device (paho-mqtt) over its TLS listener."""

from __future__ import annotations

import os
import pwd
import queue
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml

from bridge.mqtt_source import MqttSourceClient
from gateway.config import load_gateway_config
from gateway.localkafka import free_port
from gateway.mosquitto import mosquitto_binary
from tests.fixtures.guides import DOCS, blocks
from tests.fixtures.guides import section as guide_section
from tests.fixtures.mqtt import BrokerHandle
from tests.fixtures.processes import ServiceError

pytestmark = pytest.mark.integration

GUIDE = DOCS / "raspberry-pi.md"
DEBIAN_CONF = Path("/etc/mosquitto/mosquitto.conf")  # as the mosquitto package installs it
TRACKSIDE = Path(sys.executable).with_name("trackside")  # the venv's command
NOBODY = 65534  # stands for the guide's unprivileged `trackside` user


def section(heading: str) -> str:
    """The guide's text under `## heading`."""
    return guide_section(GUIDE, heading)


def guide_commands() -> list[str]:
    """The guide's trackside, chgrp and chmod commands for this set-up, in order."""
    lines = "\n".join(
        blocks(section("Configure"), "sh")
        + blocks(section("Mosquitto instead of the embedded broker"), "sh")
    )
    commands = re.sub(r"\\\n\s*", " ", lines).splitlines()
    tool = "/opt/trackside/bin/trackside "
    wanted = (f"sudo -u trackside {tool}", f"sudo {tool}", "sudo chgrp ", "sudo chmod ")
    return [c for c in commands if c.startswith(wanted) and " gateway check " not in c]


@dataclass
class Pi:
    """The guide's folders under a private root: `etc` stands for /etc/mosquitto, `state` for
    /var/lib/trackside."""

    root: Path
    port: int

    @property
    def state(self) -> Path:
        return self.root / "var/lib/trackside"

    @property
    def etc(self) -> Path:
        return self.root / "etc/mosquitto"

    def localize(self, text: str) -> str:
        """The guide's paths and port, moved into this root."""
        for path in ("/var/lib/trackside", "/var/lib/mosquitto", "/var/log/mosquitto",
                     "/run/mosquitto", "/etc/mosquitto", "/etc/trackside"):  # fmt: skip
            text = text.replace(path, f"{self.root}{path}")
        text = text.replace("/opt/trackside/bin/trackside", str(TRACKSIDE))
        return text.replace("listener 8883", f"listener {self.port}").replace(
            "port: 8883", f"port: {self.port}"
        )

    def run_guide(self, skip: str | None = None) -> str:
        """The guide's commands (but `skip`), `sudo -u trackside` as an unprivileged user;
        returns what they printed."""
        script = [
            "set -e",
            'sudo() { if [ "$1" = -u ]; then shift 2; '
            f'setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups -- "$@"; else "$@"; fi; }}',
        ]
        script += [self.localize(c) for c in guide_commands() if skip is None or skip not in c]
        result = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=self.state,
            env={**os.environ, "HOME": str(self.state)},
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return " ".join((result.stdout + result.stderr).split())  # rich wraps long lines

    def broker(self) -> BrokerHandle:
        """Mosquitto started as root with Debian's mosquitto.conf and the guide's conf.d file."""
        conf = self.etc / "mosquitto.conf"
        conf.write_text(self.localize(DEBIAN_CONF.read_text()))
        (trackside_conf,) = blocks(section("Mosquitto instead of the embedded broker"), "")
        (self.etc / "conf.d" / "trackside.conf").write_text(self.localize(trackside_conf))
        return BrokerHandle(
            "mosquitto-pi", [mosquitto_binary(), "-c", str(conf)], "127.0.0.1", self.port,
            self.root / "mosquitto.out",
        )  # fmt: skip


@pytest.fixture
def pi() -> Iterator[Pi]:
    assert os.geteuid() == 0, "start the tests as root: Mosquitto must drop privileges itself"
    mosquitto = pwd.getpwnam("mosquitto")  # created by Debian's mosquitto package
    # Under /tmp, not pytest's tmp_path: user mosquitto must be able to walk to its files.
    root = Path(tempfile.mkdtemp(prefix="trackside-pi-"))
    root.chmod(0o755)
    pi = Pi(root, free_port())
    for folder in ("etc/mosquitto/conf.d", "etc/trackside"):
        (root / folder).mkdir(parents=True)
    # As the package and its systemd unit (RuntimeDirectory) leave them:
    for folder in ("var/lib/mosquitto", "var/log/mosquitto", "run/mosquitto"):
        (root / folder).mkdir(parents=True)
        os.chown(root / folder, mosquitto.pw_uid, mosquitto.pw_gid)
    pi.state.mkdir(mode=0o755)  # useradd --create-home with Debian 12's UMASK 022
    os.chown(pi.state, NOBODY, NOBODY)
    yield pi
    shutil.rmtree(root)


def gateway_yaml(pi: Pi) -> Path:
    """The example gateway file with the guide's `broker` and connector `mqtt` sections."""
    (guide_yaml,) = blocks(section("Mosquitto instead of the embedded broker"), "yaml")
    guide: dict[str, Any] = yaml.safe_load(pi.localize(guide_yaml))
    config: dict[str, Any] = yaml.safe_load((DOCS / "examples" / "gateway.yaml").read_text())
    config["broker"] = guide["broker"]
    mqtt_of = {c["name"]: c["mqtt"] for c in guide["connectors"]}
    assert set(mqtt_of) == {c["name"] for c in config["connectors"]}
    for connector in config["connectors"]:
        connector["mqtt"] = mqtt_of[connector["name"]]
        connector["spool"]["path"] = str(pi.root / "spool" / connector["name"])
    path = pi.root / "etc/trackside/gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def mosquitto_user(conf: Path) -> str:
    """The user the Mosquitto running with `conf` runs as."""
    for proc in Path("/proc").iterdir():
        try:
            if str(conf).encode() in (proc / "cmdline").read_bytes():
                # "Uid: real effective saved fs" (the /proc files of a process that changed
                # its user stay root's)
                uid = re.search(r"^Uid:\s+(\d+)\s+(\d+)", (proc / "status").read_text(), re.M)
                assert uid is not None and uid[1] == uid[2]
                return pwd.getpwuid(int(uid[2])).pw_name
        except (FileNotFoundError, PermissionError, NotADirectoryError):
            continue
    raise AssertionError(f"no mosquitto running with {conf}")


def test_the_guides_mosquitto_starts_and_admits_the_bridge_and_a_device(pi: Pi) -> None:
    printed = pi.run_guide()
    # `gateway certs`, run as trackside, cannot give the key to Mosquitto and says what to do.
    assert "cannot read the key" in printed and "sudo chgrp mosquitto" in printed
    broker = pi.broker()
    broker.start()
    try:
        assert mosquitto_user(pi.etc / "mosquitto.conf") == "mosquitto"
        config = load_gateway_config(gateway_yaml(pi))
        readings: queue.Queue[int] = queue.Queue()
        bridges = [
            MqttSourceClient(c.mqtt, lambda batch, _generation: readings.put(len(batch)))
            for c in config.connectors
        ]
        for bridge in bridges:
            bridge.start()  # connect over TLS with the password file's password, subscribe

        device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="trackside-10101")
        device.username_pw_set("device-10101", (pi.state / "dev-10101.pw").read_text().strip())
        device.tls_set(ca_certs=str(pi.state / "tls/ca.pem"), cert_reqs=ssl.CERT_REQUIRED)
        answer: queue.Queue[mqtt.ReasonCode] = queue.Queue()
        device.on_connect = lambda _c, _u, _f, reason, _p: answer.put(reason)
        device.connect("127.0.0.1", pi.port)
        device.loop_start()
        reason = answer.get(timeout=20)
        assert not reason.is_failure, reason
        device.publish("trackside/v1/T101/10101/telemetry", b"\x01", qos=1).wait_for_publish(10)
        assert readings.get(timeout=20) == 1  # the telemetry connector has the device's reading
        device.loop_stop()
        device.disconnect()
        for bridge in bridges:
            bridge.stop()
    finally:
        broker.stop()


def test_without_the_guides_chgrp_mosquitto_cannot_read_the_key(pi: Pi) -> None:
    pi.run_guide(skip="tls/server.key")
    broker = pi.broker()
    with pytest.raises(ServiceError):
        broker.start(timeout=10)
    log = (pi.root / "var/log/mosquitto/mosquitto.log").read_text()  # Debian's log_dest
    assert "Error: Unable to load server key file" in log, log
