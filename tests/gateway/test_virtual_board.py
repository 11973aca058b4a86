"""The virtual board: boot runs main.py, Ctrl-C reaches the REPL, resets reboot, raw REPL works."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from mpremote.transport_serial import SerialTransport

from gateway.devicetools.deploy import compile_mpy
from tests.fixtures.virtual_board import VirtualBoardHandle, start_virtual_board

pytestmark = pytest.mark.integration

TICKING_MAIN = """import time
n = 0
while True:
    print('tick', n)
    n += 1
    time.sleep(0.2)
"""


def read_until(port: serial.Serial, expected: bytes, timeout: float = 30.0) -> bytes:
    """Bytes read from `port` up to and including `expected`; fails after `timeout`."""
    seen = b""
    deadline = time.monotonic() + timeout
    while expected not in seen:
        assert time.monotonic() < deadline, f"{expected!r} not seen; got {seen[-300:]!r}"
        seen += port.read(max(1, port.in_waiting))
    return seen


@pytest.fixture
def ticking_board(tmp_path: Path) -> Iterator[VirtualBoardHandle]:
    root = tmp_path / "board"
    root.mkdir()
    (root / "main.py").write_text(TICKING_MAIN)
    board = start_virtual_board(root)
    yield board
    board.stop()


def test_boot_runs_main_ctrl_c_gives_repl_ctrl_d_reboots(ticking_board: VirtualBoardHandle) -> None:
    with serial.Serial(ticking_board.port, 115200, timeout=0.2) as port:
        read_until(port, b"tick")
        port.write(b"\x03")
        assert b"KeyboardInterrupt" in read_until(port, b">>> ")
        port.write(b"print(6 * 7)\r")
        read_until(port, b"42\r\n>>> ")
        port.write(b"\x04")
        rebooted = read_until(port, b"tick 1\r\n")
        assert b"MPY: soft reboot\r\ntick 0\r\n" in rebooted


def test_raw_repl_soft_reset_writes_and_hashes_files(ticking_board: VirtualBoardHandle) -> None:
    source = ticking_board.root / "greet_src.py"
    source.write_text("def hello():\n    return 'hi from mpy'\n")
    greet = compile_mpy(source, "lib/greet.py")
    transport = SerialTransport(ticking_board.port, baudrate=115200, timeout=2)
    try:
        # As mpremote does by default: Ctrl-C, raw REPL, soft reset; main.py must not run then.
        transport.enter_raw_repl(soft_reset=True)
        assert transport.eval("1 + 1") == 2
        transport.exec("import os\nos.mkdir('lib')")
        transport.fs_writefile("lib/greet.mpy", greet)
        assert transport.fs_hashfile("lib/greet.mpy", "sha256") == hashlib.sha256(greet).digest()
        # Compiled by this mpy-cross, imported by this unix port from lib/ (MICROPYPATH).
        assert transport.eval("__import__('greet').hello()") == "hi from mpy"
    finally:
        transport.close()
    assert (ticking_board.root / "lib" / "greet.mpy").read_bytes() == greet


def test_sigterm_stops_the_board_cleanly(virtual_board: VirtualBoardHandle) -> None:
    virtual_board.stop()
    assert virtual_board.process.returncode == 0, virtual_board.log_file.read_text()
