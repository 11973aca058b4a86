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

Then the outbox drain (64-bit port): DRAIN_DEVICES devices sample every DRAIN_SAMPLE_MS with the
broker down until each holds DRAIN_BACKLOG readings (the field test of issue 9: 4 devices at 4
readings/s, the broker away for 60 s), then Mosquitto starts. Each device reports, from its
own clock, how long its connecting service round took, how long from its connect until its
outbox was empty, how many readings it sent meanwhile (the backlog and what it sampled during
the drain), and the largest interval between two of its readings from the full backlog to the
first reading after the drain.
"""

from __future__ import annotations

import queue
import statistics
import subprocess
import tempfile
import threading
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
def probed(self, next_sample):
    left = service(self, next_sample)
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
    return left
app.App.service = probed
import main
"""


DRAIN_DEVICES = 4
DRAIN_SAMPLE_MS = 250
DRAIN_BACKLOG = 240  # 60 s without the broker at 4 readings/s; the outbox keeps 256
# Wraps App.sample and App.service: prints READY once the outbox holds the backlog; from then on
# tracks the largest interval between two readings; notes how long the connecting service round
# took and, once the outbox is empty, how many readings went out since the connect and how long
# that took; prints DRAINED with those at the first reading after the drain.
DRAIN_PROBE = """
import sys, time
sys.path[0] = ""
import app
service, sample = app.App.service, app.App.sample
st = [0, 0, 0, -1, 0, 0, 0]  # ready, last sample, largest gap, connected at, connect ms, sent, ms
def probed_sample(self):
    now = time.ticks_ms()
    if st[0]:
        st[2] = max(st[2], time.ticks_diff(now, st[1]))
    st[1] = now
    if st[6]:
        print("DRAINED", st[5], st[6], st[4], st[2])
        raise SystemExit
    sample(self)
def probed_service(self, next_sample):
    offline = self.link.client is None
    start = time.ticks_ms()
    left = service(self, next_sample)
    if not st[0] and len(self.outbox) >= {backlog}:
        st[0] = 1
        print("READY")
    elif offline and self.link.client is not None and st[3] < 0:
        st[3] = time.ticks_ms()
        st[4] = time.ticks_diff(st[3], start)
        st[5] = len(self.outbox) - self.seq  # plus the seq at the end: what was sent since
    elif st[3] >= 0 and not st[6] and not len(self.outbox):
        st[5] += self.seq
        st[6] = max(1, time.ticks_diff(time.ticks_ms(), st[3]))
    return left
app.App.sample, app.App.service = probed_sample, probed_service
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


@dataclass(frozen=True)
class Drain:
    """One device's reconnect and drain, as it measured them."""

    sent: int  # readings acknowledged from the connect until the outbox was empty
    ms: int  # from the connect until the outbox was empty
    connect_ms: int  # the service round that connected (CONNECT, SUBSCRIBEs, status)
    largest_gap_ms: int  # between two readings, from the backlog to after the drain


def drain(micropython: Path, tmp: Path) -> list[Drain]:
    """Fill DRAIN_DEVICES outboxes with the broker down, start it, and collect each drain."""
    port = free_port()
    lines: queue.Queue[str] = queue.Queue()
    devices = []
    for device_id in range(1, DRAIN_DEVICES + 1):
        board = layout_board(tmp / f"drain-{device_id}", {
            "device_id": device_id, "train_id": "DRAIN", "board": "unix",
            "sample_ms": DRAIN_SAMPLE_MS, "broker": {"host": "127.0.0.1", "port": port},
            "backoff_ms": [1000, 2000]})
        (board / "probe.py").write_text(DRAIN_PROBE.replace("{backlog}", str(DRAIN_BACKLOG)))
        device = subprocess.Popen(
            [micropython, "probe.py"], cwd=board, env={"MICROPYPATH": "lib"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=_lines, args=(device, lines), daemon=True).start()
        devices.append(device)
    conf = tmp / "drain-mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    broker = None
    drains: list[Drain] = []
    ready = 0
    timeout = 60 + DRAIN_BACKLOG * DRAIN_SAMPLE_MS / 1000
    try:
        while len(drains) < DRAIN_DEVICES:
            line = lines.get(timeout=timeout)
            if line.startswith("READY"):
                ready += 1
                if ready == DRAIN_DEVICES:
                    broker = subprocess.Popen([mosquitto_binary(), "-c", str(conf)],
                                              stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL)
            elif line.startswith("DRAINED"):
                drains.append(Drain(*(int(n) for n in line.split()[1:5])))
            elif line.startswith("Traceback"):
                raise SystemExit(f"a device failed in the drain scenario: {line}")
        return drains
    except queue.Empty:
        raise SystemExit(f"the drain scenario stalled: {ready} devices ready, "
                         f"{len(drains)} drained") from None
    finally:
        for device in devices:
            device.kill()
            device.wait(10)
        if broker is not None:
            broker.terminate()
            broker.wait(10)


def _lines(proc: subprocess.Popen[str], into: queue.Queue[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        into.put(line)


def drain_rows(drains: list[Drain]) -> list[dict[str, object]]:
    """Drain rate, reconnect time and the sampling schedule, over the devices."""
    rates = [d.sent * 1000 / d.ms for d in drains]
    where = f"{len(drains)} devices at {1000 // DRAIN_SAMPLE_MS}/s, backlog {DRAIN_BACKLOG}"
    return [
        {"what": f"outbox drain, readings/s per device, mean (min), {where}",
         "value": f"{statistics.mean(rates):,.0f} ({min(rates):,.0f})"},
        {"what": "  drain time, ms, mean (max)",
         "value": f"{statistics.mean(d.ms for d in drains):,.0f} ({max(d.ms for d in drains):,})"},
        {"what": "  reconnect (CONNECT, SUBSCRIBEs, status), ms, mean (max)",
         "value": f"{statistics.mean(d.connect_ms for d in drains):.0f} "
                  f"({max(d.connect_ms for d in drains)})"},
        {"what": f"  largest interval between readings, ms (schedule {DRAIN_SAMPLE_MS})",
         "value": max(d.largest_gap_ms for d in drains)},
    ]


def main() -> None:
    """Measure and report."""
    with tempfile.TemporaryDirectory() as tmp:
        rows = reading_sizes() + mpy_sizes()
        rows += heap(micropython_binary(), "unix port", Path(tmp))
        rows += heap(micropython32(), "unix port built 32-bit", Path(tmp))
        rows += drain_rows(drain(micropython_binary(), Path(tmp)))
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
