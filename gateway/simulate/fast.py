"""Fast mode: thousands of simulated devices in one process, over a few MQTT connections.

Python API (used by `trackside simulate`, the demo and the tests)::

    spec = FleetSpec(trains=20, rate_hz=1, faults=(FaultAssignment.parse("T103:coolant_loss@30"),))
    stats = await run_fleet(spec, BrokerAddress(host="127.0.0.1", port=1883), duration_s=60)

or, to keep a fleet running next to other work::

    async with FastFleet(spec, broker, progress=print) as fleet:
        ...  # fleet.stats is live; fleet.devices[10101].enabled
    # or: await fleet.start() ... await fleet.stop()

Each device publishes wire-format v2 readings at QoS 1 on its own telemetry topic, a retained
status at start (and `{"state":"offline"}` at stop), and obeys `disable`/`enable`/`reboot`/
`identify` on its `cmd` topics, replying on `reply`. Devices share `connections` MQTT
connections, or each has its own (`per_device_connections`, with its own last will and,
given `credentials`, its own broker account `device-<id>`). Readings of one sample are spread
evenly over the sample period; simulated time runs `spec.speedup` times faster than wall
time. When the broker acknowledges too slowly, production waits (backpressure) instead of
queueing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable

from pydantic import SecretStr

from gateway.simulate.connection import Connection
from gateway.simulate.device import SimDevice
from gateway.simulate.fleet import (
    BrokerAddress,
    FleetSpec,
    FleetStats,
    SimulatedFleet,
    SimulateError,
    device_password,
)

__all__ = ["OFFLINE", "FastFleet", "Progress", "run_fleet"]

log = logging.getLogger(__name__)

Progress = Callable[[FleetStats], None]
OFFLINE = b'{"state":"offline"}'  # the firmware's last will, byte for byte
SLICE_S = 0.02  # readings of one sample period go out in slices this far apart
CONNECT_CONCURRENCY = 32
DRAIN_TIMEOUT_S = 30.0


class FastFleet(SimulatedFleet):
    """A simulated fleet in this process; `start()`/`stop()` or `async with`."""

    def __init__(
        self,
        spec: FleetSpec,
        broker: BrokerAddress,
        *,
        connections: int = 4,
        per_device_connections: bool = False,
        credentials: dict[int, SecretStr] | None = None,
        progress: Progress | None = None,
        progress_interval_s: float = 0.5,
        max_pending: int = 20_000,
    ) -> None:
        if connections < 1:
            raise SimulateError("--connections must be at least 1")
        self.spec = spec
        self.broker = broker
        step_s = spec.speedup / spec.rate_hz
        self.devices = {
            d.device_id: SimDevice(d, spec.topic_prefix, step_s) for d in spec.devices()
        }
        self._by_train: dict[str, list[SimDevice]] = defaultdict(list)
        for device in self.devices.values():
            self._by_train[device.train_id].append(device)
        self._per_device = per_device_connections
        self._credentials = credentials
        self._connection_count = len(self.devices) if per_device_connections else connections
        self._connections: list[Connection] = []
        self._connection_of: dict[int, Connection] = {}
        self._devices_of: dict[str, list[SimDevice]] = {}
        self._progress = progress
        self._interval_s = progress_interval_s
        self._max_pending = max_pending
        self._tasks: list[asyncio.Task[None]] = []
        self._t0 = 0.0
        self._last = (0.0, 0)  # (time, published) at the last progress report
        self.stats = FleetStats(devices=len(self.devices))

    async def start(self) -> None:
        """Connect every connection, publish the statuses, subscribe to commands, start."""
        self._build_connections()
        try:
            await _bounded(
                (c.connect(self.broker.host, self.broker.port) for c in self._connections),
                CONNECT_CONCURRENCY,
            )
            await _bounded(
                (c.subscribe(self._command_topics(c)) for c in self._connections),
                CONNECT_CONCURRENCY,
            )
        except BaseException:
            await self._close_connections()
            raise
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        self._last = (self._t0, 0)
        self.stats.connections = len(self._connections)
        self._tasks = [
            asyncio.create_task(self._produce(), name="simulate-produce"),
            asyncio.create_task(self._storms(), name="simulate-storms"),
            asyncio.create_task(self._report(), name="simulate-progress"),
        ]

    async def stop(self) -> None:
        """Stop producing, say offline, wait for outstanding PUBACKs, disconnect."""
        if not self._connections:
            return  # never started, or stopped already
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for device in self.devices.values():
            self._connection_of[device.device_id].send(device.status_topic, OFFLINE, retain=True)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self._pending() and time.monotonic() < deadline:
            for connection in self._connections:
                connection.flush()
            await asyncio.sleep(0.01)
        if self._pending():
            log.warning(
                "%d messages still unacknowledged after %.0f s; is the broker overloaded?",
                self._pending(),
                DRAIN_TIMEOUT_S,
            )
        self._update_stats()
        await self._close_connections()
        if self._progress:
            self._progress(self.stats)

    def _build_connections(self) -> None:
        devices = list(self.devices.values())
        if self._per_device:
            groups = [[d] for d in devices]
            token = "dev"
        else:
            n = min(self._connection_count, len(devices))
            groups = [devices[i::n] for i in range(n)]
            token = secrets.token_hex(3)
        for i, group in enumerate(groups):
            user, password, will = self.broker.user, self.broker.password, None
            if self._per_device:
                device = group[0]
                will = (device.status_topic, OFFLINE)
                if self._credentials is not None:
                    user = f"device-{device.device_id}"
                    password = device_password(self._credentials, device.device_id)
            connection = Connection(
                f"sim-{token}-{group[0].device_id if self._per_device else i}",
                user,
                password.get_secret_value() if password else None,
                will,
                self._birth,
                self._command,
            )
            self._connections.append(connection)
            self._devices_of[connection.client_id] = group
            for device in group:
                self._connection_of[device.device_id] = connection

    def _command_topics(self, connection: Connection) -> list[str]:
        prefix = self.spec.topic_prefix
        if self._per_device:
            device = self._devices_of[connection.client_id][0]
            return [
                f"{prefix}/v1/{device.train_id}/{device.device_id}/cmd",
                f"{prefix}/v1/{device.train_id}/cmd",
            ]
        if connection is self._connections[0]:
            return [f"{prefix}/v1/+/+/cmd", f"{prefix}/v1/+/cmd"]
        return []

    def _birth(self, connection: Connection) -> None:
        for device in self._devices_of[connection.client_id]:
            connection.send(device.status_topic, device.status(), retain=True)

    def _command(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) == 5:
            device = self.devices.get(int(parts[3])) if parts[3].isdigit() else None
            targets = [device] if device is not None and device.train_id == parts[2] else []
        else:
            targets = self._by_train.get(parts[2], [])
        for device in targets:
            reply, changed = device.command(payload)
            connection = self._connection_of[device.device_id]
            if changed:
                connection.send(device.status_topic, device.status(), retain=True)
            connection.send(device.reply_topic, reply)
            self.stats.commands += 1

    async def _produce(self) -> None:
        loop = asyncio.get_running_loop()
        devices = list(self.devices.values())
        period = 1.0 / self.spec.rate_hz
        slices = max(1, min(len(devices), round(period / SLICE_S)))
        groups = [devices[i::slices] for i in range(slices)]
        step = period / slices
        next_at = loop.time()
        for k in itertools.count():
            delay = next_at - loop.time()
            if delay < -period:
                next_at = loop.time()  # a whole period late: carry on, no burst of catch-ups
            next_at += step
            # Yield even when late, so that PUBACKs and commands are read.
            await asyncio.sleep(max(0.0, delay))
            now_ms = time.time_ns() // 1_000_000
            for device in groups[k % slices]:
                if not device.enabled:
                    device.rest()  # held: it sends nothing, and cools
                    continue
                frame, broken = device.reading(now_ms)
                connection = self._connection_of[device.device_id]
                connection.send(device.telemetry_topic, frame, reading=True)
                if broken is not None:
                    connection.send(device.telemetry_topic, broken)
                    self.stats.malformed += 1
            while self._pending() > self._max_pending:
                await asyncio.sleep(0.005)

    async def _storms(self) -> None:
        loop = asyncio.get_running_loop()
        for at_s in self.spec.fleet_events("reconnect_storm"):
            await asyncio.sleep(max(0.0, self._t0 + at_s / self.spec.speedup - loop.time()))
            log.info("reconnect storm: %d connections drop at once", len(self._connections))
            await asyncio.gather(*(c.reconnect() for c in self._connections))
            self.stats.reconnects += len(self._connections)

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            self._update_stats()
            if self._progress:
                self._progress(self.stats)

    def _pending(self) -> int:
        return sum(c.pending for c in self._connections)

    def _update_stats(self) -> None:
        now = asyncio.get_running_loop().time()
        stats = self.stats
        stats.published = sum(c.published for c in self._connections)
        stats.acked = sum(c.acked for c in self._connections)
        stats.lost = sum(c.lost for c in self._connections)
        stats.backlog = sum(len(c.backlog) for c in self._connections)
        stats.disabled = sum(not d.enabled for d in self.devices.values())
        stats.elapsed_s = now - self._t0
        last_t, last_published = self._last
        if now > last_t:
            stats.rate_per_s = (stats.published - last_published) / (now - last_t)
        self._last = (now, stats.published)

    async def _close_connections(self) -> None:
        connections, self._connections = self._connections, []
        await _bounded((c.close() for c in connections), CONNECT_CONCURRENCY)


async def _bounded(jobs: Iterable[Awaitable[None]], limit: int) -> None:
    """Await every job, at most `limit` at a time; the first error is raised."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Awaitable[None]) -> None:
        async with gate:
            await job

    await asyncio.gather(*(one(job) for job in jobs))


async def run_fleet(
    spec: FleetSpec,
    broker: BrokerAddress,
    duration_s: float | None = None,
    progress: Progress | None = None,
    *,
    connections: int = 4,
    per_device_connections: bool = False,
    credentials: dict[int, SecretStr] | None = None,
) -> FleetStats:
    """Run the fleet in fast mode for `duration_s` (None: until cancelled); final counters."""
    fleet = FastFleet(
        spec,
        broker,
        connections=connections,
        per_device_connections=per_device_connections,
        credentials=credentials,
        progress=progress,
    )
    return await fleet.run(duration_s)
