"""Fixtures for the gateway's device tools: a serial port with nothing behind it."""

from __future__ import annotations

import os
import tty
from collections.abc import Iterator

import pytest


@pytest.fixture
def pty_port() -> Iterator[str]:
    """A serial port that exists and is free, with nothing behind it."""
    host, port = os.openpty()
    tty.setraw(port)
    yield os.ttyname(port)
    os.close(port)
    os.close(host)
