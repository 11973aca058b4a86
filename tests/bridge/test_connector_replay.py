"""The connector's replay of its spool, with Kafka faked (a unit test: the integration tests
in test_connector.py and tests/faults run it against the real Kafka)."""

from __future__ import annotations

import threading
from pathlib import Path

from confluent_kafka import KafkaError

from bridge.config import ConnectorConfig, SpoolConfig
from bridge.connector import Connector
from bridge.kafka_sink import Delivery
from bridge.record import KafkaRecord
from tests.fixtures.waiting import wait_until


class FlakySink:
    """Reports each record at once: a timeout for the values in `failing`, else delivered;
    Kafka answers a metadata request while `answering`."""

    def __init__(self) -> None:
        self.failing: set[bytes] = set()
        self.delivered: list[bytes] = []
        self.answering = True
        self.asked = 0

    def answers(self) -> bool:
        self.asked += 1
        return self.answering

    def purge_queued(self) -> None:
        """Nothing waits here to purge: each record is reported at once."""

    def produce(self, record: KafkaRecord, on_delivery: Delivery) -> None:
        if record.value in self.failing:
            on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), None)
        else:
            self.delivered.append(record.value)
            on_delivery(None, None)


def test_a_replay_batch_that_fails_part_way_commits_what_kafka_took(tmp_path: Path) -> None:
    connector = Connector(ConnectorConfig(spool=SpoolConfig(path=tmp_path / "spool")))
    sink = FlakySink()
    connector.sink = sink  # type: ignore[assignment]  # never started: no real producer runs
    try:
        values = [str(seq).encode() for seq in range(10)]
        connector.spool.append([KafkaRecord("telemetry", b"T1", value) for value in values])
        sink.failing = {b"4"}
        assert not connector._replay_batch()
        # Nothing after the failed record was produced: Kafka would have taken it ahead of
        # the failed one's retry (CI: "device 1: seq 0 after 201" after a replay).
        assert sink.delivered == values[:4]
        sink.failing = set()
        assert connector._replay_batch()
        assert connector.spool.empty()
        # Only the records from the failed one on were produced again: each once, in order.
        assert sink.delivered == values
    finally:
        connector.spool.close()


def test_the_spool_waits_for_kafka_to_answer_before_a_replay(tmp_path: Path) -> None:
    """A batch produced while Kafka is away only times out, and Kafka coming back just then
    may take its later records and not its first ones: no batch until Kafka answers."""
    connector = Connector(ConnectorConfig(spool=SpoolConfig(path=tmp_path / "spool")))
    sink = FlakySink()
    sink.answering = False
    connector.sink = sink  # type: ignore[assignment]  # never started: no real producer runs
    values = [str(seq).encode() for seq in range(10)]
    connector.spool.append([KafkaRecord("telemetry", b"T1", value) for value in values])
    connector._on_kafka("down", "1/1 brokers are down")  # as librdkafka's error callback
    replay = threading.Thread(target=connector._replay, daemon=True)
    replay.start()
    try:
        wait_until(lambda: sink.asked >= 2, 10, "Kafka asked twice")
        assert sink.delivered == []
        sink.answering = True
        wait_until(connector.spool.empty, 10, "the spool replayed once Kafka answers")
        assert sink.delivered == values
        assert connector.status().kafka == "reachable"
    finally:
        connector._stop.set()
        replay.join(10)
        connector.spool.close()
