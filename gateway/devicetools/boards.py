"""Attached serial boards: list them with the likely kind, and check a port before using it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import serial
from serial.tools import list_ports

from gateway.devicetools import DeviceToolError, PortBusyError, PortNotFoundError

__all__ = ["SerialBoard", "check_port", "list_boards", "usb_kind"]

log = logging.getLogger(__name__)

# USB vendor ids (and a few product ids) seen on MicroPython boards: (vid, pid or None) -> kind.
_USB_KINDS: dict[tuple[int, int | None], str] = {
    (0x303A, None): "Espressif native USB (ESP32-S2/S3/C3/C6)",
    (0x10C4, 0xEA60): "Silicon Labs CP210x USB-UART (ESP32-DevKitC and most ESP32 boards)",
    (0x10C4, None): "Silicon Labs USB-UART (likely an ESP32 board)",
    (0x1A86, 0x7523): "WCH CH340 USB-UART (cheap ESP32 boards)",
    (0x1A86, 0x55D4): "WCH CH9102 USB-UART (ESP32 boards)",
    (0x1A86, None): "WCH USB-UART (likely an ESP32 board)",
    (0x0403, None): "FTDI USB-UART (ESP32 boards, adapters)",
    (0x2E8A, 0x0005): "Raspberry Pi RP2040 running MicroPython (Pico / Pico W)",
    (0x2E8A, None): "Raspberry Pi RP2 (Pico / Pico W)",
}


@dataclass(frozen=True)
class SerialBoard:
    """One serial port with a USB identity, as the operating system reports it."""

    port: str
    vid: int | None
    pid: int | None
    description: str
    serial_number: str | None

    @property
    def usb_id(self) -> str:
        """VID:PID in hex, or "-" for a port without USB identity."""
        if self.vid is None or self.pid is None:
            return "-"
        return f"{self.vid:04X}:{self.pid:04X}"

    @property
    def kind(self) -> str:
        """The likely kind of board, from the USB ids."""
        return usb_kind(self.vid, self.pid)


def usb_kind(vid: int | None, pid: int | None) -> str:
    """Name the likely board kind for a USB VID:PID; "unknown" when nothing matches."""
    if vid is None:
        return "unknown (no USB identity)"
    return _USB_KINDS.get((vid, pid)) or _USB_KINDS.get((vid, None)) or "unknown"


def list_boards(include_all: bool = False) -> list[SerialBoard]:
    """Serial ports with a USB identity (every serial port with `include_all`), sorted by port."""
    boards = [
        SerialBoard(p.device, p.vid, p.pid, p.description or "", p.serial_number)
        for p in list_ports.comports()
        if include_all or p.vid is not None
    ]
    return sorted(boards, key=lambda b: b.port)


def check_port(port: str) -> None:
    """Raise PortNotFoundError or PortBusyError unless `port` can be opened exclusively now."""
    if "://" not in port and not Path(port).exists():
        found = ", ".join(b.port for b in list_boards()) or "none"
        raise PortNotFoundError(
            f"serial port {port} does not exist (attached boards: {found}); "
            "run `trackside boards` and pass one of its ports with --port"
        )
    try:
        probe = serial.serial_for_url(port, do_not_open=True, exclusive=True)
        probe.open()
    except serial.SerialException as exc:
        if "lock" in str(exc).lower() or "busy" in str(exc).lower():
            raise PortBusyError(
                f"serial port {port} is in use by another program (a console, mpremote, "
                "esptool?); close it and try again"
            ) from exc
        if "permission denied" in str(exc).lower():
            raise DeviceToolError(
                f"no permission to open serial port {port}; add yourself to the port's group "
                "(`sudo usermod -aG dialout $USER` on Debian, then log in again)"
            ) from exc
        raise PortNotFoundError(f"cannot open serial port {port}: {exc}") from exc
    probe.close()
    log.debug("port %s is free", port)
