"""Which partition a train belongs to, the same way Kafka's producers decide it.

Every record the alert service reads or writes about a train lives in the partition
`partition_of(train_id, n)`: telemetry (keyed by train id), the alert-state and maintenance
changelogs, and the routed device statuses and operator actions. A partition of input and the
same partition of state then belong to the same instance, which is what lets each instance
restore only its own partitions' state.

The hash is Kafka's: murmur2 of the key, sign bit cleared, modulo the partition count, as Java's
default partitioner and librdkafka's `murmur2_random` compute it. librdkafka's default
(`consistent_random`) is CRC32, so every producer of train-keyed records must set
`partitioner: murmur2_random` (the bridge does).
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["PARTITIONER", "murmur2", "partition_of", "train_of_action", "train_of_status"]

# The librdkafka setting that hashes keys as `partition_of` does.
PARTITIONER = "murmur2_random"

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 of `data`, unsigned (Java's `Utils.murmur2`)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length % 4
    if tail == 3:
        h ^= data[whole + 2] << 16
    if tail >= 2:
        h ^= data[whole + 1] << 8
    if tail >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


@lru_cache(maxsize=65536)  # a fleet's train ids: each hashed once, not once per record
def partition_of(train_id: str, partitions: int) -> int:
    """The partition of `train_id` among `partitions` (Kafka's default for the key)."""
    return (murmur2(train_id.encode()) & 0x7FFFFFFF) % partitions


def train_of_status(key: bytes | None) -> str:
    """The train of a device-status record, keyed `{train_id}/{device_id}`."""
    return (key or b"").decode(errors="replace").rpartition("/")[0]


def train_of_action(action: object) -> str:
    """The train an operator action is about: its `train_id`, or the train part of the alert
    key it acknowledges; "" when it names none (it is then routed to partition 0)."""
    if not isinstance(action, dict):
        return ""
    train = action.get("train_id")
    if train is None and isinstance(action.get("key"), str):
        train = action["key"].split("/", 1)[0]
    return str(train) if train is not None else ""
