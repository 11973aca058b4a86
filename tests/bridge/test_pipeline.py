"""Pipeline: topic fields checked against the id rules once, bad topics dead-lettered."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.config import (
    ConnectorConfig,
    ErrorsConfig,
    KafkaTarget,
    MqttSource,
    TransformConfig,
)
from bridge.pipeline import Pipeline, RejectedRecordError
from bridge.record import KafkaRecord, id_problem
from firmware import wire

DEVICE = 10042
FRAME = wire.encode(DEVICE, 1, 7, 1_700_000_000_000, {"engine_temp": 873})
DLQ = "trackside.dead-letter"

INVALID_TRAIN_IDS = {
    "empty": ("", "train id '' is not 1-32 letters, digits, '-' or '_'"),
    "space": ("T 101", "train id 'T 101' is not"),
    "NUL byte": ("T\x00101", "train id 'T\\x00101' is not"),
    "non-ASCII letter": ("T\u00fc01", "train id 'T\\xfc01' is not"),
    "non-ASCII digit": ("T\u0661\u0662", "train id 'T\\u0661\\u0662' is not"),
    "33 characters": ("T" * 33, "train id 'TTTT"),
    "60,000 characters": ("T" * 60_000, "(60,000 characters) is not"),
    "wildcard": ("T1+", "train id 'T1+' is not"),
    "trailing newline": ("T101\n", "train id 'T101\\n' is not"),
}
VALID_TRAIN_IDS = ["T101", "t", "0", "-", "_", "A-b_9", "X" * 32]


def _headers(record: KafkaRecord) -> dict[str, bytes]:
    return dict(record.headers)


def _rejected(outcome: KafkaRecord | None, topic: str) -> str:
    """The reason of a dead letter for `topic`, after checking that it is one."""
    assert outcome is not None
    assert outcome.topic == DLQ
    assert outcome.key == topic.encode()
    assert outcome.value == FRAME  # the original payload, untouched
    headers = _headers(outcome)
    assert headers["__connect.errors.topic"] == topic.encode()
    assert headers["__connect.errors.exception.class.name"] == b"TopicError"
    return headers["__connect.errors.exception.message"].decode()


@pytest.mark.parametrize(
    ("train_id", "reason"), INVALID_TRAIN_IDS.values(), ids=list(INVALID_TRAIN_IDS)
)
def test_an_invalid_train_id_is_dead_lettered_with_the_reason(train_id: str, reason: str) -> None:
    topic = f"trackside/v1/{train_id}/{DEVICE}/telemetry"
    message = _rejected(Pipeline(ConnectorConfig()).process(topic, FRAME, 1), topic)
    assert reason in message
    assert message.endswith("is not 1-32 letters, digits, '-' or '_'")
    assert len(message) < 200  # a 60,000-character id is not copied into the reason


@pytest.mark.parametrize("train_id", VALID_TRAIN_IDS)
def test_a_valid_train_id_passes(train_id: str) -> None:
    record = Pipeline(ConnectorConfig()).process(
        f"trackside/v1/{train_id}/{DEVICE}/telemetry", FRAME, 1
    )
    assert record is not None
    assert record.topic == "trackside.telemetry"
    assert record.key == train_id.encode()
    assert json.loads(record.value)["train_id"] == train_id
    assert _headers(record)["train.id"] == train_id.encode()


@pytest.mark.parametrize(
    ("device_id", "reason"),
    [
        ("", "device id '' is not a 32-bit number"),
        ("010042", "device id '010042' is not"),
        ("4294967296", "device id '4294967296' is not"),
        ("99999999999", "device id '99999999999' is not"),
        ("-1", "device id '-1' is not"),
        ("1e3", "device id '1e3' is not"),
        ("\u0661\u0662", "device id '\\u0661\\u0662' is not"),
        ("+", "device id '+' is not"),
    ],
)
def test_an_invalid_device_id_is_dead_lettered_with_the_reason(device_id: str, reason: str) -> None:
    # Raw records: the check is the topic's, not the wire decoder's identity check.
    pipeline = Pipeline(ConnectorConfig(transforms=(), converter="raw"))
    topic = f"trackside/v1/T101/{device_id}/telemetry"
    message = _rejected(pipeline.process(topic, FRAME, 1), topic)
    assert reason in message
    assert message.endswith("(0-4294967295, no leading zero)")


@pytest.mark.parametrize("device_id", ["0", "7", "10042", "4294967295", "3999999999"])
def test_a_valid_device_id_passes(device_id: str) -> None:
    pipeline = Pipeline(ConnectorConfig(transforms=(), converter="raw"))
    record = pipeline.process(f"trackside/v1/T101/{device_id}/telemetry", FRAME, 1)
    assert record is not None
    assert record.topic == "trackside.telemetry"


@given(st.integers(min_value=0, max_value=2**34))
def test_the_device_id_rule_is_the_32_bit_range(number: int) -> None:
    assert (id_problem("device_id", str(number)) is None) == (number <= 0xFFFFFFFF)


@pytest.mark.parametrize(
    ("topic", "levels"),
    [
        ("trackside/v1/T101/telemetry", 4),
        (f"trackside/v1/T101/{DEVICE}/telemetry/extra", 6),
        (f"trackside/v1/T101/{DEVICE}/telemetry/", 6),
        ("", 1),
    ],
)
def test_a_topic_with_another_level_count_is_dead_lettered(topic: str, levels: int) -> None:
    message = _rejected(Pipeline(ConnectorConfig()).process(topic, FRAME, 1), topic)
    assert message == (
        f"topic has {levels} levels, mqtt.topic_pattern "
        "'trackside/v1/{train_id}/{device_id}/telemetry' has 5"
    )


def test_fields_without_an_id_rule_take_any_level_even_with_unusual_names() -> None:
    config = ConnectorConfig(
        mqtt=MqttSource(topic_pattern="fleet/{site-name}/{train_id}"),
        kafka=KafkaTarget(key="{site-name}:{train_id}"),
        transforms=(),
        converter="raw",
    )
    record = Pipeline(config).process("fleet/north yard/T7", b"x", 1)
    assert record is not None
    assert record.key == b"north yard:T7"
    rejected = Pipeline(config).process("fleet/north yard/T 7", b"x", 1)
    assert rejected is not None
    assert rejected.topic == DLQ


def test_without_tolerance_an_invalid_topic_fails_the_connector() -> None:
    pipeline = Pipeline(ConnectorConfig(errors=ErrorsConfig(tolerance="none")))
    with pytest.raises(RejectedRecordError, match="train id 'T 1'"):
        pipeline.process(f"trackside/v1/T 1/{DEVICE}/telemetry", FRAME, 1)


def test_without_a_dead_letter_topic_an_invalid_topic_is_dropped() -> None:
    pipeline = Pipeline(ConnectorConfig(errors=ErrorsConfig(deadletterqueue_topic_name=None)))
    assert pipeline.process(f"trackside/v1//{DEVICE}/telemetry", FRAME, 1) is None


@pytest.mark.parametrize("qos", [0, 1])
def test_the_qos_header_is_the_qos_the_message_came_with(qos: int) -> None:
    config = ConnectorConfig(
        mqtt=MqttSource(qos=1),
        transforms=(TransformConfig(type="decode_wire"), TransformConfig(type="headers")),
    )
    record = Pipeline(config).process(f"trackside/v1/T101/{DEVICE}/telemetry", FRAME, qos)
    assert record is not None
    assert _headers(record)["mqtt.qos"] == str(qos).encode()
