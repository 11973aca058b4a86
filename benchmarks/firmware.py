"""Firmware footprint: bytes per reading, heap use on the unix port, compiled app size.

Run: `python -m benchmarks.firmware`. Boots the real firmware (compiled as on a board) on the
MicroPython unix port and plays one scenario: the broker is down at boot, so the device samples
every 20 ms until its outbox is full and it has dropped readings; then a private Mosquitto
starts, the device connects, drains the outbox and sends READINGS more readings. Modules are
imported as on a board (`sys.path[0]` is ''). Measured, on the unix port from PyPI (64-bit) and
on the same port built for 32-bit x86 (benchmarks/micropython32.py), as the boards are:

- app heap: `gc.mem_alloc()` right after a `gc.collect()`, at the end of every service round
  (what the app holds: code, objects, the full outbox), its high-water over the scenario, less
  what the interpreter held before the app was imported (also reported);
- incl. garbage: `gc.mem_alloc()` at the end of every service round before that collection
  (the app heap plus the garbage of one round), run in a heap too large to need a collection;
- smallest heap: the smallest fixed heap (`-X heapsize`, 1 KiB steps) in which the unmodified
  app (no extra collections) completes the scenario.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.micropython32 import VERSION, micropython32
from benchmarks.report import report
from firmware import wire
from firmware.model import TrainModel
from gateway.devicetools.deploy import compile_mpy
from gateway.firmware_bundle import BOARDS, bundle
from gateway.localkafka import free_port
from gateway.mosquitto import mosquitto_binary
from tests.fixtures.micropython import layout_board, micropython_binary

__all__ = ["main"]

READINGS = 40  # acknowledged after the outbox drained
DROPS = 10  # readings dropped from the full outbox before the broker comes up
MEASURE_HEAP_KIB = 256  # large enough that the measuring run never collects on its own
# Wraps App.service: reports when the outbox is full and has dropped DROPS readings, then
# exits once READINGS more are acknowledged. With MEASURE set it records gc.mem_alloc()
# before and after a gc.collect() at the end of every round.
PROBE = """
import gc, sys
sys.path[0] = ""  # import as a board does: a module is 'app.mpy', not this folder's long path
gc.collect()
BASE = gc.mem_alloc()  # the interpreter and this probe, before the app
import app
MEASURE = {measure}
peak = [0, 0, -1]  # live, with garbage, seq when the outbox was full
service = app.App.service
def probed(self):
    service(self)
    if MEASURE:
        peak[1] = max(peak[1], gc.mem_alloc())
        gc.collect()
        peak[0] = max(peak[0], gc.mem_alloc())
    if peak[2] < 0 and self.outbox.dropped >= {drops}:
        peak[2] = self.seq
        print("FULL", len(self.outbox))
    elif peak[2] >= 0 and self.seq >= peak[2] + {readings} and not len(self.outbox):
        print("HEAP", BASE, peak[0] - BASE, peak[1] - BASE)
        raise SystemExit
app.App.service = probed
import main
"""


def reading_sizes() -> list[dict[str, object]]:
    """Payload and MQTT PUBLISH size of one model reading, 6 and 7 channels."""
    model = TrainModel(1)
    model.step(600.0)
    values = {k: round(v * wire.scale(k)) for k, v in model.values().items() if v is not None}
    topic = "trackside/v1/T101/42/telemetry"
    rows: list[dict[str, object]] = []
    for label, channels in (("standard (6 channels)", 6), ("with ambient (7)", 7)):
        subset = dict(list(values.items())[:channels])
        frame = wire.encode(42, 513, 1001, 1767225600123, subset)
        # fixed header 2 + topic length 2 + topic + packet id 2 + payload
        rows.append({"what": f"reading, {label}", "bytes": len(frame),
                     "MQTT PUBLISH bytes": 2 + 2 + len(topic) + 2 + len(frame)})
    return rows


def mpy_sizes() -> list[dict[str, object]]:
    """Compiled size of the app (everything but main.py and umqtt) per board, and of umqtt."""
    rows: list[dict[str, object]] = []
    umqtt = 0
    for board in BOARDS:
        app = 0
        for item in bundle(board):
            if not item.target.endswith(".py"):
                continue
            size = len(compile_mpy(item.source, item.target))
            if item.target.startswith("lib/"):
                umqtt = size
            elif item.target != "main.py":
                app += size
        rows.append({"what": f"compiled app .mpy, {board}", "bytes": app})
    rows.append({"what": "umqtt.simple .mpy (micropython-lib)", "bytes": umqtt})
    return rows


@dataclass(frozen=True)
class Heap:
    """gc.mem_alloc() figures of one measuring run, in bytes."""

    base: int  # the interpreter and the probe, before the app is imported
    live: int  # the app's live heap high-water, above `base`
    garbage: int  # the same with one service round's garbage


def scenario(micropython: Path, tmp: Path, heap_kib: int, measure: bool) -> Heap | None:
    """Play the scenario in a `heap_kib` heap: the heap figures (zero unless `measure`), or
    None if the app did not complete it."""
    port = free_port()
    board = layout_board(tmp / f"board-{micropython.parent.name}-{heap_kib}-{measure}", {
        "device_id": 42, "train_id": "BENCH", "board": "unix", "sample_ms": 20,
        "broker": {"host": "127.0.0.1", "port": port}, "backoff_ms": [100, 300]})
    (board / "probe.py").write_text(PROBE.format(measure=measure, drops=DROPS,
                                                 readings=READINGS))
    conf = board / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    device = subprocess.Popen(
        [micropython, "-X", f"heapsize={heap_kib}K", "probe.py"], cwd=board,
        env={"MICROPYPATH": "lib"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    broker = None
    deadline = time.monotonic() + 120
    try:
        assert device.stdout is not None
        for line in device.stdout:
            if line.startswith("FULL") and broker is None:
                broker = subprocess.Popen([mosquitto_binary(), "-c", str(conf)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            elif line.startswith("HEAP"):
                return Heap(*(int(n) for n in line.split()[1:4]))
            if time.monotonic() > deadline:
                break
        return None
    finally:
        device.kill()
        device.wait(10)
        if broker is not None:
            broker.terminate()
            broker.wait(10)


def smallest_heap(micropython: Path, tmp: Path, low_kib: int, high_kib: int) -> int | None:
    """Bisect the smallest heap (KiB) the app completes the scenario in; None: not even high."""
    if scenario(micropython, tmp, high_kib, measure=False) is None:
        return None
    while high_kib - low_kib > 1:  # invariant: high runs, low does not (or is untested)
        mid = (low_kib + high_kib) // 2
        if scenario(micropython, tmp, mid, measure=False) is None:
            low_kib = mid
        else:
            high_kib = mid
    return high_kib


def heap(micropython: Path, build: str, tmp: Path) -> list[dict[str, object]]:
    """Live and one-round heap high-water in a large heap, and the smallest heap."""
    measured = scenario(micropython, tmp, MEASURE_HEAP_KIB, measure=True)
    if measured is None:
        raise SystemExit("the firmware did not complete the scenario: see its output above")
    smallest = smallest_heap(micropython, tmp, 8, 96)
    return [
        {"what": f"app heap high-water, outbox full, {build}", "bytes": measured.live},
        {"what": f"  incl. one service round's garbage, {build}", "bytes": measured.garbage},
        {"what": f"  interpreter before the app, {build}", "bytes": measured.base},
        {"what": f"smallest fixed heap the scenario runs in, {build}",
         "bytes": smallest and smallest * 1024},
    ]


def main() -> None:
    """Measure and report."""
    with tempfile.TemporaryDirectory() as tmp:
        rows = reading_sizes() + mpy_sizes()
        rows += heap(micropython_binary(), "unix port", Path(tmp))
        rows += heap(micropython32(), "unix port built 32-bit", Path(tmp))
    report(
        "firmware",
        "Firmware footprint",
        rows,
        notes="Targets: reading <= 32 B, heap < 40 KB, compiled app < 32 KB. Heap: boot with "
        f"the broker down, fill the outbox and drop {DROPS}, connect, drain, {READINGS} more "
        "readings; the app's heap is what gc.mem_alloc() shows above the interpreter's own. "
        "The unix port from PyPI is 64-bit, its objects take about twice the bytes they take "
        f"on the 32-bit boards; the 32-bit rows are MicroPython {VERSION}'s unix port built "
        "for 32-bit x86 (benchmarks/micropython32.py).",
    )


if __name__ == "__main__":
    main()
