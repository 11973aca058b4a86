"""The embedded broker hands readings to the connectors in-process; a PUBACK means "safe".

amqtt acknowledges a QoS 1 PUBLISH as soon as it has read it and keeps the message in memory
only, so a crash of the gateway lost every reading it had acknowledged and not yet bridged.
Here the broker and the connectors share one process: `gateway.broker.DurableBroker` takes
each PUBLISH on a connector's topics away from amqtt's delivery path, hands it to that
connector's `BrokerIntake` (a `bridge.source.Source`), and sends the PUBACK only when the
connector acknowledges the reading: once Kafka has it (acks=all) or the spool has it fsync'd.

How, and what it costs: amqtt has no hook between reading a PUBLISH and acknowledging it, so
the broker replaces one method, `handle_publish`, on each connection's protocol handler
(amqtt 0.12's internals, hence the upper version bound in pyproject.toml). Everything else is
amqtt's own: CONNECT and authentication, subscriptions, retained messages, last wills,
publishes on other topics and QoS 2. A reading on a connector's topic is still delivered to
MQTT subscribers of that topic (after the connector took it). The topic ACL is checked here,
synchronously, so readings of one connection reach the connector in the order they arrived.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections.abc import Iterable
from typing import Any, Protocol

from bridge.source import Ack, OnMessages, Publication, Received

__all__ = ["BrokerIntake", "topic_matches"]

log = logging.getLogger(__name__)

# Readings handed to a connector at once: as the MQTT source does, one lock round and one
# metrics update per batch instead of per reading.
_BATCH = 256
_STOP = None


class _Broker(Protocol):
    async def internal_message_broadcast(self, topic: str, data: bytes, qos: int | None) -> None:
        """Publish as the broker itself."""


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching (`+` one level, `#` the rest); `$` topics match no wildcard."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    levels = topic.split("/")
    for i, part in enumerate(topic_filter.split("/")):
        if part == "#":
            return True
        if i >= len(levels) or part not in ("+", levels[i]):
            return False
    return len(levels) == len(topic_filter.split("/"))


class BrokerIntake:
    """One connector's side of the embedded broker: readings on `topics`, acknowledged when
    the connector says so. Thread-safe where the connector calls it."""

    def __init__(self, name: str, topics: Iterable[str]) -> None:
        self.name = name
        self.topics = tuple(topics)
        self._broker: _Broker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_messages: OnMessages | None = None
        self._queue: queue.SimpleQueue[Received | None] = queue.SimpleQueue()
        self._waiting: dict[int, asyncio.Future[None]] = {}  # event loop only
        self._ids = itertools.count(1)
        self._acked: list[int] = []
        self._acked_lock = threading.Lock()
        self._taking = False
        self._thread: threading.Thread | None = None
        self._failure: str | None = None

    def bind(self, broker: _Broker, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the broker whose event loop runs in `loop`."""
        self._broker, self._loop = broker, loop

    def source(self, on_messages: OnMessages) -> BrokerIntake:
        """The `bridge.source.SourceFactory` for this connector."""
        self._on_messages = on_messages
        return self

    # -- the event loop's side -------------------------------------------------------------

    @property
    def taking(self) -> bool:
        """False once the connector stopped taking readings: nothing more is acknowledged."""
        return self._taking

    def take(self, topic: str, payload: bytes, qos: int) -> int:
        """Hand a reading over; for QoS 1, `safe(id)` is done once it is in Kafka or the
        spool."""
        mid = 0
        if qos:
            mid = next(self._ids)
            assert self._loop is not None
            self._waiting[mid] = self._loop.create_future()
        self._queue.put((topic, payload, qos, mid))
        return mid

    def safe(self, mid: int) -> asyncio.Future[None]:
        """Done once the reading `take` returned `mid` for is safe."""
        return self._waiting[mid]

    def forget(self, mid: int) -> None:
        """The device went away before its reading was safe: it sends it again."""
        self._waiting.pop(mid, None)

    def abandon(self) -> None:
        """Before the broker closes: readings not yet safe will never be acknowledged here
        (their devices send them again), so their waits end now."""
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            future.cancel()

    def _release(self, mids: list[int]) -> None:
        waiting = self._waiting
        for mid in mids:
            future = waiting.pop(mid, None)
            if future is not None and not future.done():
                future.set_result(None)

    # -- the connector's side (bridge.source.Source) ---------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        """Begin handing readings over."""
        if self._on_messages is None or self._broker is None:
            raise RuntimeError("BrokerIntake.start before bind() and source()")
        self._failure = None
        self._taking = True
        self._thread = threading.Thread(
            target=self._hand_over, name=f"intake-{self.name}", daemon=True
        )
        self._thread.start()

    def stop_intake(self) -> None:
        """Acknowledge no new readings (devices keep them and send them again); hand over
        those already taken."""
        if not self._taking:
            return
        self._taking = False
        self._queue.put(_STOP)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)

    def stop(self) -> None:
        """Send the acknowledgements still queued."""
        self.stop_intake()
        self.flush_acks()

    def ack(self, mid: int, qos: int, generation: int) -> None:
        """Queue the PUBACK of one reading."""
        if qos:
            with self._acked_lock:
                self._acked.append(mid)

    def ack_all(self, acks: Iterable[Ack]) -> None:
        """Queue the PUBACKs of many readings."""
        mids = [mid for mid, qos, _ in acks if qos]
        with self._acked_lock:
            self._acked += mids

    def flush_acks(self) -> None:
        """Let the event loop send the queued PUBACKs (one hop for the whole batch)."""
        with self._acked_lock:
            mids, self._acked = self._acked, []
        if mids and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._release, mids)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> Publication:
        """Publish towards the devices through the broker (commands)."""
        publication = Publication()
        if self._broker is None or self._loop is None or self._loop.is_closed():
            return publication
        sent = asyncio.run_coroutine_threadsafe(
            self._broker.internal_message_broadcast(topic, payload, qos), self._loop
        )

        def done(future: Any) -> None:
            if future.exception() is None:
                publication.acked.set()

        sent.add_done_callback(done)
        return publication

    def worker_failure(self) -> str | None:
        """Why the hand-over thread ended while it should run, else None."""
        thread = self._thread
        if self._failure is None and self._taking and thread is not None and not thread.is_alive():
            return f"thread {thread.name} ended"
        return self._failure

    def _hand_over(self) -> None:
        get, on_messages = self._queue.get, self._on_messages
        assert on_messages is not None
        try:
            while True:
                item = get()
                if item is _STOP:
                    return
                batch = [item]
                while len(batch) < _BATCH:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        on_messages(batch, 0)
                        return
                    batch.append(item)
                on_messages(batch, 0)
        except Exception as exc:
            self._failure = f"the intake of {self.name} failed: {exc!r}"
            log.exception("the intake of connector %s failed", self.name)
