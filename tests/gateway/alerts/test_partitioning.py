"""Kafka's partition of a train id, and the train of a routed record."""

from __future__ import annotations

import ctypes

import pytest

from gateway.alerts.partitioning import murmur2, partition_of, train_of_action, train_of_status


@pytest.mark.parametrize(
    ("key", "java"),
    [  # Java's Utils.murmur2 of these keys (Kafka's own UtilsTest), as signed ints
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_is_javas(key: bytes, java: int) -> None:
    assert ctypes.c_int32(murmur2(key)).value == java


def test_partition_of_clears_the_sign_bit_then_takes_the_modulo() -> None:
    # murmur2(b"21") is negative as a Java int: toPositive, not abs().
    assert partition_of("21", 7) == (murmur2(b"21") & 0x7FFFFFFF) % 7
    assert {partition_of(f"T{i}", 6) for i in range(100)} == set(range(6))
    assert partition_of("T104", 1) == 0


def test_the_train_of_a_status_and_of_an_action() -> None:
    assert train_of_status(b"T104/7") == "T104"
    assert train_of_status(None) == ""
    assert train_of_action({"action": "clear", "train_id": "T9"}) == "T9"
    assert train_of_action({"action": "ack", "key": "T9/hot/7/bearing_left_temp"}) == "T9"
    assert train_of_action(["not", "an", "action"]) == ""
