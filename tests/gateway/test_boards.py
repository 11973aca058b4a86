"""Listing boards: the likely kind from USB ids; checking a port before a tool uses it."""

from __future__ import annotations

import pytest
import serial
from serial.tools import list_ports
from serial.tools.list_ports_common import ListPortInfo
from typer.testing import CliRunner

from gateway.cli import app
from gateway.devicetools import PortBusyError, PortNotFoundError
from gateway.devicetools.boards import check_port, list_boards, usb_kind


@pytest.mark.parametrize(
    ("vid", "pid", "kind"),
    [
        (0x10C4, 0xEA60, "Silicon Labs CP210x"),
        (0x1A86, 0x7523, "WCH CH340"),
        (0x0403, 0x6001, "FTDI"),
        (0x303A, 0x1001, "Espressif native USB"),
        (0x2E8A, 0x0005, "Raspberry Pi RP2040 running MicroPython"),
        (0x2E8A, 0x000F, "Raspberry Pi RP2"),
        (0x1234, 0x5678, "unknown"),
        (None, None, "unknown (no USB identity)"),
    ],
)
def test_usb_ids_name_the_likely_board(vid: int | None, pid: int | None, kind: str) -> None:
    assert usb_kind(vid, pid).startswith(kind)


def port_info(device: str, vid: int | None = None, pid: int | None = None) -> ListPortInfo:
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid, info.pid, info.description = vid, pid, "USB device" if vid else "n/a"
    return info


def test_list_shows_usb_ports_and_all_with_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    ports = [port_info("/dev/ttyUSB0", 0x10C4, 0xEA60), port_info("/dev/ttyS0"),
             port_info("/dev/ttyACM0", 0x2E8A, 0x0005)]
    monkeypatch.setattr(list_ports, "comports", lambda: ports)
    found = list_boards()
    assert [(b.port, b.usb_id) for b in found] == [
        ("/dev/ttyACM0", "2E8A:0005"), ("/dev/ttyUSB0", "10C4:EA60")
    ]
    assert len(list_boards(include_all=True)) == 3
    result = CliRunner().invoke(app, ["boards"])
    assert result.exit_code == 0, result.output
    assert "/dev/ttyUSB0" in result.output and "CP210x" in result.output


def test_check_port(pty_port: str) -> None:
    check_port(pty_port)  # exists and is free
    with pytest.raises(PortNotFoundError, match="run `trackside boards`"):
        check_port("/dev/ttyTRACKSIDE-NONE")
    with serial.Serial(pty_port, exclusive=True), pytest.raises(PortBusyError, match="in use"):
        check_port(pty_port)
