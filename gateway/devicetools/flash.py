"""Put MicroPython on a board: esptool's Python API for ESP32, a UF2 copy for the Pico W.

The firmware image comes from micropython.org (ESP32_GENERIC `.bin`, RPI_PICO_W `.uf2`); these
tools check that image and board match before writing anything.
"""

from __future__ import annotations

import logging
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from esptool import cmds
from esptool.util import FatalError

from gateway.devicetools import FlashError, WrongChipError
from gateway.devicetools.boards import check_port

__all__ = [
    "ESP_BOARDS",
    "UF2_BOARDS",
    "EspBoard",
    "Uf2Board",
    "find_uf2_drives",
    "flash_esp",
    "flash_uf2",
]

log = logging.getLogger(__name__)

_UF2_MAGIC = (0x0A324655, 0x9E5D5157)  # first two words of every 512-byte UF2 block
_UF2_FAMILY_FLAG = 0x00002000
_ESP_IMAGE_MAGIC = 0xE9


@dataclass(frozen=True)
class EspBoard:
    """An ESP board: the chip esptool must find and where MicroPython's image starts."""

    chip: str
    offset: int


@dataclass(frozen=True)
class Uf2Board:
    """A UF2 board: the boot drive's Board-ID prefix and the UF2 family of its chip."""

    board_id: str
    family_id: int


ESP_BOARDS = {"esp32-devkitc": EspBoard("ESP32", 0x1000)}
UF2_BOARDS = {"pico-w": Uf2Board("RPI-RP2", 0xE48BFF56)}  # RP2040


def flash_esp(
    port: str,
    image: Path,
    board: str = "esp32-devkitc",
    baud: int = 460800,
    erase: bool = True,
    connect_attempts: int = 7,
) -> str:
    """Write the MicroPython `image` to the ESP board on `port`; returns the chip description."""
    target = ESP_BOARDS[board]
    _check_esp_image(image)
    check_port(port)
    try:
        with cmds.detect_chip(port, connect_attempts=connect_attempts) as esp:
            if target.chip != esp.CHIP_NAME:
                raise WrongChipError(
                    f"the board on {port} is an {esp.CHIP_NAME}, not the {target.chip} of "
                    f"{board}; pick the matching --board and MicroPython image"
                )
            description = str(esp.get_chip_description())
            loader = cmds.run_stub(esp)
            if baud != loader.ESP_ROM_BAUD:
                loader.change_baud(baud)
            cmds.attach_flash(loader)
            if erase:
                cmds.erase_flash(loader)
            cmds.write_flash(loader, [(target.offset, str(image))])
            cmds.reset_chip(loader, "hard-reset")
    except FatalError as exc:
        raise FlashError(_explain(port, exc)) from exc
    log.info("flashed %s on %s with %s", description, port, image)
    return description


def _explain(port: str, exc: FatalError) -> str:
    reason = str(exc).strip().splitlines()[0]
    if "Failed to connect" in reason or "No serial data" in reason:
        return (
            f"no ESP32 bootloader answered on {port} ({reason}). Is this the ESP32's port "
            "(`trackside boards`)? If it is, hold BOOT, press EN/RESET, release BOOT and try "
            "again, or lower --baud"
        )
    return f"esptool failed on {port}: {reason}"


def _check_esp_image(image: Path) -> None:
    head = image.read_bytes()[:1] if image.is_file() else b""
    if head != bytes([_ESP_IMAGE_MAGIC]):
        raise FlashError(
            f"{image} is not an ESP32 firmware image; download ESP32_GENERIC .bin from "
            "micropython.org/download"
        )


def find_uf2_drives(roots: list[Path] | None = None) -> list[Path]:
    """Mounted UF2 boot drives: folders under the usual mount roots holding INFO_UF2.TXT."""
    if roots is None:
        roots = [Path("/media"), Path("/run/media"), Path("/Volumes")]
    candidates = [
        path
        for root in roots
        if root.is_dir()
        for path in [*root.glob("*"), *root.glob("*/*")]
    ]
    return sorted(path for path in candidates if (path / "INFO_UF2.TXT").is_file())


def flash_uf2(image: Path, drive: Path, board: str = "pico-w") -> Path:
    """Copy the UF2 `image` to the boot `drive` of a `board`; returns the copied file's path."""
    target = UF2_BOARDS[board]
    info = drive / "INFO_UF2.TXT"
    if not info.is_file():
        raise FlashError(
            f"{drive} is not a UF2 boot drive (no INFO_UF2.TXT); hold BOOTSEL while plugging "
            "the Pico W in, then pass the RPI-RP2 drive's folder with --drive"
        )
    board_id = _board_id(info.read_text(errors="replace"))
    if not board_id.startswith(target.board_id):
        raise WrongChipError(
            f"the boot drive {drive} belongs to a {board_id or 'board of unknown kind'}, not a "
            f"{target.board_id} ({board}); plug in the right board"
        )
    _check_uf2_family(image, target.family_id)
    copied = drive / image.name
    try:
        shutil.copyfile(image, copied)
    except OSError as exc:
        raise FlashError(f"copying {image} to {drive} failed: {exc}") from exc
    log.info("copied %s to %s; the board reboots into MicroPython", image, drive)
    return copied


def _board_id(info: str) -> str:
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Board-ID":
            return value.strip()
    return ""


def _check_uf2_family(image: Path, family_id: int) -> None:
    block = image.read_bytes()[:512] if image.is_file() else b""
    if len(block) < 512 or struct.unpack_from("<II", block) != _UF2_MAGIC:
        raise FlashError(
            f"{image} is not a UF2 file; download RPI_PICO_W .uf2 from micropython.org/download"
        )
    flags, family = struct.unpack_from("<I", block, 8)[0], struct.unpack_from("<I", block, 28)[0]
    if flags & _UF2_FAMILY_FLAG and family != family_id:
        raise WrongChipError(
            f"{image} is built for UF2 family {family:#010x}, not {family_id:#010x} of the "
            "Pico W's RP2040; download the RPI_PICO_W image"
        )
