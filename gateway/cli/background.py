"""What the CLI remembers of a service it started in the background (`kafka up`,
`alertmanager up`): a small JSON state file per service, with its pid."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gateway.localkafka import cache_dir, stop_pid

__all__ = ["forget", "remember", "running"]


def _state_file(name: str) -> Path:
    return cache_dir() / "run" / f"{name}.json"


def remember(name: str, pid: int, **info: Any) -> None:
    """Record a service started in the background."""
    _state_file(name).write_text(json.dumps({"pid": pid, **info}))


def running(name: str) -> dict[str, Any] | None:
    """The recorded state of the service if its process still runs (a stale record is dropped)."""
    state = _state_file(name)
    if not state.exists():
        return None
    info: dict[str, Any] = json.loads(state.read_text())
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        state.unlink()
        return None
    return info


def forget(name: str, pid: int) -> None:
    """Stop the service (SIGTERM, then SIGKILL after 30 s) and drop its record."""
    stop_pid(pid)
    _state_file(name).unlink(missing_ok=True)
