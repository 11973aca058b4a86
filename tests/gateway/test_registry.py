"""The device registry: hashes Mosquitto accepts, their iteration count, verifications
remembered without the password, ACL rules, client ids, revocation, file modes and errors."""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from gateway import registry as registry_module
from gateway.certs import make_certificates
from gateway.credentials import ITERATIONS, hash_password, verify_password
from gateway.registry import Registry, RegistryError, topic_matches


def test_mosquitto_passwd_hashes_verify(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    assert tool, "Debian's mosquitto (with mosquitto_passwd) is required; `make test` installs it"
    passwords = tmp_path / "passwd"
    subprocess.run([tool, "-c", "-b", str(passwords), "alice", "s3cret"], check=True)
    stored = passwords.read_text().strip().split(":", 1)[1]
    assert verify_password("s3cret", stored)
    assert not verify_password("wrong", stored)


def test_hashes_use_owasps_count_for_sha512_and_older_counts_still_verify() -> None:
    # OWASP Password Storage Cheat Sheet: PBKDF2-HMAC-SHA512, 210,000 iterations.
    assert ITERATIONS == 210_000
    assert hash_password("s3cret").startswith("$7$210000$")
    older = hash_password("s3cret", iterations=1000)  # what the registry wrote before
    assert older.startswith("$7$1000$")
    assert verify_password("s3cret", older)
    assert not verify_password("wrong", older)


def test_a_verification_is_remembered_per_account_hash_and_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry(tmp_path / "devices.yaml")
    password = registry.add_device(42, "T101")
    other = registry.add_device(43, "T101")
    derivations: list[str] = []

    def counted(plain: str, stored: str) -> bool:
        derivations.append(stored)
        return verify_password(plain, stored)

    monkeypatch.setattr(registry_module, "verify_password", counted)
    for _ in range(100):  # a reconnect storm, and amqtt's two checks of each CONNECT
        assert registry.authenticate("device-42", password) is not None
    assert len(derivations) == 1
    assert registry.authenticate("device-43", other) is not None
    assert len(derivations) == 2  # one per account
    for _ in range(3):  # a wrong password is never remembered: each try costs a derivation
        assert registry.authenticate("device-42", "wrong") is None
    assert registry.authenticate("device-42", other) is None  # another account's password
    assert len(derivations) == 6

    # The plain password is nowhere in the registry's memory, only keyed digests.
    remembered = b"".join(registry._verified)
    assert password.encode() not in remembered and password not in repr(vars(registry))

    registry.revoke("device-42")
    assert registry.authenticate("device-42", password) is None  # never served from memory
    fresh = registry.add_device(42, "T101")  # new credentials: a new hash
    assert registry.authenticate("device-42", password) is None
    assert registry.authenticate("device-42", fresh) is not None
    assert registry.authenticate("device-42", fresh) is not None
    assert len(derivations) == 8


def test_remembered_verifications_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "VERIFIED_MAX", 2)
    registry = Registry(tmp_path / "devices.yaml")
    passwords = {n: registry.add_device(n, "T1") for n in (1, 2, 3)}
    for n, password in passwords.items():
        assert registry.authenticate(f"device-{n}", password) is not None
    assert len(registry._verified) == 2


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
    assert (tmp_path / "passwd").stat().st_mode & 0o037 == 0  # at most 640 (group mosquitto)


def test_errors_name_the_problem(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "devices.yaml")
    registry.add_device(7, "T1")
    with pytest.raises(RegistryError, match="already registered"):
        registry.add_device(7, "T1")
    for bad in ("T 1", "T1\n", "T" * 33):  # a trailing newline, as `$` alone would let in
        with pytest.raises(RegistryError, match="train id"):
            registry.add_device(8, bad)
    with pytest.raises(RegistryError, match="no account 'device-9'"):
        registry.revoke("device-9")
    broken = tmp_path / "broken.yaml"
    broken.write_text("accounts:\n  - username: x\n    kind: robot\n    password_hash: h\n")
    with pytest.raises(RegistryError, match=r"broken.yaml: accounts.0.kind"):
        Registry(broken)


def test_client_ids_are_bound_to_accounts(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "devices.yaml")
    registry.add_device(42, "T101")
    registry.add_service("trackside-bridge")
    device = registry.accounts["device-42"]
    assert device.may_use_client_id("trackside-42")  # the firmware's id (firmware/app.py)
    assert device.may_use_client_id("sim-dev-42")  # the simulator's per-device connection
    for other in ("trackside-43", "trackside-bridge", "trackside-bridge-status", "", None):
        assert not device.may_use_client_id(other), other
    assert registry.accounts["trackside-bridge"].may_use_client_id("trackside-bridge-status")
    registry.revoke("device-42")
    assert not registry.accounts["device-42"].may_use_client_id("trackside-42")


def test_mosquitto_files_are_readable_by_the_mosquitto_group(tmp_path: Path) -> None:
    group = grp.getgrnam("mosquitto")  # Debian's mosquitto package creates it
    registry = Registry(tmp_path / "devices.yaml")
    registry.add_device(1, "T1")
    assert os.geteuid() == 0, "run as root, as `sudo trackside devices mosquitto` in the guide"
    assert registry.write_mosquitto_files(tmp_path / "passwd", tmp_path / "acl")
    for name in ("passwd", "acl"):
        info = (tmp_path / name).stat()
        assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o640, group.gr_gid), name
    assert stat.S_IMODE((tmp_path / "devices.yaml").stat().st_mode) == 0o600
    _, _, key_file = make_certificates(tmp_path / "tls", ["127.0.0.1"])
    info = key_file.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o640, group.gr_gid)


def test_without_the_mosquitto_group_files_stay_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_group(name: str) -> grp.struct_group:
        raise KeyError(name)

    monkeypatch.setattr(grp, "getgrnam", no_group)
    registry = Registry(tmp_path / "devices.yaml")
    registry.add_device(1, "T1")
    assert not registry.write_mosquitto_files(tmp_path / "passwd", tmp_path / "acl")
    _, _, key_file = make_certificates(tmp_path / "tls", ["127.0.0.1"])
    for path in (tmp_path / "passwd", tmp_path / "acl", key_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
