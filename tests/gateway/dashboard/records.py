"""Records as the bridge and the alert service write them, and a way to put them into Kafka."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Producer

from tests.bridge.streams import read_topic

__all__ = ["NOW", "alert", "flag", "produce", "read_actions", "reading"]

NOW = 1_767_225_600_000
KEY = "{train}/bearing_hot/42/bearing_left_temp"


def reading(train: str, seq: int, device: int = 42, at_ms: int = NOW, **values: float) -> bytes:
    """A JSON reading of one device, one second apart per sequence number."""
    record = {
        "train_id": train,
        "device_id": device,
        "boot_id": 1,
        "seq": seq,
        "ts_ms": at_ms + seq * 1000,
        "wall_clock": True,
        "values": values or {"engine_temp": 80.0 + seq},
    }
    return json.dumps(record).encode()


def alert(train: str, state: str, **extra: Any) -> bytes:
    """An alert event of the bearing_hot rule, as docs/architecture.md shows it."""
    event = {
        "key": KEY.format(train=train),
        "train_id": train,
        "device_id": 42,
        "rule": "bearing_hot",
        "sensor": "bearing_left_temp",
        "severity": "critical",
        "state": state,
        "value": 131.2,
        "threshold": 120.0,
        "ts_ms": NOW,
        "since_ms": NOW - 10_000,
        "message": "bearing_left_temp 131.2 degC above 120.0 for 10 s",
        "acked_by": None,
        "acked_at_ms": None,
    }
    return json.dumps({**event, **extra}).encode()


def flag(train: str, flagged: bool, by: str = "alerts") -> bytes:
    """A maintenance record for one train."""
    record = {
        "train_id": train,
        "flagged": flagged,
        "reason": KEY.format(train=train),
        "since_ms": NOW,
        "by": by,
        "disabled": False,
    }
    return json.dumps(record).encode()


def produce(bootstrap: str, topic: str, records: Sequence[tuple[str, bytes | None]]) -> None:
    """Produce (key, value) records and wait until Kafka has them all."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for key, value in records:
        producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(30) == 0, f"Kafka did not take the records for {topic}"


def read_actions(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[Any]:
    """The first `expected` operator actions (key, JSON value) on `topic`, from the start."""
    return [
        (msg.key().decode(), json.loads(msg.value()))
        for msg in read_topic(bootstrap, topic, expected, timeout)
        if msg.key() is not None and msg.value() is not None
    ]
