"""Whether the alert service can reach Kafka: one log line per change, a gauge, fatal errors.

librdkafka reports every failed connection attempt; left to itself it prints hundreds of
`%3|...|FAIL|` lines while Kafka is away. The service's clients run with `log_level` 0 and
hand their errors to `KafkaLink.on_error` (their `error_cb`) instead, so an outage reads as two
lines, "Kafka unreachable" and "Kafka reachable again", and as `trackside_alerts_kafka_up`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException
from prometheus_client import Gauge

from bridge.redact import mask
from gateway.alerts import AlertError

__all__ = [
    "KAFKA_UP",
    "RESTART",
    "UNREACHABLE",
    "HungError",
    "KafkaLink",
    "StoppedError",
    "bounded",
    "describe",
    "make_client",
]

log = logging.getLogger(__name__)

KAFKA_UP = Gauge(
    "trackside_alerts_kafka_up",
    "1 while the alert service reaches Kafka, 0 while it waits for Kafka to come back",
)

# Error codes that mean "no broker answers": wait and retry, never fail for them alone.
UNREACHABLE = frozenset(
    {
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TRANSPORT,
        KafkaError._RESOLVE,
        KafkaError._TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
    }
)


RESTART = (
    "the service is restarted (by the gateway, or run it again): it fences this producer, "
    "restores its state and replays from the last committed offsets"
)

Client = TypeVar("Client")


class StoppedError(Exception):
    """The stop event was set while the service waited for Kafka."""


class HungError(AlertError):
    """A librdkafka call did not return: its client can no longer be used."""


def bounded(call: Callable[[], object], timeout: float, what: str) -> None:
    """`call()` on a helper thread; `HungError` if it has not returned after `timeout`."""
    done = threading.Event()
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            raised.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="alerts-kafka-call", daemon=True).start()
    if not done.wait(timeout):
        raise HungError(
            f"librdkafka did not return from the call to {what} within {timeout:.0f} s "
            f"(librdkafka#5456); {RESTART}"
        )
    if raised:
        raise raised[0]


def describe(exc: KafkaException) -> str:
    """The librdkafka error of `exc` in words."""
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)


def make_client(make: Callable[[dict[str, Any]], Client], settings: dict[str, Any]) -> Client:
    """A librdkafka client; AlertError (secrets masked) when librdkafka refuses `settings`."""
    try:
        return make(settings)
    except KafkaException as exc:
        raise AlertError(
            f"Kafka settings refused by librdkafka: {mask(describe(exc), settings)}; "
            "fix kafka.settings"
        ) from exc


class KafkaLink:
    """The service's view of its connection to `bootstrap_servers`, shared by its clients."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.up: bool | None = None  # None until the first answer or failure
        self.fatal: KafkaError | None = None  # a fatal error reported by a client
        self._down_since = 0.0
        self._warned: set[int] = set()
        self._lock = threading.Lock()

    def on_error(self, error: KafkaError) -> None:
        """librdkafka's `error_cb`: global errors of any of the service's clients."""
        if error.fatal():
            if self.fatal is None:
                log.error("Kafka client failed: %s", error.str())
            self.fatal = error
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.unreachable(error.str())
        elif error.code() in UNREACHABLE:
            # One broker's failed connection attempt: not news (librdkafka retries), and a
            # late one would log "unreachable" right after Kafka answered again.
            log.debug("Kafka at %s: %s", self.bootstrap_servers, error.str())
        elif error.code() not in self._warned:  # once per kind, not per reconnect attempt
            self._warned.add(error.code())
            log.warning("Kafka at %s: %s (retrying)", self.bootstrap_servers, error.str())

    def unreachable(self, reason: str) -> None:
        """No broker answered: log it if that is news."""
        with self._lock:
            if self.up is False:
                return
            self.up = False
            self._down_since = time.monotonic()
        KAFKA_UP.set(0)
        log.warning(
            "Kafka unreachable at %s (%s); the alert service waits for it and catches up when "
            "it is back. If this lasts, check that Kafka runs and that bootstrap_servers is right",
            self.bootstrap_servers,
            reason,
        )

    def reachable(self) -> None:
        """A broker answered: log it if Kafka was unreachable until now."""
        with self._lock:
            if self.up is True:
                return
            was_down = self.up is False
            self.up = True
            self._warned.clear()
        KAFKA_UP.set(1)
        if was_down:
            log.warning(
                "Kafka reachable again at %s after %.0f s",
                self.bootstrap_servers,
                time.monotonic() - self._down_since,
            )
