"""Maintenance windows: a train "in the depot until <time>" is an Alertmanager silence.

A window is an active silence whose only matcher is `train=<train id>` (the label the alert
service gives every alert, `gateway.alerts.notify.to_alertmanager`), so a silence made the same
way in Alertmanager's own UI shows as a window too. The dashboard reads them through the v2 API
(`GET /api/v2/silences`), keeps the answer for `CACHE_S`, creates one with
`POST /api/v2/silences` and ends one with `DELETE /api/v2/silence/{id}`. Alertmanager being away
raises `SilenceError`, which the page shows without losing the rest of its view.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from gateway.dashboard import DashboardError

__all__ = ["CACHE_S", "MAX_WINDOW_S", "SilenceError", "Silences", "Window", "parse_until"]

CACHE_S = 2.0
REQUEST_TIMEOUT_S = 5.0
# A window longer than this is more likely a typo than a plan (Alertmanager has no limit).
MAX_WINDOW_S = 30 * 86_400


class SilenceError(DashboardError):
    """Alertmanager did not answer, or refused a silence."""


@dataclass(frozen=True)
class Window:
    """One train's maintenance window, as the API shows it."""

    id: str
    train_id: str
    ends_at_ms: int
    created_by: str
    comment: str

    def as_json(self) -> dict[str, Any]:
        """`{id, ends_at_ms, created_by, comment}` (the train id is the key it is shown under)."""
        shown = asdict(self)
        del shown["train_id"]
        return shown


def parse_until(raw: Any, now_ms: int) -> int:
    """A window's end (ms since the epoch, or ISO 8601 with a time zone) as ms; ValueError
    says what is wrong with it."""
    if isinstance(raw, bool) or raw is None:
        raise ValueError('"until" is missing: an ISO time with a zone, or ms since the epoch')
    if isinstance(raw, int | float):
        until_ms = int(raw)
    else:
        try:
            moment = datetime.fromisoformat(str(raw))
        except ValueError as exc:
            raise ValueError(f'"until" {raw!r} is not an ISO 8601 time') from exc
        if moment.tzinfo is None:
            raise ValueError(f'"until" {raw!r} has no time zone: add Z or +01:00')
        until_ms = int(moment.timestamp() * 1000)
    if until_ms <= now_ms:
        raise ValueError('"until" is in the past')
    if until_ms - now_ms > MAX_WINDOW_S * 1000:
        raise ValueError(f'"until" is more than {MAX_WINDOW_S // 86_400} days ahead')
    return until_ms


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def _window(silence: dict[str, Any]) -> Window | None:
    """The window a silence stands for, or None when it is not an active whole-train one."""
    matchers = silence.get("matchers") or []
    if silence.get("status", {}).get("state") != "active" or len(matchers) != 1:
        return None
    matcher = matchers[0]
    if matcher.get("name") != "train" or matcher.get("isRegex"):
        return None
    if not matcher.get("isEqual", True):
        return None
    return Window(
        id=str(silence["id"]),
        train_id=str(matcher["value"]),
        ends_at_ms=_ms(silence["endsAt"]),
        created_by=str(silence.get("createdBy", "")),
        comment=str(silence.get("comment", "")),
    )


class Silences:
    """Alertmanager's silences as maintenance windows; `close()` when done."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._cached: dict[str, Window] | None = None
        self._cached_at = 0.0
        self._lock = asyncio.Lock()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            async with self._client().request(method, self.url + path, json=body) as response:
                text = await response.text()
                if response.status >= 400:
                    raise SilenceError(
                        f"Alertmanager at {self.url} refused {method} {path} "
                        f"({response.status}): {text.strip()[:200]}"
                    )
                return await response.json(content_type=None) if text.strip() else None
        except ValueError as exc:
            raise SilenceError(f"Alertmanager at {self.url} answered no JSON: {exc}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SilenceError(
                f"Alertmanager at {self.url} does not answer ({exc.__class__.__name__}): "
                "maintenance windows are unavailable until it is back"
            ) from exc

    async def windows(self, fresh: bool = False) -> dict[str, Window]:
        """Every train's active window, by train id (the latest ending one if several)."""
        async with self._lock:
            young = time.monotonic() - self._cached_at < CACHE_S
            if not fresh and young and self._cached is not None:
                return self._cached
            found: dict[str, Window] = {}
            for silence in await self._call("GET", "/api/v2/silences") or []:
                window = _window(silence)
                if window is None:
                    continue
                known = found.get(window.train_id)
                if known is None or window.ends_at_ms > known.ends_at_ms:
                    found[window.train_id] = window
            self._cached, self._cached_at = found, time.monotonic()
            return found

    async def create(self, train_id: str, until_ms: int, by: str, comment: str) -> Window:
        """A silence of every alert of `train_id` from now until `until_ms`; an existing
        window of the train is replaced (Alertmanager keeps the old one as expired)."""
        now_ms = int(time.time() * 1000)
        body: dict[str, Any] = {
            "matchers": [{"name": "train", "value": train_id, "isRegex": False, "isEqual": True}],
            "startsAt": _iso(now_ms),
            "endsAt": _iso(until_ms),
            "createdBy": by,
            "comment": comment or "in the depot (maintenance window set from the dashboard)",
        }
        existing = (await self.windows(fresh=True)).get(train_id)
        if existing is not None:
            body["id"] = existing.id
        answer = await self._call("POST", "/api/v2/silences", body)
        self._cached = None
        return Window(str(answer["silenceID"]), train_id, until_ms, by, body["comment"])

    async def expire(self, train_id: str) -> Window | None:
        """End the train's window now; None when it has none."""
        window = (await self.windows(fresh=True)).get(train_id)
        if window is not None:
            await self._call("DELETE", f"/api/v2/silence/{window.id}")
            self._cached = None
        return window

    async def close(self) -> None:
        """Close the HTTP connections."""
        if self._session is not None:
            await self._session.close()
