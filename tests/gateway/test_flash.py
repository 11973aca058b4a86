"""Flashing: esptool calls shaped right and its errors explained; UF2 copies to a boot drive.

No test pretends a board exists: the esptool boundary is faked where a chip would answer, and
the real esptool is run only against ports where no ESP32 is (and fails as it should).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
import serial

from gateway import GatewayError
from gateway.devicetools import FlashError, PortBusyError, PortNotFoundError, WrongChipError
from gateway.devicetools import flash as flash_module
from gateway.devicetools.flash import find_uf2_drives, flash_esp, flash_uf2
from tests.fixtures.virtual_board import VirtualBoardHandle

RP2040_FAMILY = 0xE48BFF56
ESP32S2_FAMILY = 0xBFDD4EEE


@pytest.fixture
def esp_image(tmp_path: Path) -> Path:
    image = tmp_path / "ESP32_GENERIC.bin"
    image.write_bytes(b"\xe9" + bytes(4095))
    return image


class FakeLoader:
    """Stands in for esptool's ESPLoader: the chip's answers, and the calls made."""

    ESP_ROM_BAUD = 115200

    def __init__(self, chip: str, calls: list[tuple[str, Any]]) -> None:
        self.CHIP_NAME = chip
        self.calls = calls

    def __enter__(self) -> FakeLoader:
        return self

    def __exit__(self, *_: object) -> None:
        self.calls.append(("close", None))

    def get_chip_description(self) -> str:
        return f"{self.CHIP_NAME} (revision v3.1)"

    def change_baud(self, baud: int) -> None:
        self.calls.append(("change_baud", baud))


class FakeEsptool:
    """The functions of esptool.cmds that flash_esp calls, recording their arguments."""

    def __init__(self, chip: str) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.loader = FakeLoader(chip, self.calls)

    def detect_chip(self, port: str, connect_attempts: int) -> FakeLoader:
        self.calls.append(("detect_chip", (port, connect_attempts)))
        return self.loader

    def run_stub(self, esp: FakeLoader) -> FakeLoader:
        self.calls.append(("run_stub", esp is self.loader))
        return esp

    def attach_flash(self, esp: FakeLoader) -> None:
        self.calls.append(("attach_flash", None))

    def erase_flash(self, esp: FakeLoader) -> None:
        self.calls.append(("erase_flash", None))

    def write_flash(self, esp: FakeLoader, addr_data: list[tuple[int, str]]) -> None:
        self.calls.append(("write_flash", addr_data))

    def reset_chip(self, esp: FakeLoader, mode: str) -> None:
        self.calls.append(("reset_chip", mode))


def use_fake(monkeypatch: pytest.MonkeyPatch, chip: str) -> FakeEsptool:
    fake = FakeEsptool(chip)
    monkeypatch.setattr(flash_module, "cmds", fake)
    return fake


def test_esp32_flash_calls_esptool_in_order(
    monkeypatch: pytest.MonkeyPatch, pty_port: str, esp_image: Path
) -> None:
    fake = use_fake(monkeypatch, "ESP32")
    assert flash_esp(pty_port, esp_image, connect_attempts=3) == "ESP32 (revision v3.1)"
    assert fake.calls == [
        ("detect_chip", (pty_port, 3)),
        ("run_stub", True),
        ("change_baud", 460800),
        ("attach_flash", None),
        ("erase_flash", None),
        ("write_flash", [(0x1000, str(esp_image))]),  # MicroPython's ESP32 image offset
        ("reset_chip", "hard-reset"),
        ("close", None),
    ]


def test_no_erase_and_rom_baud_skip_those_steps(
    monkeypatch: pytest.MonkeyPatch, pty_port: str, esp_image: Path
) -> None:
    fake = use_fake(monkeypatch, "ESP32")
    flash_esp(pty_port, esp_image, baud=115200, erase=False)
    assert [name for name, _ in fake.calls] == [
        "detect_chip", "run_stub", "attach_flash", "write_flash", "reset_chip", "close"
    ]


def test_wrong_chip_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, pty_port: str, esp_image: Path
) -> None:
    fake = use_fake(monkeypatch, "ESP32-S3")
    with pytest.raises(WrongChipError, match=r"is an ESP32-S3, not the ESP32 of esp32-devkitc"):
        flash_esp(pty_port, esp_image)
    assert [name for name, _ in fake.calls] == ["detect_chip", "close"]


def test_nonexistent_port_is_a_clear_error_before_esptool(
    monkeypatch: pytest.MonkeyPatch, esp_image: Path
) -> None:
    fake = use_fake(monkeypatch, "ESP32")
    with pytest.raises(PortNotFoundError, match="/dev/ttyTRACKSIDE-NONE does not exist") as caught:
        flash_esp("/dev/ttyTRACKSIDE-NONE", esp_image)
    assert isinstance(caught.value, GatewayError)
    assert fake.calls == []


def test_busy_port_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, pty_port: str, esp_image: Path
) -> None:
    fake = use_fake(monkeypatch, "ESP32")
    with serial.Serial(pty_port, exclusive=True), pytest.raises(PortBusyError, match="in use"):
        flash_esp(pty_port, esp_image)
    assert fake.calls == []


def test_a_file_that_is_not_an_esp_image_is_refused(pty_port: str, tmp_path: Path) -> None:
    not_image = tmp_path / "firmware.uf2"
    not_image.write_bytes(b"UF2\n" + bytes(508))
    with pytest.raises(FlashError, match="not an ESP32 firmware image"):
        flash_esp(pty_port, not_image)


@pytest.mark.integration
def test_real_esptool_on_a_board_that_is_no_esp32(
    virtual_board: VirtualBoardHandle, esp_image: Path
) -> None:
    # The virtual board answers with MicroPython's REPL, never with an ESP32 bootloader.
    with pytest.raises(FlashError) as caught:
        flash_esp(virtual_board.port, esp_image, connect_attempts=1)
    message = str(caught.value)
    assert f"no ESP32 bootloader answered on {virtual_board.port}" in message
    assert "hold BOOT" in message


def uf2_image(path: Path, family: int) -> Path:
    block = struct.pack("<8I", 0x0A324655, 0x9E5D5157, 0x2000, 0x10000000, 256, 0, 1, family)
    path.write_bytes(block + bytes(476) + struct.pack("<I", 0x0AB16F30))
    return path


def boot_drive(path: Path, board_id: str) -> Path:
    path.mkdir(parents=True)
    path.joinpath("INFO_UF2.TXT").write_text(
        f"UF2 Bootloader v3.0\nModel: Raspberry Pi RP2\nBoard-ID: {board_id}\n"
    )
    return path


def test_uf2_copies_to_a_pico_boot_drive(tmp_path: Path) -> None:
    image = uf2_image(tmp_path / "RPI_PICO_W.uf2", RP2040_FAMILY)
    drive = boot_drive(tmp_path / "media" / "me" / "RPI-RP2", "RPI-RP2")
    copied = flash_uf2(image, drive)
    assert copied == drive / "RPI_PICO_W.uf2"
    assert copied.read_bytes() == image.read_bytes()
    assert find_uf2_drives([tmp_path / "media"]) == [drive]


def test_a_folder_without_info_uf2_is_not_a_boot_drive(tmp_path: Path) -> None:
    image = uf2_image(tmp_path / "RPI_PICO_W.uf2", RP2040_FAMILY)
    folder = tmp_path / "usb-stick"
    folder.mkdir()
    with pytest.raises(FlashError, match="not a UF2 boot drive"):
        flash_uf2(image, folder)
    assert list(folder.iterdir()) == []
    assert find_uf2_drives([tmp_path]) == []


def test_another_chips_drive_or_image_is_refused(tmp_path: Path) -> None:
    image = uf2_image(tmp_path / "RPI_PICO_W.uf2", RP2040_FAMILY)
    pico2 = boot_drive(tmp_path / "RP2350", "RP2350")
    with pytest.raises(WrongChipError, match="belongs to a RP2350"):
        flash_uf2(image, pico2)
    drive = boot_drive(tmp_path / "RPI-RP2", "RPI-RP2")
    with pytest.raises(WrongChipError, match="family 0xbfdd4eee"):
        flash_uf2(uf2_image(tmp_path / "s2.uf2", ESP32S2_FAMILY), drive)
    text = tmp_path / "notes.txt"
    text.write_text("not firmware\n" * 100)
    with pytest.raises(FlashError, match="not a UF2 file"):
        flash_uf2(text, drive)
