"""A staged rollout's plan and its devices' progress, as the Kafka records carry them, and the
pure decisions every gateway takes from them: which devices are targets, in which wave each
one goes, when the next wave may start, and when the abort rule fires (docs/ota.md, "Staged
rollouts")."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.ota import OtaError
from gateway.ota.push import FINAL, Target

__all__ = [
    "FAILED",
    "FINAL",
    "STATES",
    "AbortRule",
    "DeviceProgress",
    "RolloutPlan",
    "RolloutState",
    "abort_reason",
    "assign_waves",
    "canaries_done",
    "device_name",
    "parse_device",
    "progress_key",
    "summarize",
]

RolloutState = Literal["running", "paused", "aborted", "done"]
# A device's states: pending (a target, not offered yet), offered (the app has the offer or
# rebooted into the update client), fetching, switching, then one of FINAL.
FAILED = FINAL - {"confirmed"}
STATES = ("pending", "offered", "fetching", "switching", "confirmed", *sorted(FAILED))


def device_name(target: Target) -> str:
    """`T101/1`: how plans and the CLI name a device."""
    return f"{target.train_id}/{target.device_id}"


def parse_device(name: str) -> Target:
    """`T101/1` -> Target("T101", 1)."""
    train, _, device = name.partition("/")
    if not train or not device.isdigit():
        raise OtaError(f"{name!r} is not a device: write TRAIN/DEVICE, e.g. T101/1")
    return Target(train, int(device))


def progress_key(rollout_id: str, target: Target) -> str:
    """The progress topic's key: `{rollout}/{train}/{device}`."""
    return f"{rollout_id}/{device_name(target)}"


class AbortRule(BaseModel):
    """Abort once at least `min_devices` have a verdict and more than `max_failure_pct` of
    those verdicts are failures."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    min_devices: int = Field(3, ge=1)
    max_failure_pct: float = Field(20.0, ge=0, le=100)


class RolloutPlan(BaseModel):
    """One record of the rollouts topic (key: `id`): what to roll out where, and its state."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    release: str  # the releases topic's key
    version: str
    trains: tuple[str, ...] = ()  # with `devices` empty too: every device of every gateway
    devices: tuple[str, ...] = ()
    canaries: tuple[str, ...] = ()
    waves: tuple[float, ...] = (100.0,)  # cumulative percentages of each gateway's targets
    rate_per_min: int | None = Field(None, ge=1)  # new offers per minute and gateway, at most
    abort: AbortRule = AbortRule()
    timeout_s: float = Field(600.0, gt=0)
    state: RolloutState = "running"
    reason: str = ""
    updated: float = Field(default_factory=time.time)

    @field_validator("waves")
    @classmethod
    def _waves_rise_to_100(cls, waves: tuple[float, ...]) -> tuple[float, ...]:
        if not waves or list(waves) != sorted(waves) or waves[-1] != 100 or waves[0] <= 0:
            raise ValueError(f"waves must rise to 100 (percent), e.g. 10,50,100; got {waves}")
        return waves

    @field_validator("devices", "canaries")
    @classmethod
    def _names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            try:
                parse_device(name)
            except OtaError as exc:  # pydantic reports ValueError, with the field's name
                raise ValueError(str(exc)) from exc
        return names

    def selects(self, target: Target) -> bool:
        """Whether the plan targets this device (every canary is a target)."""
        name = device_name(target)
        if name in self.canaries or name in self.devices or target.train_id in self.trains:
            return True
        return not self.trains and not self.devices


class DeviceProgress(BaseModel):
    """One record of the progress topic (key: `progress_key`): how one device stands."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    rollout: str
    train_id: str
    device_id: int
    gateway: str
    wave: int  # 0: canary, then 1.. as the plan's waves
    state: str
    detail: str = ""
    fetched: int = 0
    at: float = Field(default_factory=time.time)

    @property
    def target(self) -> Target:
        """The device."""
        return Target(self.train_id, self.device_id)


def assign_waves(plan: RolloutPlan, targets: Iterable[Target]) -> dict[Target, int]:
    """Each of one gateway's targets and its wave: its canaries 0, the others in order of
    train and device id into waves 1.., the first `ceil(n * pct / 100)` by the end of each."""
    canaries = {parse_device(c) for c in plan.canaries}
    ordered = sorted(set(targets), key=lambda t: (t.train_id, t.device_id))
    waves = {t: 0 for t in ordered if t in canaries}
    rest = [t for t in ordered if t not in canaries]
    start = 0
    for number, pct in enumerate(plan.waves, 1):
        end = math.ceil(len(rest) * pct / 100)
        waves.update({t: number for t in rest[start:end]})
        start = max(start, end)
    return waves


def abort_reason(plan: RolloutPlan, progress: Iterable[DeviceProgress]) -> str | None:
    """Why the rollout must abort by its rule, over every gateway's verdicts; None if not."""
    verdicts = [p for p in progress if p.state in FINAL]
    failures = [p for p in verdicts if p.state in FAILED]
    if len(verdicts) < plan.abort.min_devices or not verdicts:
        return None
    pct = 100 * len(failures) / len(verdicts)
    if pct <= plan.abort.max_failure_pct:
        return None
    return (f"{len(failures)} of {len(verdicts)} devices failed ({pct:.0f}% > "
            f"{plan.abort.max_failure_pct:g}%), e.g. {device_name(failures[-1].target)}: "
            f"{failures[-1].state} {failures[-1].detail}".rstrip())


def summarize(progress: Sequence[DeviceProgress]) -> dict[int, dict[str, int]]:
    """Counts per state, per wave (0: canaries)."""
    table: dict[int, dict[str, int]] = {}
    for p in progress:
        counts = table.setdefault(p.wave, dict.fromkeys(STATES, 0))
        counts[p.state] = counts.get(p.state, 0) + 1
    return dict(sorted(table.items()))


def canaries_done(plan: RolloutPlan, progress: Mapping[str, DeviceProgress]) -> bool:
    """Whether every canary of the plan has a verdict (on whichever gateway serves it)."""
    return all(
        (p := progress.get(progress_key(plan.id, parse_device(c)))) is not None
        and p.state in FINAL
        for c in plan.canaries
    )
