"""Alert rules: pydantic models, loaded from YAML once and frozen; errors name the file and key.

A rule file is `{"rules": [...], "policy": {...}}`. Every rule has a `kind`:

- `threshold`: a channel's value (minus `relative_to`, e.g. ambient, when set) above or below a
  level for `for` seconds; it resolves only past the separate `clear` level (hysteresis).
- `rate`: the rise of a channel per minute, measured over `window_s`, with the same levels.
- `pair`: the absolute difference of two channels of one reading (the two bearings of an axle).
- `stale`: no reading from a device for `after_s` seconds, or its last will (`offline`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from bridge.config import read_yaml_mapping
from firmware import wire
from gateway.alerts import AlertError

__all__ = [
    "UNITS",
    "LevelRule",
    "PairRule",
    "Policy",
    "RateRule",
    "Rule",
    "RuleError",
    "RuleSet",
    "Severity",
    "StaleRule",
    "ThresholdRule",
    "load_model",
    "load_rules",
]

Severity = Literal["info", "warning", "critical"]

# The unit of each wire channel (docs/wire-format.md), for alert messages.
UNITS = {
    "engine_temp": "degC",
    "bearing_left_temp": "degC",
    "bearing_right_temp": "degC",
    "vibration_rms": "g",
    "speed": "km/h",
    "supply_voltage": "V",
    "ambient_temp": "degC",
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_FACTOR = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class RuleError(AlertError):
    """A rule or service file is invalid; the message names the file and the key."""


def _seconds(value: Any) -> Any:
    """`10`, `10s`, `2m`, `1h`, `500ms` -> seconds; anything else is left for pydantic to reject."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a duration: write 30, 30s, 5m, 1h or 500ms")
        return float(match[1]) * _FACTOR[match[2] or "s"]
    return value


def _known_channel(name: str) -> str:
    if name not in wire.CHANNEL_IDS:
        known = ", ".join(c[0] for c in wire.CHANNELS)
        raise ValueError(f"unknown channel {name!r}; channels are: {known}")
    return name


Duration = Annotated[float, BeforeValidator(_seconds), Field(ge=0)]
Channel = Annotated[str, AfterValidator(_known_channel)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class _RuleBase(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", max_length=64)
    severity: Severity = "warning"
    flag: bool | None = None
    description: str = Field("", description="one plain-language line for the desk")
    runbook: str = Field("", description="what to do when it fires, one line")
    source: str = ""


class LevelRule(_RuleBase):
    """A measured quantity against `above` or `below`, resolved past `clear` (hysteresis)."""

    above: float | None = None
    below: float | None = None
    clear: float | None = None
    for_s: Duration = Field(0.0, alias="for")

    @model_validator(mode="after")
    def _one_level(self) -> LevelRule:
        if (self.above is None) == (self.below is None):
            raise ValueError("set exactly one of `above` or `below`")
        if self.clear is not None:
            if self.above is not None and self.clear > self.above:
                raise ValueError(f"`clear` ({self.clear}) must be at most `above` ({self.above})")
            if self.below is not None and self.clear < self.below:
                raise ValueError(f"`clear` ({self.clear}) must be at least `below` ({self.below})")
        return self

    @property
    def threshold(self) -> float:
        """The level that raises the alert."""
        return self.above if self.above is not None else self.below  # type: ignore[return-value]

    @property
    def clear_level(self) -> float:
        """The level past which a raised alert clears (the threshold itself when unset)."""
        return self.clear if self.clear is not None else self.threshold

    def raised(self, measure: float) -> bool:
        """True when `measure` is past the threshold."""
        return measure > self.threshold if self.above is not None else measure < self.threshold

    def cleared(self, measure: float) -> bool:
        """True when `measure` is back past the clear level."""
        if self.above is not None:
            return measure < self.clear_level
        return measure > self.clear_level


class ThresholdRule(LevelRule):
    """A channel's level, optionally relative to another channel of the same reading."""

    kind: Literal["threshold"]
    channels: tuple[Channel, ...] = Field(min_length=1)
    relative_to: Channel | None = None


class RateRule(LevelRule):
    """A channel's rise per minute, measured between readings at least `window_s` apart."""

    kind: Literal["rate"]
    channels: tuple[Channel, ...] = Field(min_length=1)
    window_s: Duration = 60.0


class PairRule(LevelRule):
    """The absolute difference between two channels of one reading."""

    kind: Literal["pair"]
    pairs: tuple[tuple[Channel, Channel], ...] = Field(min_length=1)


class StaleRule(_RuleBase):
    """No reading from a device for `after_s` seconds, or its last will."""

    kind: Literal["stale"]
    after_s: Duration = Field(gt=0)
    on_last_will: bool = True


Rule = Annotated[
    ThresholdRule | RateRule | PairRule | StaleRule,
    Field(discriminator="kind"),
]
_KINDS = {"threshold", "rate", "pair", "stale"}


class Policy(_Frozen):
    """What a firing alert does to its train: a maintenance flag, optionally a `disable`."""

    flag_severities: tuple[Severity, ...] = ("critical",)
    disable_train: bool = False
    # Hot-axle-box practice: a second alarm on the same vehicle within this window is raised
    # as critical (and so flags, and with `disable_train` disables). None: no escalation.
    escalate_within_s: Duration | None = Field(None, alias="escalate_within", gt=0)

    def flags(self, rule: LevelRule | StaleRule, escalated: bool = False) -> bool:
        """True when a firing `rule` flags its train; an escalated alert counts as critical."""
        if escalated and "critical" in self.flag_severities:
            return True
        return rule.flag if rule.flag is not None else rule.severity in self.flag_severities


class RuleSet(_Frozen):
    """The rules of one file and the maintenance policy."""

    rules: tuple[Rule, ...] = Field(min_length=1)
    policy: Policy = Policy()

    @model_validator(mode="after")
    def _unique_names(self) -> RuleSet:
        names = [rule.name for rule in self.rules]
        doubles = sorted({name for name in names if names.count(name) > 1})
        if doubles:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(doubles)}")
        return self


_M = TypeVar("_M", bound=BaseModel)


def load_model(path: Path, model: type[_M], what: str) -> _M:
    """Read YAML from `path` and validate it as `model`; errors say `file: key: problem`."""
    raw = read_yaml_mapping(path, RuleError, what)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        # An item that fails leaves its tuple short, and pydantic reports that too at every
        # level above it ("Tuple should have at least 1 item"): only the item's error is real.
        real = [
            err
            for err in errors
            if err["type"] != "too_short"
            or not any(
                len(other["loc"]) > len(err["loc"])
                and other["loc"][: len(err["loc"])] == err["loc"]
                for other in errors
            )
        ]
        problems = "; ".join(f"{_where(raw, err['loc'])}: {err['msg']}" for err in real)
        raise RuleError(f"{path}: {problems}") from exc


def load_rules(path: Path) -> RuleSet:
    """Read and validate a rule file."""
    return load_model(path, RuleSet, "rule file")


def _where(raw: Any, loc: tuple[int | str, ...]) -> str:
    """`('rules', 2, 'threshold', 'above')` -> `rules[2] (bearing_hot).above`."""
    text = ""
    node = raw
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and "name" in node:
                text += f" ({node['name']})"
        elif isinstance(previous, int) and part in _KINDS:
            continue  # the discriminator pydantic adds to the path, not a key of the file
        else:
            text += f".{part}" if text else str(part)
            node = node.get(part) if isinstance(node, dict) else None
        previous = part
    return text or "(top level)"
