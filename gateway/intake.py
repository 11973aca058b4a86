"""The embedded broker hands readings to the connectors in-process; a PUBACK means "safe".

amqtt acknowledges a QoS 1 PUBLISH as soon as it has read it and keeps the message in memory
only, so a crash of the gateway lost every reading it had acknowledged and not yet bridged.
Here the broker and the connectors share one process: `gateway.broker.DurableBroker` takes
each PUBLISH on a connector's topics away from amqtt's delivery path, hands it to that
connector's `BrokerIntake` (a `bridge.source.Source`), and sends the PUBACK only when the
connector acknowledges the reading: once Kafka has it (acks=all) or the spool has it fsync'd.

How (gateway.broker says more): the broker's reader takes a PUBLISH on a connector's topic
(after the topic ACL check) synchronously, on the event loop, so readings of one connection
reach the connector in the order they arrived. What one turn of the event loop took, from
every connection, crosses to the connector's thread as one batch (one queue hand-over); the
connector's acknowledgements come back once per round of Kafka delivery reports (or per spool
group commit) with one `call_soon_threadsafe`, and each connection gets its PUBACKs of that
round in one write, in the order the connector acknowledged them. A PUBACK whose connection has
gone is dropped: the device sends the reading again. While the connector takes nothing
(paused, stopping) or has WAITING_MAX readings not yet safe, the broker's readers wait in
`ready()`: the readings stay with the broker or the devices, unacknowledged.
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

__all__ = ["AckTarget", "BrokerIntake", "topic_matches"]

log = logging.getLogger(__name__)

# Readings handed to a connector at once (at least; what one turn of the event loop took goes
# whole): as the MQTT source does, one lock round and one metrics update per batch instead of
# per reading.
_BATCH = 256
_STOP = None
# QoS 1 readings taken and not yet safe, per connector, beyond which the broker's readers pause
# before their next read (TCP backpressure: the devices keep the rest) until half are safe.
# Reached only when Kafka and the spool both hold readings back (a full spool); a device fleet
# in normal operation has far fewer in flight (one each on umqtt).
WAITING_MAX = 20_000


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


class AckTarget(Protocol):
    """Where the PUBACKs of one connection go (event loop only)."""

    def puback(self, packet_ids: list[int]) -> None:
        """Acknowledge these QoS 1 PUBLISHes, in this order (nothing if the connection is gone)."""


class BrokerIntake:
    """One connector's side of the embedded broker: readings on `topics`, acknowledged when
    the connector says so. Thread-safe where the connector calls it."""

    def __init__(self, name: str, topics: Iterable[str]) -> None:
        self.name = name
        self.topics = tuple(topics)
        self._broker: _Broker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_messages: OnMessages | None = None
        self._queue: queue.SimpleQueue[list[Received] | None] = queue.SimpleQueue()
        self._batch: list[Received] = []  # taken in this turn of the event loop
        self._waiting: dict[int, tuple[AckTarget, int]] = {}  # event loop only
        self._full = False  # WAITING_MAX reached, not yet back to half (event loop only)
        self._gate = asyncio.Event()  # wakes the readers waiting in `ready()`
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
        """False while the connector takes no readings (paused or stopped)."""
        return self._taking

    def take(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        target: AckTarget | None = None,
        packet_id: int = 0,
    ) -> None:
        """Hand a reading over (event loop only; readings reach the connector in the order
        taken). A QoS 1 reading is acknowledged through `target.puback([packet_id])` once it
        is in Kafka or the spool; without a target it is never acknowledged."""
        mid = 0
        if qos and target is not None:
            mid = next(self._ids)
            self._waiting[mid] = (target, packet_id)
            if len(self._waiting) >= WAITING_MAX:
                self._full = True
        if not self._batch:
            # One queue hand-over per turn of the event loop, for every connection's readings.
            assert self._loop is not None
            self._loop.call_soon(self._hand_batch)
        self._batch.append((topic, payload, qos, mid))

    @property
    def full(self) -> bool:
        """WAITING_MAX readings wait to be safe: the broker's readers pause (`ready()`)."""
        return self._full

    async def ready(self) -> None:
        """Until the connector takes readings (it may be paused) and fewer than half of
        WAITING_MAX wait to be safe."""
        while not self._taking or self._full:
            self._gate.clear()
            await self._gate.wait()

    def abandon(self) -> None:
        """Before the broker closes: readings not yet safe will never be acknowledged here
        (their devices send them again)."""
        self._waiting = {}
        self._full = False
        self._gate.set()

    def _hand_batch(self) -> None:
        batch, self._batch = self._batch, []
        self._queue.put(batch)

    def _release(self, mids: list[int]) -> None:
        """PUBACK what the connector acknowledged: one write per connection."""
        waiting = self._waiting
        by_target: dict[AckTarget, list[int]] = {}
        for mid in mids:
            entry = waiting.pop(mid, None)
            if entry is not None:
                target, packet_id = entry
                ids = by_target.get(target)
                if ids is None:
                    by_target[target] = [packet_id]
                else:
                    ids.append(packet_id)
        for target, ids in by_target.items():
            target.puback(ids)
        if self._full and len(waiting) <= WAITING_MAX // 2:
            self._full = False
            self._gate.set()

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
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._gate.set)  # readers holding readings go on

    def stop_intake(self) -> None:
        """Take no new readings (the broker holds them unacknowledged until `start()`, or the
        devices send them again after a stop); hand over those already taken."""
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

    def broker_connected(self) -> bool:
        """Always: the broker is this process."""
        return True

    def worker_failure(self) -> str | None:
        """Why the hand-over thread ended while it should run, else None."""
        thread = self._thread
        if self._failure is None and self._taking and thread is not None and not thread.is_alive():
            return f"thread {thread.name} ended"
        return self._failure

    def _hand_over(self) -> None:
        get, get_nowait, on_messages = self._queue.get, self._queue.get_nowait, self._on_messages
        assert on_messages is not None
        try:
            while True:
                batch = get()
                if batch is _STOP:
                    return
                while len(batch) < _BATCH:
                    try:
                        more = get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        on_messages(batch, 0)
                        return
                    batch += more
                on_messages(batch, 0)
        except Exception as exc:
            self._failure = f"the intake of {self.name} failed: {exc!r}"
            log.exception("the intake of connector %s failed", self.name)
