"""Firmware mode: the real firmware on the MicroPython unix port, one process per device.

The unix bundle (`gateway.firmware_bundle.bundle("unix")`) is copied once into `workdir/app`;
each device gets a folder `workdir/<train>-<device>/` holding its `trackside.json` (board
"unix", the `sim` key choosing seed and fault) and whatever state the firmware keeps there,
and runs `micropython <app>/main.py` in it, its console in `console.log`. A monitor
subscription counts the readings that reach the broker. Fidelity over load: simulated time
is wall time (no speedup), and only the sensor model's faults are available.

    async with FirmwareFleet(spec, broker, workdir) as fleet:
        ...  # fleet.stats.published counts readings seen on the broker
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

from pydantic import SecretStr

from gateway.devicetools.virtual_board import find_micropython
from gateway.firmware_bundle import bundle
from gateway.simulate.connection import Connection
from gateway.simulate.fast import Progress
from gateway.simulate.fleet import (
    BrokerAddress,
    DeviceSpec,
    FleetSpec,
    FleetStats,
    SimulatedFleet,
    SimulateError,
    device_password,
)
from gateway.simulate.scenarios import MODEL_FAULTS

__all__ = ["FirmwareFleet", "device_config"]

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0


def device_config(
    device: DeviceSpec, spec: FleetSpec, broker: BrokerAddress, password: SecretStr | None
) -> dict[str, object]:
    """The device's trackside.json (docs/architecture.md), with the simulator's `sim` key."""
    user = broker.user
    if password is not None:
        user = f"device-{device.device_id}"
    elif broker.password is not None:
        password = broker.password
    return {
        "device_id": device.device_id,
        "train_id": device.train_id,
        "board": "unix",
        "broker": {
            "host": broker.host,
            "port": broker.port,
            "user": user or "",
            "password": password.get_secret_value() if password else "",
            "tls": False,
        },
        "wifi": {"ssid": "", "password": ""},
        "sample_ms": max(100, round(1000 / spec.rate_hz)),
        "sim": {"seed": device.seed, "fault": device.fault, "fault_start_s": device.fault_start_s},
    }


def _check(spec: FleetSpec) -> None:
    unsupported = sorted({f.scenario for f in spec.faults} - set(MODEL_FAULTS))
    if unsupported:
        raise SimulateError(
            f"{', '.join(unsupported)} need the fast mode; the firmware runs only the sensor "
            f"model's faults ({', '.join(MODEL_FAULTS)})"
        )
    if spec.speedup != 1.0:
        raise SimulateError("the firmware runs in real time: leave out --speedup with --firmware")
    if spec.topic_prefix != "trackside":
        raise SimulateError("the firmware publishes under trackside/ only")


class FirmwareFleet(SimulatedFleet):
    """One `micropython` process per device of the spec; `start()`/`stop()` or `async with`."""

    def __init__(
        self,
        spec: FleetSpec,
        broker: BrokerAddress,
        workdir: Path,
        *,
        credentials: dict[int, SecretStr] | None = None,
        progress: Progress | None = None,
        progress_interval_s: float = 0.5,
    ) -> None:
        _check(spec)
        self.spec = spec
        self.broker = broker
        self.workdir = workdir
        self._credentials = credentials
        self._progress = progress
        self._interval_s = progress_interval_s
        self._devices = spec.devices()
        self._ids = {d.device_id for d in self._devices}
        self._procs: list[subprocess.Popen[bytes]] = []
        self._crashed: set[int] = set()  # pids already reported
        self._monitor: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._t0 = 0.0
        self.stats = FleetStats(devices=len(self._devices))

    async def start(self) -> None:
        """Subscribe the monitor, lay out the boards and boot every device."""
        micropython = find_micropython()
        app = self.workdir / "app"
        await asyncio.to_thread(self._layout, app)
        self._monitor = Connection(
            f"sim-monitor-{secrets.token_hex(3)}",
            self.broker.user,
            self.broker.password.get_secret_value() if self.broker.password else None,
            None,
            lambda connection: None,
            self._count,
        )
        await self._monitor.connect(self.broker.host, self.broker.port)
        await self._monitor.subscribe([f"{self.spec.topic_prefix}/v1/+/+/telemetry"])
        env = {**os.environ, "MICROPYPATH": f"{app}:{app / 'lib'}"}
        for device in self._devices:
            board = self.workdir / f"{device.train_id}-{device.device_id}"
            with (board / "console.log").open("ab") as console:
                self._procs.append(
                    subprocess.Popen(
                        [str(micropython), str(app / "main.py")],
                        cwd=board,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=console,
                        stderr=subprocess.STDOUT,
                    )
                )
        self._t0 = asyncio.get_running_loop().time()
        self._task = asyncio.create_task(self._report(), name="simulate-firmware-progress")

    async def stop(self) -> None:
        """Power every device off (SIGTERM, as a supervisor stops it) and close the monitor."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                await asyncio.to_thread(proc.wait, STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._update_stats()
        self._procs = []
        if self._monitor is not None:
            await self._monitor.close()
            self._monitor = None
        if self._progress:
            self._progress(self.stats)

    def _layout(self, app: Path) -> None:
        for item in bundle("unix"):
            target = app / item.target
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(item.source, target)
        for device in self._devices:
            board = self.workdir / f"{device.train_id}-{device.device_id}"
            board.mkdir(parents=True, exist_ok=True)
            password = None
            if self._credentials is not None:
                password = device_password(self._credentials, device.device_id)
            config = device_config(device, self.spec, self.broker, password)
            (board / "trackside.json").write_text(json.dumps(config, indent=1))

    def _count(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) == 5 and parts[3].isdigit() and int(parts[3]) in self._ids:
            self.stats.published += 1
            self.stats.acked += 1

    async def _report(self) -> None:
        last = 0
        while True:
            await asyncio.sleep(self._interval_s)
            self._update_stats()
            self.stats.rate_per_s = (self.stats.published - last) / self._interval_s
            last = self.stats.published
            if self._progress:
                self._progress(self.stats)

    def _update_stats(self) -> None:
        self.stats.connections = sum(p.poll() is None for p in self._procs)
        self.stats.elapsed_s = asyncio.get_running_loop().time() - self._t0
        for proc in self._procs:
            if proc.poll() not in (None, -signal.SIGTERM) and proc.pid not in self._crashed:
                self._crashed.add(proc.pid)
                log.warning(
                    "a firmware process exited with %s; its console.log under %s says why",
                    proc.returncode,
                    self.workdir,
                )
