"""The connector's replay of its spool, with Kafka faked (a unit test: the integration tests
in test_connector.py and tests/faults run it against the real Kafka)."""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import KafkaError

from bridge.config import ConnectorConfig, SpoolConfig
from bridge.connector import Connector
from bridge.kafka_sink import Delivery
from bridge.record import KafkaRecord


class FlakySink:
    """Reports each record at once: a timeout for the values in `failing`, else delivered."""

    def __init__(self) -> None:
        self.failing: set[bytes] = set()
        self.delivered: list[bytes] = []

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
        assert sink.delivered == values[:4] + values[5:]  # what follows may be taken too
        sink.failing = set()
        assert connector._replay_batch()
        assert connector.spool.empty()
        # Only the records from the failed one on were produced again: the first four once.
        assert sink.delivered == values[:4] + values[5:] + values[4:]
    finally:
        connector.spool.close()
