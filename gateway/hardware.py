"""Board definitions and sensor wiring from `hardware/`, loaded and validated.

A board file (`hardware/boards/<board>.json`) says what each GPIO can do; a wiring file
(`hardware/wiring/<board>.json`) says which sensor is on which pin, and is copied to the board
as `board.json` for the firmware. `check()` finds pin conflicts, flash and reserved pins,
strapping pins and input-only pins used as outputs, each with a message saying what to do.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from firmware import wire
from gateway import GatewayError

__all__ = [
    "HARDWARE",
    "BoardSpec",
    "Finding",
    "HardwareError",
    "Wiring",
    "boards",
    "check",
    "load_board",
    "load_bom",
    "load_wiring",
    "pin_uses",
]

log = logging.getLogger(__name__)

HARDWARE = Path(__file__).resolve().parent.parent / "hardware"

Pin = int | str  # a GPIO number, or a named pin such as the Pico W's "LED"
Direction = Literal["in", "out", "io", "adc"]
M = TypeVar("M", bound=BaseModel)


class HardwareError(GatewayError):
    """Hardware data that cannot be loaded or does not pass validation."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Strapping(_Frozen):
    """Why a strapping pin matters, and whether wiring a sensor to it is an error."""

    level: Literal["warning", "error"]
    why: str


class BoardSpec(_Frozen):
    """What each pin of one board can do."""

    board: str
    name: str
    mcu: str
    gpio: frozenset[int]
    input_only: frozenset[int] = frozenset()
    flash: frozenset[int] = frozenset()
    adc: frozenset[int] = frozenset()
    strapping: dict[int, Strapping] = {}
    reserved: dict[int, str] = {}
    named: dict[str, str] = {}
    notes: str = ""


class OneWire(_Frozen):
    pin: Pin
    probes: list[str] = Field(min_length=1)


class I2C(_Frozen):
    sda: Pin
    scl: Pin
    freq: int = Field(400_000, gt=0, le=1_000_000)
    accel_addr: int = Field(0x53, ge=0x08, le=0x77)


class SupplyAdc(_Frozen):
    pin: Pin
    divider: float = Field(gt=1.0)


class SpeedPulse(_Frozen):
    pin: Pin
    pulses_per_rev: int = Field(gt=0)
    wheel_m: float = Field(gt=0.0)


class StatusLed(_Frozen):
    pin: Pin


class Pins(_Frozen):
    onewire: OneWire
    i2c: I2C
    supply_adc: SupplyAdc
    speed_pulse: SpeedPulse
    status_led: StatusLed


class Wiring(_Frozen):
    """Which sensor is on which pin of one board (the firmware reads this file)."""

    board: str
    pins: Pins


@dataclass(frozen=True)
class Finding:
    """One validation result: an error stops a deploy, a warning needs a person to look."""

    level: Literal["warning", "error"]
    message: str


def boards() -> list[str]:
    """Names of the boards defined in hardware/boards/."""
    return sorted(p.stem for p in (HARDWARE / "boards").glob("*.json"))


def _load(model: type[M], path: Path) -> M:
    if not path.exists():
        raise HardwareError(f"{path} is missing: known boards are {', '.join(boards())}")
    try:
        return model.model_validate(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise HardwareError(f"{path} is not valid JSON: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise HardwareError(f"{path}: {problems}") from exc


def load_board(board: str) -> BoardSpec:
    """The board definition hardware/boards/<board>.json."""
    return _load(BoardSpec, HARDWARE / "boards" / f"{board}.json")


def load_wiring(board: str) -> Wiring:
    """The sensor wiring hardware/wiring/<board>.json."""
    return _load(Wiring, HARDWARE / "wiring" / f"{board}.json")


def load_bom() -> list[dict[str, str]]:
    """The bill of materials, one dict per line of hardware/bom.csv."""
    with (HARDWARE / "bom.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def pin_uses(wiring: Wiring) -> list[tuple[str, Pin, Direction]]:
    """(role, pin, direction) for every wired pin."""
    p = wiring.pins
    return [
        ("onewire.pin", p.onewire.pin, "io"),
        ("i2c.sda", p.i2c.sda, "io"),
        ("i2c.scl", p.i2c.scl, "io"),  # open drain: the accelerometer may stretch the clock
        ("supply_adc.pin", p.supply_adc.pin, "adc"),
        ("speed_pulse.pin", p.speed_pulse.pin, "in"),
        ("status_led.pin", p.status_led.pin, "out"),
    ]


def check(board: BoardSpec, wiring: Wiring) -> list[Finding]:
    """Every problem of `wiring` on `board`, errors first."""
    found: list[Finding] = []

    def error(message: str) -> None:
        found.append(Finding("error", message))

    if wiring.board != board.board:
        error(f"the wiring is for {wiring.board!r}, not {board.board!r}: use its own file")
    used: dict[Pin, str] = {}
    for role, pin, direction in pin_uses(wiring):
        label = f"GPIO {pin} ({role})" if isinstance(pin, int) else f"pin {pin} ({role})"
        if pin in used:
            error(f"{label} is already used by {used[pin]}: give each its own pin")
        used.setdefault(pin, role)
        if isinstance(pin, str):
            if pin not in board.named or direction != "out":
                error(f"{label}: named pins on {board.board} are output-only "
                      f"{sorted(board.named) or 'none'}; use a GPIO number")
            continue
        if pin not in board.gpio:
            error(f"{label} does not exist on {board.name}: pick one of {sorted(board.gpio)}")
            continue
        if pin in board.flash:
            error(f"{label} is wired to the SPI flash: the board crashes; pick another pin")
        if pin in board.reserved:
            error(f"{label} is taken by {board.reserved[pin]}: pick another pin")
        if pin in board.input_only and direction in ("out", "io"):
            error(f"{label} is input-only on {board.mcu}, but {role} must drive the line: "
                  f"move it to a pin that can output")
        if direction == "adc" and pin not in board.adc:
            error(f"{label} is not an ADC pin usable with Wi-Fi on: use one of {sorted(board.adc)}")
        strap = board.strapping.get(pin)
        if strap is not None:
            advice = "prefer another pin, or make sure the sensor leaves it alone at reset"
            message = f"{label} is a strapping pin ({strap.why}): {advice}"
            found.append(Finding(strap.level, message))
    probes = wiring.pins.onewire.probes
    for name in probes:
        if name not in wire.CHANNEL_IDS:
            error(f"onewire.probes: {name!r} is not a channel of the wire format "
                  f"({', '.join(wire.CHANNEL_IDS)})")
    if len(set(probes)) != len(probes):
        error("onewire.probes lists a channel twice: each probe measures one channel")
    return sorted(found, key=lambda f: f.level != "error")
