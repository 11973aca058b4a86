"""Live updates: changes of the fleet pushed to every open page as Server-Sent Events.

The reader thread only marks trains and alerts dirty; `LiveHub.run` collects the changes a few
times a second and sends one `changes` event, so a busy telemetry topic costs the browsers a
bounded rate. A page that falls behind gets a fresh `snapshot` instead of a growing queue.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from gateway.dashboard.fleet import Fleet
from gateway.dashboard.inventory import Inventory

__all__ = ["LiveHub", "sse"]

QUEUE_SIZE = 64


def sse(event: str, data: Any) -> bytes:
    """One Server-Sent Event frame."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class LiveHub:
    """Fans the fleet's changes out to one queue per connected page."""

    def __init__(
        self, fleet: Fleet, inventory: Inventory | None = None, interval: float = 0.25
    ) -> None:
        self.fleet = fleet
        self.inventory = inventory or Inventory()
        self.interval = interval
        self._pages: set[asyncio.Queue[bytes | None]] = set()
        # Maintenance windows by train, and why they cannot be shown (Alertmanager away).
        self.windows: dict[str, Any] = {"windows": {}, "error": None}

    def snapshot(self) -> bytes:
        """The whole fleet, its active alerts, maintenance windows and devices, sent first and
        after falling behind."""
        return sse(
            "snapshot",
            {
                "trains": self.fleet.fleet(),
                "alerts": self.fleet.alerts(),
                "devices": self.inventory.devices(),
                **self.windows,
            },
        )

    def set_windows(self, windows: dict[str, Any], error: str | None) -> None:
        """Send a `windows` event when the maintenance windows (or their error) changed."""
        current = {"windows": windows, "error": error}
        if current != self.windows:
            self.windows = current
            self.publish(sse("windows", current))

    def subscribe(self) -> asyncio.Queue[bytes | None]:
        """A queue for one page, starting with a snapshot; None in it means: close."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_SIZE)
        queue.put_nowait(self.snapshot())
        self._pages.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes | None]) -> None:
        """Forget a page that went away."""
        self._pages.discard(queue)

    def publish(self, frame: bytes) -> None:
        """Queue a frame for every page; a full queue is replaced by a snapshot."""
        for queue in self._pages:
            if queue.full():
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(self.snapshot())
            else:
                queue.put_nowait(frame)

    async def run(self) -> None:
        """Collect and publish changes until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            changes = self.fleet.take_changes()
            devices = self.inventory.take_changes()
            if (changes or devices) and self._pages:
                self.publish(
                    sse(
                        "changes",
                        {"trains": changes.trains, "alerts": changes.alerts, "devices": devices},
                    )
                )

    def close(self) -> None:
        """Tell every page's stream to end (server shutdown)."""
        for queue in self._pages:
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)
