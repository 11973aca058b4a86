"""Shared by the alert service's tests against the real Kafka: a reader of output topics."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from tests.fixtures.kafka import KafkaService

Event = dict[str, Any]


class TopicReader:
    """A background read_committed consumer collecting every record of one topic, from each
    of its `partitions`."""

    def __init__(self, bootstrap_servers: str, topic: str, partitions: int = 1) -> None:
        self.records: list[Event] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._end_seen = 0.0  # when a check that found the end of every partition began
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "log_level": 0,
                # A watermark query waits behind the fetch in flight on the broker connection:
                # at the default 500 ms, a check of six partitions took 2.8 s.
                "fetch.wait.max.ms": 50,
            }
        )
        self._consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.2)
            if msg is None:
                started = time.monotonic()
                if self._reached_end():
                    self._end_seen = started
            elif msg.error() is None:
                self._end_seen = 0.0
                with self._lock:
                    self.records.append(json.loads(msg.value() or b"null"))

    def wait(self, done: Callable[[list[Event]], bool], timeout: float = 60) -> list[Event]:
        """The records once `done(records)` holds; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if done(self.records):
                    return list(self.records)
            time.sleep(0.05)
        with self._lock:
            raise AssertionError(f"gave up after {timeout} s with {len(self.records)} records")

    def caught_up(self, since: float) -> bool:
        """Whether the reader, in a check begun after `since` (time.monotonic()), found itself
        at the end of every partition (checked from its own thread: one consumer, one thread)."""
        return self._end_seen > since

    def _reached_end(self) -> bool:
        try:
            for position in self._consumer.position(self._consumer.assignment()):
                _low, high = self._consumer.get_watermark_offsets(position, 5, cached=False)
                if position.offset < high and high > 0:  # -1001: nothing read there yet
                    return False
        except KafkaException:  # a topic just created: its leaders are not known everywhere
            return False
        return True

    def close(self) -> None:
        """Stop the thread and close the consumer."""
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


@pytest.fixture
def readers(kafka: KafkaService) -> Iterator[Callable[..., TopicReader]]:
    """Open `TopicReader`s on the session's Kafka: `readers(topic, partitions=1)`; all closed
    after the test."""
    opened: list[TopicReader] = []

    def open_reader(topic: str, partitions: int = 1) -> TopicReader:
        opened.append(TopicReader(kafka.bootstrap_servers, topic, partitions))
        return opened[-1]

    yield open_reader
    for reader in opened:
        reader.close()
