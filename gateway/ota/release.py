"""Signed releases of the device app: the bundle format, the release key, signing and checking.

A release is one tar file: `manifest.json` (format, version, board kinds, the oldest
MicroPython it runs on, and each file's slot path, size and SHA-256), `manifest.sig` (the
64-byte Ed25519 signature of the manifest's SHA-256 digest) and the files under `files/`,
compiled as `trackside deploy` compiles them. Devices hold only the public key and check the
signature themselves (firmware/ed25519.py); they sign nothing. `main.py` and `slots.py` are not
in a release: they choose the slot and roll back, and only `trackside deploy` replaces them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.devicetools.deploy import compile_mpy
from gateway.firmware_bundle import FIRMWARE, bundle
from gateway.ota import OtaError

__all__ = [
    "FORMAT",
    "MIN_MICROPYTHON",
    "ROOT_ONLY",
    "Release",
    "build_release",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "read_release",
]

FORMAT = 1
MIN_MICROPYTHON = "1.23.0"  # the `tls` module firmware/link.py uses; mpy-cross output v6
ROOT_ONLY = frozenset({"main.py", "slots.py"})  # the boot path: never replaced over the air
_VERSION = re.compile(r"^[0-9A-Za-z.+_-]{1,32}$")


@dataclass(frozen=True)
class Release:
    """A release as read from its bundle: the manifest's exact bytes, signature and files."""

    manifest_bytes: bytes
    signature: bytes
    files: dict[str, bytes]

    @property
    def manifest(self) -> dict[str, Any]:
        """The parsed manifest."""
        manifest: dict[str, Any] = json.loads(self.manifest_bytes)
        return manifest

    @property
    def version(self) -> str:
        """The release's version, as devices report it."""
        return str(self.manifest["version"])

    @property
    def digest(self) -> bytes:
        """SHA-256 of the manifest: what the signature signs, and its first 4 bytes tag chunks."""
        return hashlib.sha256(self.manifest_bytes).digest()

    @property
    def size(self) -> int:
        """Bytes a device fetches: the sum of the files."""
        return sum(len(data) for data in self.files.values())

    def verify(self, public_key: Ed25519PublicKey) -> None:
        """Raise OtaError unless `public_key` signed this manifest."""
        try:
            public_key.verify(self.signature, self.digest)
        except InvalidSignature:
            raise OtaError(
                "the release is not signed by this release key: build it again with "
                "`trackside ota release --key` and the fleet's key"
            ) from None


def generate_key(private_path: Path, public_path: Path) -> str:
    """Write a new Ed25519 release key (PEM, mode 600) and its public half (hex); the hex."""
    if private_path.exists():
        raise OtaError(f"{private_path} exists: a new key would strand every device that trusts it")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public_hex = key.public_key().public_bytes_raw().hex()
    public_path.write_text(public_hex + "\n")
    return public_hex


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The release key in `path` (PEM, as `trackside ota keygen` writes it)."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise OtaError(f"cannot read the release key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise OtaError(f"{path} is not an Ed25519 key: make one with `trackside ota keygen`")
    return key


def load_public_key(text: str) -> Ed25519PublicKey:
    """A public release key from its 64 hex digits (release.pub, or trackside.json's ota_key)."""
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.strip()))
    except ValueError as exc:
        raise OtaError(f"not a public release key (64 hex digits expected): {exc}") from exc


def build_release(
    board: str,
    version: str,
    key: Ed25519PrivateKey,
    firmware: Path | None = None,
    min_micropython: str = MIN_MICROPYTHON,
) -> bytes:
    """The signed bundle of the app for `board`, from `firmware` (default: this checkout's)."""
    if not _VERSION.match(version):
        raise OtaError(f"version {version!r}: use 1-32 letters, digits and . + _ -")
    files: dict[str, bytes] = {}
    for entry in bundle(board):
        if entry.target in ROOT_ONLY:
            continue
        source = entry.source
        if firmware is not None and source.parent == FIRMWARE:
            source = firmware / source.name
        if entry.target.endswith(".py"):
            files[entry.target[:-3] + ".mpy"] = compile_mpy(source, entry.target)
        else:
            files[entry.target] = source.read_bytes()
    manifest = {
        "format": FORMAT,
        "version": version,
        "boards": [board],
        "micropython": min_micropython,
        "files": [
            [name, len(data), hashlib.sha256(data).hexdigest()] for name, data in files.items()
        ],
    }
    manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode("ascii")
    signature = key.sign(hashlib.sha256(manifest_bytes).digest())
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        _add(tar, "manifest.json", manifest_bytes)
        _add(tar, "manifest.sig", signature)
        for name, data in files.items():
            _add(tar, f"files/{name}", data)
    return out.getvalue()


def read_release(data: bytes, public_key: Ed25519PublicKey | None = None) -> Release:
    """The release in bundle `data`, its files checked against the manifest and, with
    `public_key`, its signature too; OtaError says what is wrong."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = {
                m.name: _read(tar, m) for m in tar.getmembers() if m.isfile()
            }
    except tarfile.TarError as exc:
        raise OtaError(f"not a release bundle (a tar file): {exc}") from exc
    try:
        release = Release(
            members.pop("manifest.json"),
            members.pop("manifest.sig"),
            {name.removeprefix("files/"): body for name, body in members.items()},
        )
        listed = {name: (size, digest) for name, size, digest in release.manifest["files"]}
    except (KeyError, ValueError, TypeError) as exc:
        raise OtaError(f"not a release bundle: no readable manifest ({exc})") from exc
    if set(listed) != set(release.files):
        raise OtaError("the bundle's files are not the manifest's: build the release again")
    for name, body in release.files.items():
        if listed[name] != (len(body), hashlib.sha256(body).hexdigest()):
            raise OtaError(f"{name} does not match its SHA-256 in the manifest: the bundle was "
                           "changed after it was signed")
    if public_key is not None:
        release.verify(public_key)
    return release


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    extracted = tar.extractfile(member)
    if extracted is None:
        raise OtaError(f"{member.name} in the bundle cannot be read")
    return extracted.read()
