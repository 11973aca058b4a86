"""Deploy: the per-device config, compiling, the gateway's CA with TLS, and the real app
deployed to a virtual board (over plain MQTT and over TLS)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import serial
from cryptography import x509
from mpremote.transport_serial import SerialTransport
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError
from typer.testing import CliRunner

from bridge.wire_decoder import decode
from gateway.certs import make_certificates
from gateway.cli import app
from gateway.devicetools import DeployError, PortBusyError, PortNotFoundError
from gateway.devicetools.deploy import (
    CA_FILE,
    CONFIG_FILE,
    BoardFile,
    BrokerSettings,
    DeviceConfig,
    board_files,
    ca_board_file,
    deploy,
)
from gateway.firmware_bundle import BundleFile, bundle
from gateway.localkafka import free_port
from tests.fixtures.mqtt import BrokerHandle
from tests.fixtures.virtual_board import VirtualBoardHandle

SECRET = "s3cret-Password!"


def unix_config(broker_port: int = 1883, train_id: str = "T101") -> DeviceConfig:
    return DeviceConfig(
        device_id=42,
        train_id=train_id,
        board="unix",
        broker=BrokerSettings(host="127.0.0.1", port=broker_port, user="dev42", password=SECRET),
        sample_ms=200,
    )


def test_config_file_has_the_documented_shape_and_hides_secrets_elsewhere() -> None:
    config = unix_config()
    document = json.loads(config.file_bytes())
    assert document == {
        "device_id": 42,
        "train_id": "T101",
        "board": "unix",
        "broker": {"host": "127.0.0.1", "port": 1883, "user": "dev42", "password": SECRET,
                   "tls": False},
        "wifi": {"ssid": "", "password": ""},
        "sample_ms": 200,
    }
    assert SECRET not in repr(config) and SECRET not in str(config)


def test_hardware_boards_need_wifi_and_train_ids_are_checked() -> None:
    broker = BrokerSettings(host="gw.local")
    with pytest.raises(ValidationError, match="needs Wi-Fi: pass --wifi-ssid"):
        DeviceConfig(device_id=1, train_id="T1", board="esp32-devkitc", broker=broker)
    for bad in ("T1/#", "T" * 33):  # the bridge takes 1-32 characters
        with pytest.raises(ValidationError, match="train_id"):
            DeviceConfig(device_id=1, train_id=bad, board="unix", broker=broker)


def test_tls_takes_port_8883_unless_told_and_needs_the_gateway_ca(tmp_path: Path) -> None:
    ca_file, _, _ = make_certificates(tmp_path / "certs", ["gw.local"])
    broker = BrokerSettings(host="gw.local", tls=True, ca_file=ca_file)
    assert broker.port == 8883
    assert BrokerSettings(host="gw.local").port == 1883
    assert BrokerSettings(host="gw.local", port=18883, tls=True, ca_file=ca_file).port == 18883
    config = DeviceConfig(device_id=1, train_id="T1", board="unix", broker=broker)
    document = json.loads(config.file_bytes())
    assert document["broker"] == {"host": "gw.local", "port": 8883, "user": "", "password": "",
                                  "tls": True}  # the CA travels as a file of its own
    with pytest.raises(ValidationError, match=r"TLS needs the gateway's CA.*--ca-file"):
        BrokerSettings(host="gw.local", tls=True)
    with pytest.raises(ValidationError, match="add --tls"):
        BrokerSettings(host="gw.local", ca_file=ca_file)


def test_the_gateway_ca_goes_to_the_board_as_der(tmp_path: Path) -> None:
    ca_file, server_file, _ = make_certificates(tmp_path / "certs", ["gw.local"])
    broker = BrokerSettings(host="gw.local", tls=True, ca_file=ca_file)
    config = DeviceConfig(device_id=1, train_id="T1", board="unix", broker=broker)
    files = {f.target: f.data for f in board_files([], config)}
    assert set(files) == {CONFIG_FILE, CA_FILE}
    ca = x509.load_der_x509_certificate(files[CA_FILE])
    assert ca == x509.load_pem_x509_certificate(ca_file.read_bytes())
    (tmp_path / "ca.der").write_bytes(files[CA_FILE])
    assert ca_board_file(tmp_path / "ca.der").data == files[CA_FILE]  # DER in, DER out
    with pytest.raises(DeployError, match="not a CA certificate"):
        ca_board_file(server_file)  # the server's own certificate, by mistake
    (tmp_path / "two.pem").write_bytes(ca_file.read_bytes() + server_file.read_bytes())
    with pytest.raises(DeployError, match="holds 2 certificates"):
        ca_board_file(tmp_path / "two.pem")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(DeployError, match="is not a certificate"):
        ca_board_file(tmp_path / "junk.pem")
    with pytest.raises(DeployError, match="cannot read the CA file"):
        ca_board_file(tmp_path / "missing.pem")
    no_tls = DeviceConfig(device_id=1, train_id="T1", board="unix",
                          broker=BrokerSettings(host="gw.local"))
    assert CA_FILE not in {f.target for f in board_files([], no_tls)}


def test_board_files_compile_all_but_main(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("import app\n")
    (tmp_path / "app.py").write_text("x = 1\n")
    entries = [
        BundleFile(tmp_path / "main.py", "main.py"),
        BundleFile(tmp_path / "app.py", "lib/app.py"),
    ]
    compiled = {f.target: f.data for f in board_files(entries, unix_config())}
    assert set(compiled) == {"main.py", "lib/app.mpy", CONFIG_FILE}
    assert compiled["main.py"] == b"import app\n"
    assert compiled["lib/app.mpy"][:2] == b"M\x06"  # .mpy version 6, what the unix port imports
    plain = {f.target for f in board_files(entries, unix_config(), compile_=False)}
    assert plain == {"main.py", "lib/app.py", CONFIG_FILE}


def test_targets_outside_the_board_root_are_refused(tmp_path: Path) -> None:
    (tmp_path / "x.py").write_text("")
    with pytest.raises(DeployError, match="relative to the board root"):
        board_files([BundleFile(tmp_path / "x.py", "/etc/x.py")], unix_config())


def test_cli_never_prints_the_password(tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(SECRET + "\n")
    result = CliRunner().invoke(
        app,
        ["deploy", "--port", "/dev/ttyTRACKSIDE-NONE", "--device-id", "7", "--train", "T101",
         "--broker-host", "127.0.0.1", "--user", "dev7", "--password-file", str(password_file),
         "--board", "unix"],
    )
    assert isinstance(result.exception, PortNotFoundError)
    assert SECRET not in result.output and SECRET not in str(result.exception)


def test_cli_refuses_tls_without_the_gateway_ca() -> None:
    result = CliRunner().invoke(
        app,
        ["deploy", "--port", "/dev/ttyTRACKSIDE-NONE", "--device-id", "7", "--train", "T101",
         "--broker-host", "gw.local", "--tls", "--board", "unix"],
    )
    assert isinstance(result.exception, DeployError)
    assert "--ca-file" in str(result.exception)


@pytest.mark.integration
def test_missing_and_busy_ports_are_clear_errors(virtual_board: VirtualBoardHandle) -> None:
    files = [BoardFile("x.txt", b"x")]
    with pytest.raises(PortNotFoundError, match="trackside boards"):
        deploy("/dev/ttyTRACKSIDE-NONE", files, "unix")
    with serial.Serial(virtual_board.port, exclusive=True), pytest.raises(PortBusyError):
        deploy(virtual_board.port, files, "unix")


@pytest.mark.integration
def test_a_file_that_differs_on_the_board_fails_the_deploy(
    virtual_board: VirtualBoardHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SerialTransport, "fs_hashfile", lambda *_: bytes(32))
    with pytest.raises(DeployError, match=r"x\.txt on the board differs"):
        deploy(virtual_board.port, [BoardFile("x.txt", b"x")], "unix")


class TelemetrySink:
    """Readings of one train arriving at the broker, collected by a paho subscriber."""

    def __init__(self, broker: BrokerHandle, train_id: str) -> None:
        self.readings: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(f"trackside/v1/{train_id}/+/telemetry", qos=1)
        self.client.loop_start()
        assert self._subscribed.wait(30), "subscription not acknowledged"

    def _on_message(self, _client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.readings.append((message.topic, bytes(message.payload)))

    def wait_for(self, count: int, timeout: float = 60.0) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                fresh = list(self.readings)
            if len(fresh) >= count:
                return fresh
            assert time.monotonic() < deadline, f"{len(fresh)} of {count} readings arrived"
            time.sleep(0.1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.integration
def test_deploy_reset_readings_arrive(
    virtual_board: VirtualBoardHandle, mosquitto: BrokerHandle
) -> None:
    train_id = f"TD{uuid.uuid4().hex[:6]}"
    sink = TelemetrySink(mosquitto, train_id)
    try:
        started = time.monotonic()
        deployed = subprocess.run(
            [sys.executable, "-m", "gateway", "deploy", "--port", virtual_board.port,
             "--device-id", "4242", "--train", train_id, "--broker-host", mosquitto.host,
             "--broker-port", str(mosquitto.port), "--board", "unix", "--sample-ms", "200"],
            capture_output=True, text=True, timeout=120, check=False,
        )
        cli_seconds = time.monotonic() - started
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert "verified by" in deployed.stdout
        timing = re.search(r"in\s+([\d.]+)\s+s", deployed.stdout)
        assert timing, deployed.stdout
        deploy_seconds = float(timing.group(1))
        print(f"deploy to the virtual board: {deploy_seconds:.2f} s (CLI run {cli_seconds:.1f} s)")

        first = sink.wait_for(3)
        decoded = [decode(payload) for _, payload in first]
        assert {topic for topic, _ in first} == {f"trackside/v1/{train_id}/4242/telemetry"}
        assert {reading[1] for reading in decoded} == {4242}  # device id in the wire header
        config = json.loads((virtual_board.root / CONFIG_FILE).read_text())
        assert config["train_id"] == train_id and config["board"] == "unix"

        # Deploying again interrupts the running app (Ctrl-C), copies, resets: a new boot follows.
        files = board_files(bundle("unix"), unix_config(mosquitto.port, train_id))
        result = deploy(virtual_board.port, files, "unix")
        print(f"redeploy over the running app: {result.seconds:.2f} s, {result.size} bytes")
        old_boot = decoded[0][2]
        deadline = time.monotonic() + 60
        while True:
            boots = {decode(p)[2] for topic, p in sink.readings if "/42/" in topic}
            if boots - {old_boot}:
                break
            assert time.monotonic() < deadline, "no reading from the redeployed device 42"
            time.sleep(0.1)
    finally:
        sink.close()


@pytest.mark.integration
def test_deploy_with_tls_and_the_gateway_ca_readings_arrive_over_tls(
    virtual_board: VirtualBoardHandle,
    mosquitto_factory: Callable[..., BrokerHandle],
    tmp_path: Path,
) -> None:
    ca_file, cert_file, key_file = make_certificates(tmp_path / "certs", ["127.0.0.1"])
    tls_port = free_port()
    broker = mosquitto_factory(
        f"listener {tls_port} 127.0.0.1\ncertfile {cert_file}\nkeyfile {key_file}\n"
    )
    train_id = f"TT{uuid.uuid4().hex[:6]}"
    sink = TelemetrySink(broker, train_id)  # on the plain listener
    try:
        deployed = subprocess.run(
            [sys.executable, "-m", "gateway", "deploy", "--port", virtual_board.port,
             "--device-id", "4243", "--train", train_id, "--broker-host", "127.0.0.1",
             "--broker-port", str(tls_port), "--tls", "--ca-file", str(ca_file),
             "--board", "unix", "--sample-ms", "200"],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        readings = sink.wait_for(3)  # the device knows only the TLS listener's port
        assert {topic for topic, _ in readings} == {f"trackside/v1/{train_id}/4243/telemetry"}
        config = json.loads((virtual_board.root / CONFIG_FILE).read_text())
        assert config["broker"]["tls"] is True and config["broker"]["port"] == tls_port
        assert (virtual_board.root / CA_FILE).read_bytes() == ca_board_file(ca_file).data
    finally:
        sink.close()
