"""Live updates: changes fanned out to pages as Server-Sent Events, bounded per page."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from gateway.dashboard.fleet import Fleet
from gateway.dashboard.live import QUEUE_SIZE, LiveHub
from tests.gateway.dashboard.records import NOW, alert, reading


def _event(frame: bytes | None) -> tuple[str, Any]:
    assert frame is not None
    event, data = frame.decode().rstrip("\n").split("\n")
    return event.removeprefix("event: "), json.loads(data.removeprefix("data: "))


async def test_a_page_gets_a_snapshot_then_batched_changes() -> None:
    fleet = Fleet()
    fleet.apply("telemetry", b"T101", reading("T101", 0), NOW)
    hub = LiveHub(fleet, interval=0.01)
    page = hub.subscribe()
    name, data = _event(page.get_nowait())
    assert name == "snapshot"
    assert [t["train_id"] for t in data["trains"]] == ["T101"]

    task = asyncio.create_task(hub.run())
    for seq in range(1, 50):
        fleet.apply("telemetry", b"T101", reading("T101", seq), NOW)
    fleet.apply("alerts", b"k", alert("T102", "firing"), NOW)
    name, data = _event(await asyncio.wait_for(page.get(), 5))
    task.cancel()
    assert name == "changes"
    assert sorted(t["train_id"] for t in data["trains"]) == ["T101", "T102"]
    assert [a["state"] for a in data["alerts"]] == ["firing"]
    assert page.empty()


def test_a_page_that_falls_behind_gets_one_fresh_snapshot() -> None:
    fleet = Fleet()
    hub = LiveHub(fleet)
    page = hub.subscribe()
    for n in range(3 * QUEUE_SIZE):
        hub.publish(f"event: changes\ndata: {n}\n\n".encode())
    fleet.apply("telemetry", b"T101", reading("T101", 0), NOW)
    hub.publish(b"event: changes\ndata: {}\n\n")
    frames = [page.get_nowait() for _ in range(page.qsize())]
    assert len(frames) <= QUEUE_SIZE
    assert "snapshot" in [_event(f)[0] for f in frames]


def test_closing_ends_every_stream() -> None:
    hub = LiveHub(Fleet())
    pages = [hub.subscribe() for _ in range(3)]
    hub.close()
    assert [p.get_nowait() for p in pages] == [None, None, None]
