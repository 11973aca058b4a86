"""How the Kafka sink sorts what librdkafka refuses at once (a unit test: librdkafka's producer
is faked here; tests/faults runs the sink against the real Kafka)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from bridge.config import ConnectorConfig, SpoolConfig
from bridge.kafka_sink import KafkaSink, RecordRefusedError, SinkError
from bridge.record import KafkaRecord

RECORD = KafkaRecord("telemetry", b"T1", b"reading")


class Refusing:
    """A producer whose produce() raises `code` at once, as librdkafka does."""

    def __init__(self, code: int, fatal: bool = False) -> None:
        self.error = KafkaError(code, fatal=fatal)

    def produce(self, *_: Any, **__: Any) -> None:
        raise KafkaException(self.error)


def sink_refusing(tmp_path: Path, code: int, fatal: bool = False) -> KafkaSink:
    sink = KafkaSink(ConnectorConfig(spool=SpoolConfig(path=tmp_path / "spool")))
    sink.producer = Refusing(code, fatal)  # type: ignore[assignment]
    return sink


def test_a_transient_refusal_is_reported_as_a_failed_delivery(tmp_path: Path) -> None:
    reports: list[KafkaError | None] = []
    sink_refusing(tmp_path, KafkaError._UNKNOWN_TOPIC).produce(
        RECORD, lambda err, _msg: reports.append(err)
    )
    assert [err.code() for err in reports if err is not None] == [KafkaError._UNKNOWN_TOPIC]


def test_a_permanent_refusal_asks_for_the_dead_letter(tmp_path: Path) -> None:
    with pytest.raises(RecordRefusedError):
        sink_refusing(tmp_path, KafkaError.MSG_SIZE_TOO_LARGE).produce(RECORD, lambda *_: None)


def test_a_fatal_refusal_fails(tmp_path: Path) -> None:
    with pytest.raises(SinkError) as refused:
        sink_refusing(tmp_path, KafkaError._FATAL, fatal=True).produce(RECORD, lambda *_: None)
    assert not isinstance(refused.value, RecordRefusedError)
