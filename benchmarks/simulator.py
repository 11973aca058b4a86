"""Fast simulator: readings/s published at QoS 1 from one process against Mosquitto.

Each row runs the fast mode for a while against a private Mosquitto and counts readings the
broker acknowledged (PUBACK). "max" rows ask for far more than one process can produce, so
they measure the ceiling; the 1 Hz row is a realistic fleet and shows what it costs.
Run: `python -m benchmarks.simulator`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.report import report
from gateway.localkafka import free_port
from gateway.simulate import BrokerAddress, FleetSpec, run_fleet

__all__ = ["main"]

DURATION_S = 10.0
CONNECTIONS = 4
# (devices, readings per second per device, label)
CASES = [
    (1000, 100.0, "max"),
    (5000, 20.0, "max"),
    (5000, 1.0, "1 Hz"),
]


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _row(port: int, devices: int, rate_hz: float, label: str) -> dict[str, object]:
    spec = FleetSpec(trains=devices, rate_hz=rate_hz, topic_prefix="bench")
    cpu0 = _cpu_s()
    stats = asyncio.run(
        run_fleet(
            spec,
            BrokerAddress(host="127.0.0.1", port=port),
            DURATION_S,
            connections=CONNECTIONS,
        )
    )
    cpu = _cpu_s() - cpu0
    return {
        "devices": devices,
        "rate asked": f"{label} ({devices * rate_hz:,.0f}/s)",
        "published/s": stats.published / stats.elapsed_s,
        "acked/s": stats.acked / stats.elapsed_s,
        "acked": stats.acked,
        "CPU %": 100 * cpu / stats.elapsed_s,
        "RSS MiB": _rss_mib(),
    }


def main() -> None:
    """Start Mosquitto, run every case, report."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n"
        )
        broker = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            time.sleep(0.5)
            logging.getLogger("gmqtt").setLevel(logging.ERROR)
            rows = [_row(port, devices, rate, label) for devices, rate, label in CASES]
        finally:
            broker.terminate()
            broker.wait(10)
    report(
        "simulator",
        f"Fast simulator, one process, {CONNECTIONS} connections, QoS 1 to Mosquitto, "
        f"{DURATION_S:.0f} s each",
        rows,
        notes="Publisher: gmqtt (about 4x paho-mqtt's publish rate here). Each reading is "
        "one model step, one wire.encode and one QoS 1 publish; the broker shares the cores. "
        f"Load average at the start: {load:.1f} on {os.cpu_count()} cores.",
    )


if __name__ == "__main__":
    main()
