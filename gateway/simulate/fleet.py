"""The fleet spec: which trains, how many devices each, which fault strikes which train when.

Everything the simulator does follows from a `FleetSpec`, so one spec and one seed give the
same fleet (device ids, models, fault times) in both modes. Device ids are
`train number * 100 + device index + 1`: T101's first device is 10101. `SimulatedFleet` is
what the two modes share: start, stop, `async with`, `run()` and live `FleetStats`.
"""

from __future__ import annotations

import asyncio
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from gateway import GatewayError
from gateway.simulate.scenarios import FLEET_SCENARIOS, MODEL_FAULTS, SCENARIOS

__all__ = [
    "BrokerAddress",
    "DeviceSpec",
    "FaultAssignment",
    "FleetSpec",
    "FleetStats",
    "SimulateError",
    "SimulatedFleet",
    "device_password",
    "fleet_spec",
    "load_credentials",
]

_FAULT = re.compile(
    r"^(?:(?P<train>[A-Za-z0-9_-]+|\*):)?(?P<name>[a-z_]+)(?:@(?P<at>[0-9]+(?:\.[0-9]+)?))?$"
)


class SimulateError(GatewayError):
    """The simulator cannot run as asked; the message says what to change."""


class FaultAssignment(BaseModel):
    """One scenario for one train (or every train when `train_id` is None), from `start_s` on."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    train_id: str | None = None
    scenario: str
    start_s: float = Field(0.0, ge=0.0)

    @classmethod
    def parse(cls, text: str) -> FaultAssignment:
        """Parse `T103:coolant_loss@30`, `*:malformed_frames` or `reconnect_storm@60`."""
        match = _FAULT.match(text.strip())
        if match is None:
            raise SimulateError(
                f"fault {text!r}: write TRAIN:SCENARIO@SECONDS, e.g. T103:coolant_loss@30 "
                "(TRAIN may be * or left out for every train)"
            )
        train = match["train"]
        return cls(
            train_id=None if train in (None, "*") else train,
            scenario=match["name"],
            start_s=float(match["at"] or 0.0),
        )


@dataclass(frozen=True)
class DeviceSpec:
    """One simulated device: identity, model seed and its scenarios (name -> start, sim s)."""

    train_id: str
    device_id: int
    seed: int
    fault: str | None = None
    fault_start_s: float = 0.0
    scenarios: dict[str, float] = field(default_factory=dict)


class FleetSpec(BaseModel):
    """The simulated fleet; validated once, frozen afterwards."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    trains: int = Field(20, ge=1, le=100_000)
    devices_per_train: int = Field(1, ge=1, le=99)
    rate_hz: float = Field(1.0, gt=0.0, le=1000.0)
    speedup: float = Field(1.0, gt=0.0, le=10_000.0)
    seed: int = Field(0, ge=0)
    faults: tuple[FaultAssignment, ...] = ()
    first_train: int = Field(101, ge=1)
    topic_prefix: str = Field("trackside", pattern=r"^[A-Za-z0-9_.-]+$")

    @model_validator(mode="after")
    def _check_faults(self) -> FleetSpec:
        ids = self.train_ids()
        trains = set(ids)
        model_faults: dict[str, str] = {}
        for fault in self.faults:
            if fault.scenario not in SCENARIOS:
                raise ValueError(
                    f"unknown scenario {fault.scenario!r}; choose from {', '.join(SCENARIOS)}"
                )
            if fault.train_id is not None and fault.train_id not in trains:
                raise ValueError(
                    f"fault on {fault.train_id}: the fleet has trains "
                    f"{ids[0]}..{ids[-1]}; raise --trains or pick another train"
                )
            if fault.scenario in FLEET_SCENARIOS and fault.train_id is not None:
                raise ValueError(f"{fault.scenario} strikes the whole fleet: leave out the train")
            if fault.scenario in MODEL_FAULTS:
                for train in [fault.train_id] if fault.train_id else ids:
                    if train in model_faults:
                        raise ValueError(
                            f"{train} has two sensor-model faults ({model_faults[train]}, "
                            f"{fault.scenario}); the model runs one fault per train"
                        )
                    model_faults[train] = fault.scenario
        return self

    def train_ids(self) -> list[str]:
        """T101, T102, ... in order."""
        return [f"T{self.first_train + i}" for i in range(self.trains)]

    @property
    def device_count(self) -> int:
        """How many devices the fleet has."""
        return self.trains * self.devices_per_train

    def devices(self) -> list[DeviceSpec]:
        """Every device with its identity, seed and scenarios, trains in order."""
        devices = []
        for i in range(self.trains):
            number = self.first_train + i
            train_id = f"T{number}"
            mine = [f for f in self.faults if f.train_id in (None, train_id)]
            model = next((f for f in mine if f.scenario in MODEL_FAULTS), None)
            scenarios = {f.scenario: f.start_s for f in mine if f.scenario not in MODEL_FAULTS}
            for d in range(self.devices_per_train):
                device_id = number * 100 + d + 1
                devices.append(
                    DeviceSpec(
                        train_id=train_id,
                        device_id=device_id,
                        seed=(self.seed * 1_000_003 + device_id) & 0xFFFFFFFF,
                        fault=model.scenario if model else None,
                        fault_start_s=model.start_s if model else 0.0,
                        scenarios=scenarios,
                    )
                )
        return devices

    def fleet_events(self, scenario: str) -> list[float]:
        """Start times (simulated s) of a fleet-wide scenario such as reconnect_storm."""
        return sorted(f.start_s for f in self.faults if f.scenario == scenario)


def fleet_spec(**fields: Any) -> FleetSpec:
    """A validated FleetSpec; a bad field raises SimulateError naming it."""
    try:
        return FleetSpec(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SimulateError(f"{where + ': ' if where else ''}{message}") from exc


class BrokerAddress(BaseModel):
    """Where the simulated devices connect, and as whom when they share connections."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    user: str | None = None
    password: SecretStr | None = None


@dataclass
class FleetStats:
    """Counters of a running fleet, updated live; `rate_per_s` over the last progress interval."""

    devices: int = 0
    connections: int = 0
    published: int = 0
    acked: int = 0
    malformed: int = 0
    backlog: int = 0
    lost: int = 0
    disabled: int = 0
    commands: int = 0
    reconnects: int = 0
    elapsed_s: float = 0.0
    rate_per_s: float = 0.0

    @property
    def mean_rate_per_s(self) -> float:
        """Readings published per second since the start."""
        return self.published / self.elapsed_s if self.elapsed_s > 0 else 0.0


class SimulatedFleet(ABC):
    """What both modes offer: `start()`/`stop()` or `async with`, `run()`, live `stats`."""

    stats: FleetStats

    @abstractmethod
    async def start(self) -> None:
        """Connect and start every device."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop every device; `stats` then holds the final counters."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def run(self, duration_s: float | None = None) -> FleetStats:
        """Start, run for `duration_s` (or until cancelled), stop; the final counters."""
        await self.start()
        try:
            if duration_s is None:
                await asyncio.Event().wait()
            else:
                await asyncio.sleep(duration_s)
        finally:
            await self.stop()
        return self.stats


def load_credentials(path: Path) -> dict[int, SecretStr]:
    """Per-device passwords from a JSON file `{"<device id>": "<password>", ...}`.

    The broker account of a device is `device-<id>`, as `trackside devices add` registers it.
    """
    try:
        raw = json.loads(path.read_text())
        return {int(device): SecretStr(str(password)) for device, password in raw.items()}
    except (OSError, ValueError, AttributeError) as exc:
        raise SimulateError(
            f"{path}: cannot read the credentials: {exc}; "
            'write JSON like {"10101": "password", ...}'
        ) from exc


def device_password(credentials: dict[int, SecretStr], device_id: int) -> SecretStr:
    """The password of `device_id` in the credentials; SimulateError when it has none."""
    password = credentials.get(device_id)
    if password is None:
        raise SimulateError(
            f"no password for device {device_id} in the credentials file; "
            "add it or leave out --credentials"
        )
    return password
