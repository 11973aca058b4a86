"""What the CLI remembers of a service it started in the background (`kafka up`,
`alertmanager up`): a small JSON state file per service, with its processes' ids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.localkafka import cache_dir, process_alive, stop_pids

__all__ = ["forget", "remember", "running"]


def _state_file(name: str) -> Path:
    return cache_dir() / "run" / f"{name}.json"


def remember(name: str, pid: int, *more_pids: int, **info: Any) -> None:
    """Record a service started in the background: its process, or processes (a cluster)."""
    pids = [pid, *more_pids]
    _state_file(name).write_text(json.dumps({"pid": pid, "pids": pids, **info}))


def running(name: str) -> dict[str, Any] | None:
    """The recorded state of the service (`pids`: all its processes) while any of its
    processes still runs; a stale record is dropped."""
    state = _state_file(name)
    if not state.exists():
        return None
    info: dict[str, Any] = json.loads(state.read_text())
    info.setdefault("pids", [info["pid"]])
    if not any(process_alive(pid) for pid in info["pids"]):
        state.unlink()
        return None
    return info


def forget(name: str, *pids: int) -> None:
    """Stop the service's processes, all at once (SIGTERM, then SIGKILL after 30 s), and drop
    its record."""
    stop_pids(pids)
    _state_file(name).unlink(missing_ok=True)
