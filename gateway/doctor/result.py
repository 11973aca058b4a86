"""One line of `trackside doctor`: a check's name, green/yellow/red, what it saw, what to do."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

__all__ = ["CheckResult", "Status", "fail", "ok", "warn"]

# ok: green; warn: yellow, a person should look but nothing is broken; fail: red, exit status 1.
Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check. `kind` groups lines for monitoring (`topic`, `spool`, ...);
    `fix` says what to do, for every line that is not green."""

    kind: str
    name: str
    status: Status
    detail: str
    fix: str | None = None

    def as_json(self) -> dict[str, str | None]:
        """The line as `--json` prints it."""
        return asdict(self)


def ok(kind: str, name: str, detail: str) -> CheckResult:
    """A green line."""
    return CheckResult(kind, name, "ok", detail)


def warn(kind: str, name: str, detail: str, fix: str) -> CheckResult:
    """A yellow line: worth a look, not a failure (the exit status stays 0)."""
    return CheckResult(kind, name, "warn", detail, fix)


def fail(kind: str, name: str, detail: str, fix: str) -> CheckResult:
    """A red line: something is broken (the exit status becomes 1)."""
    return CheckResult(kind, name, "fail", detail, fix)
