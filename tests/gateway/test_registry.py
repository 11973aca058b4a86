"""The device registry: hashes Mosquitto accepts, ACL rules, revocation, file errors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.registry import Registry, RegistryError, topic_matches, verify_password


def test_mosquitto_passwd_hashes_verify(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    assert tool, "Debian's mosquitto (with mosquitto_passwd) is required; `make test` installs it"
    passwords = tmp_path / "passwd"
    subprocess.run([tool, "-c", "-b", str(passwords), "alice", "s3cret"], check=True)
    stored = passwords.read_text().strip().split(":", 1)[1]
    assert verify_password("s3cret", stored)
    assert not verify_password("wrong", stored)


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("trackside/#", "trackside/v1/T1/1/telemetry", True),
        ("trackside/v1/+/+/telemetry", "trackside/v1/T1/1/telemetry", True),
        ("trackside/v1/T1/1/telemetry", "trackside/v1/T1/2/telemetry", False),
        ("trackside/v1/T1/1/telemetry", "trackside/v1/T1/1/telemetry/x", False),
        ("trackside/v1/T1/1/cmd", "trackside/v1/T1/+/cmd", False),  # broader filter refused
        ("trackside/v1/T1/1/cmd", "trackside/#", False),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


def test_device_rules_and_revocation(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "devices.yaml")
    password = registry.add_device(42, "T101")
    device = registry.authenticate("device-42", password)
    assert device is not None
    assert device.may("write", "trackside/v1/T101/42/telemetry")
    assert not device.may("write", "trackside/v1/T101/43/telemetry")
    assert not device.may("write", "trackside/v1/T102/42/telemetry")
    assert device.may("read", "trackside/v1/T101/cmd")
    assert not device.may("read", "trackside/v1/T101/43/cmd")
    assert registry.authenticate("device-42", "wrong") is None

    registry.revoke("device-42")
    reread = Registry(tmp_path / "devices.yaml")
    assert reread.authenticate("device-42", password) is None
    assert password not in (tmp_path / "devices.yaml").read_text()


def test_mosquitto_files(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "devices.yaml")
    registry.add_device(1, "T1")
    registry.add_device(2, "T1")
    registry.add_service("bridge")
    registry.revoke("device-2")
    registry.write_mosquitto_files(tmp_path / "passwd", tmp_path / "acl")
    passwd = (tmp_path / "passwd").read_text()
    acl = (tmp_path / "acl").read_text()
    assert "device-1:$7$" in passwd and "bridge:$7$" in passwd and "device-2" not in passwd
    assert "user device-1\ntopic write trackside/v1/T1/1/telemetry\n" in acl
    assert "user bridge\ntopic readwrite trackside/#\n" in acl
    assert (tmp_path / "passwd").stat().st_mode & 0o077 == 0


def test_errors_name_the_problem(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "devices.yaml")
    registry.add_device(7, "T1")
    with pytest.raises(RegistryError, match="already registered"):
        registry.add_device(7, "T1")
    with pytest.raises(RegistryError, match="train id"):
        registry.add_device(8, "T 1")
    with pytest.raises(RegistryError, match="no account 'device-9'"):
        registry.revoke("device-9")
    broken = tmp_path / "broken.yaml"
    broken.write_text("accounts:\n  - username: x\n    kind: robot\n    password_hash: h\n")
    with pytest.raises(RegistryError, match=r"broken.yaml: accounts.0.kind"):
        Registry(broken)
