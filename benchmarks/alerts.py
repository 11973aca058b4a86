"""Alert service: readings evaluated per second, threshold crossing -> committed alert latency.

Run: `python -m benchmarks.alerts`. Uses KAFKA_BOOTSTRAP_SERVERS or starts a private Kafka.
Three measurements with the default rules (9 rules, 7-channel readings, 100 trains):
1. the engine alone (pure evaluation, no Kafka);
2. one `trackside alerts run` process over a backlog of readings, counted by its committed
   consumer offsets (so the number includes JSON parsing and the Kafka transactions);
3. latency: crossings produced among steady background load; latency is the time from
   `produce()` of the crossing reading to the alert being readable with read_committed.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from benchmarks.report import report
from benchmarks.services import child, kafka_cluster
from gateway.alerts.config import DEFAULT_RULES, Topics
from gateway.alerts.engine import Engine, Reading
from gateway.alerts.rules import load_rules

__all__ = ["main", "write_backlog"]

TRAINS = 100
ENGINE_READINGS = 200_000
BACKLOG = 300_000
BACKGROUND_PER_S = 2_000
CROSSINGS = 200


def _values(rng: random.Random) -> dict[str, float]:
    """A healthy reading: nothing near any default level (sensor noise of a few tenths)."""
    return {
        "engine_temp": round(rng.gauss(85, 0.5), 1),
        "bearing_left_temp": round(rng.gauss(40, 0.5), 1),
        "bearing_right_temp": round(rng.gauss(40, 0.5), 1),
        "vibration_rms": round(abs(rng.gauss(0.4, 0.1)), 3),
        "speed": round(rng.uniform(60, 120), 1),
        "supply_voltage": round(rng.gauss(24, 0.1), 3),
        "ambient_temp": 20.0,
    }


def _reading(train: str, seq: int, ts_ms: int, values: dict[str, float]) -> dict[str, object]:
    return {
        "train_id": train,
        "device_id": 1,
        "boot_id": 1,
        "seq": seq,
        "ts_ms": ts_ms,
        "wall_clock": True,
        "values": values,
    }


def engine_rate() -> dict[str, object]:
    """Readings per second through `Engine.reading` alone."""
    rng = random.Random(1)
    readings = [
        Reading(f"T{i % TRAINS}", 1, 1, i, i * 10, _values(rng)) for i in range(ENGINE_READINGS)
    ]
    engine = Engine(load_rules(DEFAULT_RULES))
    start = time.perf_counter()
    for reading in readings:
        engine.reading(reading, reading.ts_ms)
    elapsed = time.perf_counter() - start
    return {"what": "engine only (pure evaluation)", "readings/s": ENGINE_READINGS / elapsed}


@contextmanager
def alert_process(bootstrap: str, prefix: str, log: Path) -> Iterator[psutil.Process]:
    """One `trackside alerts run` subprocess with the default rules."""
    argv = [sys.executable, "-m", "gateway", "alerts", "run", "--bootstrap-servers", bootstrap,
            "--topic-prefix", prefix, "--group-id", f"{prefix}-alerts",
            "--transactional-id", f"{prefix}-alerts-0"]  # fmt: skip
    with child(argv, log) as proc:
        yield psutil.Process(proc.pid)


def write_backlog(producer: Producer, topic: str, count: int, trains: int) -> None:
    """`count` healthy readings of `trains` trains into `topic`, keyed by train id, flushed."""
    rng = random.Random(2)
    for i in range(count):
        train = f"T{i % trains}"
        value = json.dumps(_reading(train, i, i * 10, _values(rng))).encode()
        while True:
            try:
                producer.produce(topic, value, train.encode())
                break
            except BufferError:
                producer.poll(0.1)
    if producer.flush(60):
        raise RuntimeError("the backlog was not fully written")


def service_rate(bootstrap: str, log: Path) -> dict[str, object]:
    """Readings per second of one alert process over a backlog, by its committed offsets."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    topics = Topics.with_prefix(prefix)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    write_backlog(producer, topics.telemetry, BACKLOG, TRAINS)
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{prefix}-alerts"})
    partition = [TopicPartition(topics.telemetry, 0)]
    first: tuple[float, int, float] | None = None  # time, offset, process CPU seconds
    try:
        with alert_process(bootstrap, prefix, log) as process:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                time.sleep(0.05)
                try:
                    offset = probe.committed(partition, timeout=10)[0].offset
                except KafkaException:  # the group coordinator is still being elected
                    continue
                now = time.monotonic()
                cpu = sum(process.cpu_times()[:2])
                if offset > 0 and first is None:
                    first = (now, offset, cpu)
                if offset >= BACKLOG and first is not None:
                    readings = BACKLOG - first[1]
                    return {
                        "what": "one alert process, backlog (Kafka transactions)",
                        "readings/s": readings / (now - first[0]),
                        "CPU us/reading": (cpu - first[2]) / readings * 1e6,
                    }
    finally:
        probe.close()
    raise RuntimeError(f"the alert process did not finish the backlog in 600 s; see {log}")


def latency(bootstrap: str, log: Path) -> tuple[dict[str, object], list[float]]:
    """Crossing -> alert readable with read_committed, under steady background load."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    topics = Topics.with_prefix(prefix)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    # Creates the topic so the reader can be assigned before the service exists.
    producer.produce(topics.alerts, b"{}", b"warm-up")
    producer.flush(30)
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{prefix}-reader",
            "isolation.level": "read_committed",
            "auto.offset.reset": "latest",
            "fetch.wait.max.ms": 5,
        }
    )
    reader.subscribe([topics.alerts])
    stop = threading.Event()
    rng = random.Random(3)

    def background() -> None:
        seq = 0
        while not stop.is_set():
            for _ in range(BACKGROUND_PER_S // 100):
                train = f"T{seq % TRAINS}"
                now_ms = int(time.time() * 1000)
                value = _reading(train, seq, now_ms, _values(rng))
                producer.produce(topics.telemetry, json.dumps(value).encode(), train.encode())
                seq += 1
            producer.poll(0)
            time.sleep(0.01)

    samples: list[float] = []
    with alert_process(bootstrap, prefix, log):
        loader = threading.Thread(target=background, daemon=True)
        loader.start()
        time.sleep(10)  # the service starts and catches up
        while reader.poll(0.5) is not None:
            pass
        for n in range(CROSSINGS):
            train = f"X{n}"
            values = {**_values(rng), "bearing_left_temp": 150.0}  # 130 over ambient: critical
            sent_ms = int(time.time() * 1000)
            reading = json.dumps(_reading(train, 1, sent_ms, values)).encode()
            producer.produce(topics.telemetry, reading, train.encode())
            producer.poll(0)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                msg = reader.poll(0.5)
                if msg is None or msg.error() is not None:
                    continue
                event = json.loads(msg.value() or b"{}")
                if event.get("train_id") == train and event.get("rule") == "bearing_critical":
                    samples.append(time.time() * 1000 - sent_ms)
                    break
            time.sleep(0.05)
        stop.set()
        loader.join(10)
    producer.flush(30)
    reader.close()
    ordered = sorted(samples)
    row: dict[str, object] = {
        "what": f"crossing -> committed alert ({BACKGROUND_PER_S} readings/s background)",
        "samples": len(samples),
        "p50 ms": statistics.median(ordered),
        "p99 ms": ordered[int(len(ordered) * 0.99) - 1],
        "max ms": ordered[-1],
    }
    return row, samples


def main() -> None:
    """Run the three measurements and report them."""
    rows = [engine_rate()]
    with tempfile.TemporaryDirectory(prefix="bench-alerts-") as tmp:
        home = Path(tmp)
        with kafka_cluster(home / "kafka") as bootstrap:
            rows.append(service_rate(bootstrap, home / "alerts-rate.log"))
            row, _ = latency(bootstrap, home / "alerts-latency.log")
            rows.append(row)
    report(
        "alerts",
        "Alert service: evaluation rate and crossing -> committed alert latency",
        rows,
        notes=(
            f"Default rules (9), {TRAINS} trains, 7-channel readings. Latency target: p99 < 500 "
            "ms. The service and this harness share the machine's cores."
        ),
    )


if __name__ == "__main__":
    main()
