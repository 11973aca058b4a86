"""A serial terminal (pyserial): the board's output to the screen, keystrokes to the board.

Ctrl-] leaves, as in miniterm and telnet. Ctrl-C, Ctrl-D and the rest go to the board (they
interrupt main.py and soft-reset it there).
"""

from __future__ import annotations

import logging
import os
import termios
import threading
import tty
from typing import BinaryIO

import serial

from gateway.devicetools import DeviceToolError
from gateway.devicetools.boards import check_port

__all__ = ["EXIT_KEY", "run_console"]

log = logging.getLogger(__name__)

EXIT_KEY = b"\x1d"  # Ctrl-]


def run_console(port: str, stdin_fd: int, stdout: BinaryIO, baudrate: int = 115200) -> None:
    """Relay `port` <-> (stdin_fd, stdout) until Ctrl-] or the end of stdin."""
    check_port(port)
    try:
        link = serial.Serial(port, baudrate, timeout=0.1, exclusive=True)
    except serial.SerialException as exc:
        raise DeviceToolError(f"cannot open {port}: {exc}") from exc
    stop = threading.Event()
    reader = threading.Thread(target=_board_to_screen, args=(link, stdout, stop), daemon=True)
    reader.start()
    saved = termios.tcgetattr(stdin_fd) if os.isatty(stdin_fd) else None
    try:
        if saved is not None:
            tty.setraw(stdin_fd)  # every key, Ctrl-C included, goes to the board
        _keys_to_board(stdin_fd, link)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        stop.set()
        reader.join(5)
        link.close()


def _keys_to_board(stdin_fd: int, link: serial.Serial) -> None:
    while True:
        keys = os.read(stdin_fd, 1024)
        if not keys:
            return
        before, exit_key, _ = keys.partition(EXIT_KEY)
        if before:
            link.write(before)
        if exit_key:
            return


def _board_to_screen(link: serial.Serial, stdout: BinaryIO, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            data = link.read(max(1, link.in_waiting))
        except serial.SerialException as exc:
            log.error("lost the serial port %s: %s; press Ctrl-] to leave", link.port, exc)
            return
        if data:
            stdout.write(data)
            stdout.flush()
