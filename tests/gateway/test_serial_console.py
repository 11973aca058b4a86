"""The serial console against a virtual board: a line typed reaches the REPL, its answer shows."""

from __future__ import annotations

import io
import os
import threading
import time

import pytest

from gateway.devicetools import PortNotFoundError
from gateway.devicetools.serial_console import EXIT_KEY, run_console
from tests.fixtures.virtual_board import VirtualBoardHandle


class Screen(io.RawIOBase):
    """What the console prints, readable by the test while the console runs."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        with self.lock:
            self.data += b
        return len(b)

    def wait_for(self, expected: bytes, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while expected not in bytes(self.data):
            assert time.monotonic() < deadline, f"{expected!r} not shown: {bytes(self.data)!r}"
            time.sleep(0.05)


@pytest.mark.integration
def test_a_line_typed_reaches_the_repl(virtual_board: VirtualBoardHandle) -> None:
    keys_out, keys_in = os.pipe()
    screen = Screen()
    console = threading.Thread(
        target=run_console, args=(virtual_board.port, keys_out, screen), daemon=True
    )
    console.start()
    try:
        os.write(keys_in, b"\r")
        screen.wait_for(b">>> ")
        os.write(keys_in, b"print('console', 6 * 7)\r")
        screen.wait_for(b"console 42\r\n")
    finally:
        os.write(keys_in, EXIT_KEY)
        console.join(10)
        os.close(keys_in)
        os.close(keys_out)
    assert not console.is_alive(), "Ctrl-] did not end the console"


def test_missing_port_is_a_clear_error() -> None:
    with pytest.raises(PortNotFoundError, match="/dev/ttyTRACKSIDE-NONE does not exist"):
        run_console("/dev/ttyTRACKSIDE-NONE", 0, io.BytesIO())
