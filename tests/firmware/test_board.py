"""The watchdog of firmware/board.py on the MicroPython unix port, with a recording machine.WDT
and a clock the test sets: armed only after the start-up grace period, fed afterwards, never
with "watchdog": false."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.micropython import micropython_binary

pytestmark = pytest.mark.integration

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
# Fakes for `machine` and `time` go into sys.modules before board.py is imported; each feed()
# at a given clock reading prints what the watchdog has seen so far as one JSON line.
SCRIPT = """
import sys, json
sys.path.insert(0, %(firmware)r)

class WDT:
    made = []
    def __init__(self, timeout):
        WDT.made.append(timeout)
        self.feeds = 0
    def feed(self):
        self.feeds += 1

class Clock:
    now = 0
    def ticks_ms(self):
        return Clock.now
    def ticks_add(self, a, b):
        return a + b
    def ticks_diff(self, a, b):
        return a - b

class Machine:
    pass

machine = Machine()
machine.WDT = WDT
sys.modules["machine"] = machine
sys.modules["time"] = Clock()
import board

b = board.Board(json.loads(%(cfg)r))
for now in (0, 29999, 30000, 30001, 31000):
    Clock.now = now
    b.feed()
    print(json.dumps({"at": now, "made": WDT.made, "feeds": b.wdt.feeds if b.wdt else 0}))
"""


def _feeds(cfg: dict[str, object]) -> list[dict[str, object]]:
    script = SCRIPT % {"firmware": str(FIRMWARE), "cfg": json.dumps(cfg)}
    out = subprocess.run([str(micropython_binary()), "-c", script], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_watchdog_is_armed_after_the_grace_period_and_then_fed() -> None:
    rows = _feeds({"device_id": 1, "train_id": "T1", "keepalive_s": 30})
    assert [r["made"] for r in rows] == [[], [], [8000], [8000], [8000]]  # capped at 8 s
    assert [r["feeds"] for r in rows] == [0, 0, 0, 1, 2]


def test_watchdog_timeout_follows_a_short_keepalive() -> None:
    rows = _feeds({"device_id": 1, "train_id": "T1", "keepalive_s": 5})
    assert rows[-1]["made"] == [5000]


def test_watchdog_false_never_arms() -> None:
    rows = _feeds({"device_id": 1, "train_id": "T1", "watchdog": False})
    assert all(r["made"] == [] and r["feeds"] == 0 for r in rows)
