"""Firmware footprint: bytes per reading, heap use on the unix port, compiled app size.

Run: `python -m benchmarks.firmware`. Boots the real firmware (compiled as on a board) on the
MicroPython unix port and plays one scenario: the broker is down at boot, so the device samples
every 20 ms until its outbox is full and it has dropped readings; then a private Mosquitto
starts, the device connects, drains the outbox and sends READINGS more readings. Measured:

- live heap: `gc.mem_alloc()` right after a `gc.collect()`, at the end of every service round
  (what the app holds: code, objects, the full outbox), its high-water over the scenario;
- heap high-water: `gc.mem_alloc()` at the end of every service round before that collection
  (live heap plus the garbage of one round), run in a heap too large to need a collection;
- smallest heap: the smallest fixed heap (`-X heapsize`, 1 KiB steps) in which the unmodified
  app (no extra collections) completes the scenario.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

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
import gc, app
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
        print("HEAP", peak[0], peak[1])
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


def scenario(tmp: Path, heap_kib: int, measure: bool) -> tuple[int, int] | None:
    """Play the scenario in a `heap_kib` heap: (live, with garbage) peaks, None if it failed."""
    port = free_port()
    board = layout_board(tmp / f"board-{heap_kib}-{measure}", {
        "device_id": 42, "train_id": "BENCH", "board": "unix", "sample_ms": 20,
        "broker": {"host": "127.0.0.1", "port": port}, "backoff_ms": [100, 300]})
    (board / "probe.py").write_text(PROBE.format(measure=measure, drops=DROPS,
                                                 readings=READINGS))
    conf = board / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    device = subprocess.Popen(
        [micropython_binary(), "-X", f"heapsize={heap_kib}K", "probe.py"], cwd=board,
        env={"MICROPYPATH": f"{board}:{board / 'lib'}"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
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
                live, garbage = line.split()[1:3]
                return int(live), int(garbage)
            if time.monotonic() > deadline:
                break
        return None
    finally:
        device.kill()
        device.wait(10)
        if broker is not None:
            broker.terminate()
            broker.wait(10)


def smallest_heap(tmp: Path, low_kib: int, high_kib: int) -> int | None:
    """Bisect the smallest heap (KiB) the app completes the scenario in; None: not even high."""
    if scenario(tmp, high_kib, measure=False) is None:
        return None
    while high_kib - low_kib > 1:  # invariant: high runs, low does not (or is untested)
        mid = (low_kib + high_kib) // 2
        if scenario(tmp, mid, measure=False) is None:
            low_kib = mid
        else:
            high_kib = mid
    return high_kib


def heap(tmp: Path) -> list[dict[str, object]]:
    """Live and one-round heap high-water in a large heap, and the smallest heap."""
    peaks = scenario(tmp, MEASURE_HEAP_KIB, measure=True)
    if peaks is None:
        raise SystemExit("the firmware did not complete the scenario: see its output above")
    smallest = smallest_heap(tmp, 16, 96)
    return [
        {"what": "live heap high-water, outbox full, unix port (64-bit)", "bytes": peaks[0]},
        {"what": "heap high-water incl. one service round's garbage", "bytes": peaks[1]},
        {"what": "smallest fixed heap the scenario runs in", "bytes": smallest and smallest * 1024},
    ]


def main() -> None:
    """Measure and report."""
    with tempfile.TemporaryDirectory() as tmp:
        rows = reading_sizes() + mpy_sizes() + heap(Path(tmp))
    report(
        "firmware",
        "Firmware footprint",
        rows,
        notes="Targets: reading <= 32 B, heap < 40 KB, compiled app < 32 KB. Heap: boot with "
        f"the broker down, fill the outbox and drop {DROPS}, connect, drain, {READINGS} more "
        "readings. The unix port is 64-bit: its objects take about twice the bytes they take "
        "on the 32-bit boards.",
    )


if __name__ == "__main__":
    main()
