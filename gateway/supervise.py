"""Keep a worker running: run it on a thread, restart it with backoff when it fails.

A worker is a function `target(stop)` that runs until the `threading.Event` it is given is set.
If it raises (or returns without being asked to stop), the supervisor logs one line, counts the
restart in `trackside_worker_restarts_total{worker=...}`, waits (1 s doubling to 60 s by default;
back to 1 s once a run lasted `reset_after_s`) and calls it again. `state` and `failure` answer
health checks from what the worker is doing, not from configuration.

    supervisor = Supervisor("alerts", service.run)
    supervisor.start()          # or supervisor.run() to block the calling thread
    ...
    supervisor.state            # "running" | "restarting" | "stopped"
    supervisor.stop()           # sets the worker's stop event and joins the thread
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from prometheus_client import Counter

from gateway import GatewayError

__all__ = ["RESTARTS", "Backoff", "State", "Supervisor"]

log = logging.getLogger(__name__)

RESTARTS = Counter(
    "trackside_worker_restarts", "Restarts of a supervised worker after it failed", ["worker"]
)

State = Literal["running", "restarting", "stopped"]


@dataclass(frozen=True)
class Backoff:
    """Waits between attempts: `initial_s`, doubled each time up to `max_s`."""

    initial_s: float = 1.0
    max_s: float = 60.0
    # A run at least this long counts as healthy: the next failure waits `initial_s` again.
    reset_after_s: float = 60.0

    def delay(self, attempt: int) -> float:
        """The wait before attempt `attempt + 1` (attempt 0: `initial_s`)."""
        return float(min(self.max_s, self.initial_s * 2 ** min(attempt, 32)))


class Supervisor:
    """Runs `target(stop)` until `stop()`; restarts it with `backoff` whenever it fails."""

    def __init__(
        self, name: str, target: Callable[[threading.Event], None], backoff: Backoff = Backoff()
    ) -> None:
        self.name = name
        self.target = target
        self.backoff = backoff
        self.restarts = 0
        self._state: State = "stopped"
        self._failure: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._metric = RESTARTS.labels(worker=name)

    @property
    def state(self) -> State:
        """`running` (the target runs), `restarting` (waiting after a failure) or `stopped`."""
        return self._state

    @property
    def failure(self) -> str | None:
        """The last failure, as one line; None if the target never failed."""
        return self._failure

    def start(self) -> None:
        """`run()` on a daemon thread named after the worker."""
        if self._thread is not None:
            raise GatewayError(f"worker {self.name!r} was already started; create a new one")
        self._state = "running"  # at once, so a health check right after start() is true
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Set the target's stop event and wait for the thread; False if it is still running."""
        self._stop.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def run(self) -> None:
        """Run the target, restarting it after failures, until `stop()` (blocks)."""
        attempt = 0
        try:
            while not self._stop.is_set():
                self._state = "running"
                started = time.monotonic()
                error = self._run_once()
                if error is None or self._stop.is_set():
                    if error is not None:
                        log.warning("%s ended while stopping: %s", self.name, _describe(error))
                    return
                if time.monotonic() - started >= self.backoff.reset_after_s:
                    attempt = 0
                delay = self.backoff.delay(attempt)
                attempt += 1
                self._failure = _describe(error)
                self._state = "restarting"
                self.restarts += 1
                self._metric.inc()
                # One line per restart; a traceback only for what is not one of our errors (a
                # bug), since our errors already say what happened and what to do.
                log.error(
                    "%s failed: %s; restarting it in %g s",
                    self.name,
                    self._failure,
                    delay,
                    exc_info=error if not isinstance(error, GatewayError) else None,
                )
                self._stop.wait(delay)
        finally:
            self._state = "stopped"

    def _run_once(self) -> Exception | None:
        """Run the target once: None if it returned because it was asked to, else the error."""
        try:
            self.target(self._stop)
        except Exception as exc:  # noqa: BLE001 - a worker must not die with its thread
            return exc
        if self._stop.is_set():
            return None
        return _ReturnedEarlyError("returned without being asked to stop")


class _ReturnedEarlyError(GatewayError):
    """The target returned although nobody set its stop event."""


def _describe(error: Exception) -> str:
    if isinstance(error, GatewayError):
        return str(error)
    return f"{type(error).__name__}: {error}"
