"""The gateway file: the documented example is valid; mistakes name the file and the key."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bridge.config import ConfigError, load_config
from bridge.pipeline import Pipeline
from gateway.alerts.config import DEFAULT_RULES
from gateway.config import load_gateway_config
from gateway.systemd import unit_text
from gateway.templates import gateway_yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "gateway.yaml"


def test_local_example_is_valid() -> None:
    config = load_gateway_config(EXAMPLE.with_name("local.yaml"))
    assert config.alerts is not None
    assert config.dashboard is not None


def test_documented_example_is_valid() -> None:
    config = load_gateway_config(EXAMPLE)
    assert [c.name for c in config.connectors] == ["telemetry", "device-status"]
    assert config.broker.registry == EXAMPLE.parent / "devices.yaml"
    assert config.connectors[0].spool.path == EXAMPLE.parent / "spool" / "telemetry"
    assert config.broker.tls is not None
    assert config.broker.tls.cert_file == EXAMPLE.parent / "tls" / "server.pem"


def test_init_template_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    text = gateway_yaml("kafka.depot.example:9092")
    path.write_text(text)
    config = load_gateway_config(path)
    for connector in config.connectors:
        Pipeline(connector)  # what `gateway check` builds
    assert [c.name for c in config.connectors] == ["telemetry", "device-status"]
    assert {c.kafka.bootstrap_servers for c in config.connectors} == {"kafka.depot.example:9092"}
    assert config.broker.enabled
    assert config.broker.registry == tmp_path / "devices.yaml"
    assert config.connectors[1].spool.path == tmp_path / "spool" / "device-status"
    assert config.alerts is not None
    assert config.alerts.rules_file == DEFAULT_RULES
    assert config.dashboard is not None
    assert config.http.token is not None
    tokens = {config.dashboard.token.get_secret_value(), config.http.token.get_secret_value()}
    assert len(tokens) == 2
    assert config.http.token.get_secret_value() not in gateway_yaml()  # new tokens each time
    keys = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert [line for line in keys if " # " not in line] == []  # every key has its comment


def test_init_template_puts_state_under_a_folder(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "gateway.yaml"
    path.parent.mkdir()
    state = tmp_path / "var lib" / "trackside"
    path.write_text(gateway_yaml(state_dir=state))
    config = load_gateway_config(path)
    assert config.broker.registry == state / "devices.yaml"
    assert [c.spool.path for c in config.connectors] == [
        state / "spool" / "telemetry",
        state / "spool" / "device-status",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("broker:\n  port: 99999\n", r"gateway.yaml: broker.port: Input should be less"),
        ("connectors:\n  - name: a\n    converter: xml\n", r"connectors.0.converter: unknown"),
        ("connectors:\n  - name: a\n  - name: a\n", r"connectors: names must be unique"),
        ("htpp:\n  port: 1\n", r"htpp: Extra inputs are not permitted"),
        ("- just\n- a list\n", r"top level must be a mapping"),
    ],
)
def test_mistakes_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_gateway_config(path)


def test_systemd_unit_is_valid(tmp_path: Path) -> None:
    unit = tmp_path / "trackside-gateway.service"
    unit.write_text(unit_text(tmp_path / "gateway.yaml", "root", tmp_path))
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian's systemd) is needed to check the unit"
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False
    )
    problems = [
        line
        for line in result.stderr.splitlines()
        if str(unit) in line or "Unknown" in line or "bad" in line.lower()
    ]
    assert not problems, result.stderr


def test_password_file_is_read_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "bridge.pw").write_text("s3cret-word\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "connectors:\n  - name: a\n    mqtt:\n      username: trackside-bridge\n"
        "      password_file: secrets/bridge.pw\n"
    )
    mqtt = load_gateway_config(path).connectors[0].mqtt
    assert mqtt.password is not None
    assert mqtt.password.get_secret_value() == "s3cret-word"
    assert mqtt.password_file == tmp_path / "secrets" / "bridge.pw"
    assert "s3cret" not in repr(mqtt) and "s3cret" not in str(mqtt)


def test_connector_file_reads_its_password_file(tmp_path: Path) -> None:
    (tmp_path / "bridge.pw").write_text("pw\n")
    path = tmp_path / "connector.yaml"
    path.write_text("mqtt:\n  username: u\n  password_file: bridge.pw\n")
    password = load_config(path).mqtt.password
    assert password is not None and password.get_secret_value() == "pw"


@pytest.mark.parametrize(
    ("mqtt", "file_text", "message"),
    [
        (
            "password: x\n      password_file: bridge.pw",
            "pw\n",
            r"gateway.yaml: connectors.0.mqtt: Value error, password and password_file are both",
        ),
        (
            "password_file: missing.pw",
            None,
            r"connectors.0.mqtt.password_file: cannot read .*missing.pw",
        ),
        (
            "password_file: bridge.pw",
            "\n",
            r"connectors.0.mqtt.password_file: .*bridge.pw is empty",
        ),
    ],
)
def test_password_file_mistakes_name_the_file_and_key(
    tmp_path: Path, mqtt: str, file_text: str | None, message: str
) -> None:
    if file_text is not None:
        (tmp_path / "bridge.pw").write_text(file_text)
    path = tmp_path / "gateway.yaml"
    path.write_text(f"connectors:\n  - name: a\n    mqtt:\n      {mqtt}\n")
    with pytest.raises(ConfigError, match=message):
        load_gateway_config(path)
