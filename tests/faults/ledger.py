"""A fleet of devices published by paho (a client Trackside did not write) that keeps a ledger
of every reading the broker acknowledged, and a Kafka reader to check the ledger against."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict

import paho.mqtt.client as mqtt
from confluent_kafka import Consumer
from paho.mqtt.enums import CallbackAPIVersion

from firmware import wire
from tests.bridge.streams import STANDARD
from tests.fixtures.waiting import wait_until

__all__ = ["AckLedger", "KafkaTally", "assert_acknowledged_in_kafka"]

Reading = tuple[int, int]  # device id, seq


class AckLedger:
    """Devices 1..n of train `train` publish QoS 1 readings at `rate` per second in total,
    reconnecting whenever the broker goes away; `acked` holds each (device, seq) whose PUBACK
    arrived. Readings not acknowledged stay in paho's session and are sent again."""

    def __init__(
        self,
        host: str,
        port: int,
        devices: int,
        rate: float,
        train: str = "T1",
        credentials: tuple[str, str] | None = None,
        prefix: str = "trackside",
    ) -> None:
        self.devices, self.rate, self.train, self.prefix = devices, rate, train, prefix
        self.acked: set[Reading] = set()
        self.published = 0
        self._mids: dict[int, Reading] = {}
        self._early: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"ledger-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        if credentials:
            self.client.username_pw_set(*credentials)
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_publish = self._on_publish
        self.client.connect_async(host, port, keepalive=10)
        self._thread = threading.Thread(target=self._publish, daemon=True)

    def start(self) -> AckLedger:
        """Connect and publish until `stop()`."""
        self.client.loop_start()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop publishing (what is in flight may still be acknowledged)."""
        self._stop.set()
        self._thread.join(10)

    def close(self) -> None:
        """Disconnect."""
        self.client.loop_stop()
        self.client.disconnect()

    def unacked(self) -> int:
        """Readings published and not yet acknowledged."""
        with self._lock:
            return self.published - len(self.acked)

    def _on_publish(self, _c: object, _u: object, mid: int, _rc: object, _p: object) -> None:
        with self._lock:
            reading = self._mids.pop(mid, None)
            if reading is None:
                self._early.add(mid)  # acknowledged before _publish recorded it
            else:
                self.acked.add(reading)

    def _publish(self) -> None:
        seq = 0
        interval = self.devices / self.rate
        next_round = time.monotonic()
        while not self._stop.is_set():
            # As a device keeps readings in its outbox while the broker is away. (paho itself
            # would send a reading published between its CONNECT and the CONNACK before the
            # ones it resends after the CONNACK: its own reordering, not the gateway's.)
            if not self.client.is_connected():
                self._stop.wait(0.01)
                next_round = time.monotonic()
                continue
            for device in range(1, self.devices + 1):
                frame = wire.encode(device, 1, seq, int(time.time() * 1000), STANDARD)
                topic = f"{self.prefix}/v1/{self.train}/{device}/telemetry"
                # Not under our lock: paho calls _on_publish holding its own.
                info = self.client.publish(topic, frame, qos=1)
                with self._lock:
                    self.published += 1
                    if info.mid in self._early:
                        self._early.discard(info.mid)
                        self.acked.add((device, seq))
                    else:
                        self._mids[info.mid] = (device, seq)
            seq += 1
            next_round += interval
            self._stop.wait(max(0.0, next_round - time.monotonic()))


class KafkaTally:
    """Reads a telemetry topic from the start: every (device, seq) seen, in Kafka's order."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"tally-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        self.consumer.subscribe([topic])
        self.order: dict[int, list[int]] = defaultdict(list)
        self.seen: set[Reading] = set()
        self.records = 0

    def poll(self) -> None:
        """Take what Kafka has now."""
        for msg in self.consumer.consume(10000, 0.2):
            if msg.error() is None:
                reading = json.loads(msg.value())
                self.order[reading["device_id"]].append(reading["seq"])
                self.seen.add((reading["device_id"], reading["seq"]))
                self.records += 1

    def count(self) -> int:
        """Poll, then how many records were read so far (duplicates included)."""
        self.poll()
        return self.records

    def has_all(self, readings: set[Reading]) -> bool:
        """Poll, then whether every reading in `readings` was seen."""
        self.poll()
        return readings <= self.seen

    def out_of_order(self) -> list[str]:
        """Readings whose first copy came after a newer reading's first copy, per device:
        each as "device D: seq S after N" (empty when every device's order holds)."""
        late = []
        for device, seqs in self.order.items():
            newest = -1
            for seq in dict.fromkeys(seqs):  # first copies, in Kafka's order
                if seq < newest:
                    late.append(f"device {device}: seq {seq} after {newest}")
                newest = max(newest, seq)
        return late

    def close(self) -> None:
        """Leave the group."""
        self.consumer.close()


def assert_acknowledged_in_kafka(ledger: AckLedger, tally: KafkaTally) -> None:
    """Every reading the ledger saw acknowledged reaches Kafka; each device's order holds."""
    acked = set(ledger.acked)
    assert len(acked) > 1000, f"only {len(acked)} readings were acknowledged"
    try:
        wait_until(lambda: tally.has_all(acked), 90, "acknowledged readings in Kafka")
    except AssertionError:
        missing = sorted(acked - tally.seen)
        raise AssertionError(f"{len(missing)} acknowledged readings lost: {missing[:20]}") from None
    late = tally.out_of_order()
    assert not late, f"{len(late)} readings out of order: {late[:10]}"
