"""Release bundles (gateway/ota/release.py) and `trackside ota keygen|release|verify`."""

from __future__ import annotations

import io
import json
import stat
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError
from typer.testing import CliRunner

from gateway.cli import build_app
from gateway.devicetools.deploy import BrokerSettings, DeviceConfig
from gateway.ota import OtaError
from gateway.ota.release import (
    ROOT_ONLY,
    build_release,
    generate_key,
    load_private_key,
    load_public_key,
    read_release,
)

KEY = Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def bundle() -> bytes:
    """A signed unix release, built once (mpy-cross compiles every module)."""
    return build_release("unix", "1.1.0", KEY)


def _retar(data: bytes, change: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            body = change.get(member.name)
            if body is None:
                extracted = src.extractfile(member)
                assert extracted is not None
                body = extracted.read()
            member.size = len(body)
            dst.addfile(member, io.BytesIO(body))
    return out.getvalue()


def test_a_release_holds_the_compiled_app_but_not_the_boot_path(bundle: bytes) -> None:
    release = read_release(bundle, KEY.public_key())
    manifest = release.manifest
    assert (manifest["version"], manifest["boards"], manifest["format"]) == ("1.1.0", ["unix"], 1)
    assert {"app.mpy", "ota.mpy", "ed25519.mpy", "lib/umqtt/simple.mpy"} <= set(release.files)
    assert not {name.replace(".py", ".mpy") for name in ROOT_ONLY} & set(release.files)
    assert [f[0] for f in manifest["files"]] == list(release.files)
    assert build_release("unix", "1.1.0", KEY) == bundle  # reproducible: no times, no owners


def test_one_changed_byte_in_a_file_is_refused(bundle: bytes) -> None:
    app = read_release(bundle).files["app.mpy"]
    changed = _retar(bundle, {"files/app.mpy": app[:50] + bytes([app[50] ^ 1]) + app[51:]})
    with pytest.raises(OtaError, match=r"app\.mpy does not match its SHA-256"):
        read_release(changed)


def test_one_changed_byte_in_the_manifest_fails_the_signature(bundle: bytes) -> None:
    manifest = read_release(bundle).manifest_bytes
    changed = _retar(bundle, {"manifest.json": manifest.replace(b"1.1.0", b"1.1.1")})
    read_release(changed)  # the files still match: only the signature can tell
    with pytest.raises(OtaError, match="not signed by this release key"):
        read_release(changed, KEY.public_key())


def test_a_release_signed_by_another_key_is_refused(bundle: bytes) -> None:
    with pytest.raises(OtaError, match="not signed by this release key"):
        read_release(bundle, Ed25519PrivateKey.generate().public_key())


def test_not_a_bundle_and_bad_versions_say_what_is_wrong() -> None:
    with pytest.raises(OtaError, match="not a release bundle"):
        read_release(b"not a tar file at all" * 30)
    with pytest.raises(OtaError, match="version 'one two'"):
        build_release("unix", "one two", KEY)


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    private, public = tmp_path / "release.key", tmp_path / "release.pub"
    public_hex = generate_key(private, public)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert load_private_key(private).public_key() == load_public_key(public_hex)
    with pytest.raises(OtaError, match="exists"):
        generate_key(private, public)
    with pytest.raises(OtaError, match="64 hex digits"):
        load_public_key("abc")


def test_cli_keygen_release_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    app = build_app()
    assert runner.invoke(app, ["ota", "keygen"]).exit_code == 0
    made = runner.invoke(app, ["ota", "release", "--version", "2.0.0", "--board", "pico-w"])
    assert made.exit_code == 0, made.output
    checked = runner.invoke(app, ["ota", "verify", "app-2.0.0-pico-w.tar"])
    assert checked.exit_code == 0, checked.output
    assert "valid: 2.0.0 for pico-w" in checked.output
    manifest = read_release((tmp_path / "app-2.0.0-pico-w.tar").read_bytes()).manifest
    assert "board.json" in json.dumps(manifest)  # the pin map travels with the app


def test_deploy_gives_the_board_the_public_key_and_checks_it() -> None:
    broker = BrokerSettings(host="gw.local")
    public_hex = KEY.public_key().public_bytes_raw().hex()
    config = DeviceConfig(device_id=1, train_id="T1", board="unix", broker=broker,
                          ota_key=public_hex)
    assert json.loads(config.file_bytes())["ota_key"] == public_hex
    with pytest.raises(ValidationError, match="ota_key"):
        DeviceConfig(device_id=1, train_id="T1", board="unix", broker=broker, ota_key="abc")
