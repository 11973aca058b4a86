"""The rollouts, their devices' progress and the release bundles, as three compacted Kafka
topics read into tables (docs/ota.md, "Staged rollouts").

Every reader reads everything: no consumer group offsets (a unique group id, nothing
committed), each partition from its beginning, so a gateway that starts (or restarts) rebuilds
the whole picture and resumes from it. Writes go out one record at a time and are flushed
before the call returns, so a decision written is one every other reader will see.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from pydantic import ValidationError

from gateway.ota import OtaError
from gateway.ota.rollout import DeviceProgress, RolloutPlan, progress_key
from gateway.topics import Topics

__all__ = ["RolloutStore", "ota_topic_names", "release_id"]

log = logging.getLogger(__name__)


def ota_topic_names(topics: Topics) -> list[str]:
    """The three OTA topics' names: rollouts, progress, releases."""
    return [topics.ota_rollouts, topics.ota_progress, topics.ota_releases]


class RolloutStore:
    """Tables of the OTA topics on `bootstrap_servers`; `poll()` keeps them current."""

    def __init__(
        self,
        bootstrap_servers: str,
        topics: Topics,
        settings: Mapping[str, Any] | None = None,
        with_releases: bool = True,
        on_progress: Callable[[DeviceProgress], None] | None = None,
    ) -> None:
        """`on_progress` sees every progress record read, in order (the tables keep only
        each device's last)."""
        self.bootstrap_servers = bootstrap_servers
        self._on_progress = on_progress
        self.topics = topics
        self.plans: dict[str, RolloutPlan] = {}
        self.progress: dict[str, DeviceProgress] = {}
        self.releases: dict[str, bytes] = {}
        common = {"bootstrap.servers": bootstrap_servers, "log_level": 0, **(settings or {})}
        self._consumer = Consumer({
            **common,
            "group.id": f"trackside-ota-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        })
        self._producer = Producer({**common, "acks": "all", "enable.idempotence": True})
        names = ota_topic_names(topics)[:3 if with_releases else 2]
        self._ends: dict[tuple[str, int], int] = {}
        # The offset of this store's last write per (topic, key): an older record of the key
        # read back after it (the consumer lags behind the writes) must not undo it.
        self._written: dict[tuple[str, str], int] = {}
        try:
            metadata = self._consumer.list_topics(timeout=30)
            partitions = [
                TopicPartition(name, p, OFFSET_BEGINNING)
                for name in names
                for p in (metadata.topics[name].partitions if name in metadata.topics else ())
            ]
            for tp in partitions:
                self._ends[(tp.topic, tp.partition)] = self._end_offset(tp)
        except KafkaException as exc:
            self.close()
            raise OtaError(f"cannot read the OTA topics from {bootstrap_servers}: "
                           f"{exc.args[0].str()}; is Kafka running there?") from exc
        missing = set(names) - {tp.topic for tp in partitions}
        if missing:
            self.close()
            raise OtaError(f"Kafka at {bootstrap_servers} has no topic {', '.join(sorted(missing))}"
                           ": `trackside ota rollout` and a gateway with `ota:` create them (or "
                           "check --topic-prefix)")
        self._consumer.assign(partitions)

    def _end_offset(self, partition: TopicPartition) -> int:
        # A topic created a moment ago may have no leader yet ("Not leader for partition"):
        # asked again for up to 10 s before that counts as Kafka not answering.
        deadline = time.monotonic() + 10
        while True:
            try:
                return int(self._consumer.get_watermark_offsets(partition, timeout=30)[1])
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def catch_up(self, timeout_s: float = 30.0) -> None:
        """Read every record that was in the topics when the store was made."""
        deadline = time.monotonic() + timeout_s
        while self._ends:
            if time.monotonic() > deadline:
                raise OtaError(f"could not read the OTA topics from {self.bootstrap_servers} "
                               f"within {timeout_s:.0f} s: is Kafka reachable?")
            self.poll(0.2)

    def poll(self, timeout_s: float = 0.2) -> int:
        """Apply the records that arrived; how many."""
        first = self._consumer.poll(timeout_s)
        batch = [first, *self._consumer.consume(1000, 0)] if first is not None else []
        applied = 0
        for msg in batch:
            error = msg.error()
            if error is not None:
                log.debug("OTA topics: %s", error.str())
                continue
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            end = self._ends.get((topic, partition))
            if end is not None and offset + 1 >= end:
                del self._ends[(topic, partition)]
            key = (msg.key() or b"").decode(errors="replace")
            if offset >= self._written.get((topic, key), -1):
                self._apply(topic, key, msg.value())
                applied += 1
        for (topic, partition), end in list(self._ends.items()):
            if end == 0:  # an empty partition: nothing to wait for
                del self._ends[(topic, partition)]
        return applied

    def _apply(self, topic: str, key: str, value: bytes | None) -> None:
        try:
            if topic == self.topics.ota_releases:
                _put(self.releases, key, value)
            elif topic == self.topics.ota_rollouts:
                _put(self.plans, key, value and RolloutPlan.model_validate_json(value))
            elif topic == self.topics.ota_progress:
                record = value and DeviceProgress.model_validate_json(value)
                _put(self.progress, key, record)
                if record and self._on_progress is not None:
                    self._on_progress(record)
        except ValidationError as exc:
            log.warning("skipping a record of %s (key %s) this version cannot read: %s",
                        topic, key, exc.errors()[0]["msg"])

    def put_plan(self, plan: RolloutPlan) -> None:
        """Write the rollout's plan and state."""
        self._write(self.topics.ota_rollouts, plan.id, plan.model_dump_json().encode())
        self.plans[plan.id] = plan

    def put_progress(self, progress: DeviceProgress) -> None:
        """Write one device's progress."""
        key = progress_key(progress.rollout, progress.target)
        self._write(self.topics.ota_progress, key, progress.model_dump_json().encode())
        self.progress[key] = progress

    def put_release(self, release_id: str, bundle: bytes) -> None:
        """Write a release bundle, for every gateway to fetch."""
        self._write(self.topics.ota_releases, release_id, bundle)
        self.releases[release_id] = bundle

    def _write(self, topic: str, key: str, value: bytes) -> None:
        errors: list[str] = []

        def delivered(error: Any, msg: Any) -> None:
            if error is not None:
                errors.append(error.str())
            else:
                self._written[(topic, key)] = msg.offset()

        try:
            self._producer.produce(topic, value, key.encode(), on_delivery=delivered)
        except (BufferError, KafkaException) as exc:
            raise OtaError(f"cannot write to {topic}: {exc}; try again once Kafka at "
                           f"{self.bootstrap_servers} answers") from exc
        if self._producer.flush(30) or errors:
            raise OtaError(f"{topic} did not take the record for {key}: "
                           f"{'; '.join(errors) or 'no answer within 30 s'}; is Kafka at "
                           f"{self.bootstrap_servers} running?")

    def close(self) -> None:
        """Close the consumer (the producer has flushed every write already)."""
        self._consumer.close()


def _put(table: dict[str, Any], key: str, value: Any) -> None:
    if value is None:  # a tombstone: the key is gone
        table.pop(key, None)
    else:
        table[key] = value


def release_id(version: str, digest: bytes) -> str:
    """The releases topic's key for a bundle: its version and the start of its digest."""
    return f"{version}-{digest[:4].hex()}"

