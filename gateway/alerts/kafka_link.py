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

from confluent_kafka import KafkaError
from prometheus_client import Gauge

__all__ = ["KAFKA_UP", "KafkaLink"]

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
