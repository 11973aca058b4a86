"""Bridge: MQTT QoS 1 in -> Kafka acks=all out, Trackside against its peers, same brokers.

Run: `python -m benchmarks.bridge [--readings N] [--devices D] [--rate R] [--seconds S]`.
Uses KAFKA_BOOTSTRAP_SERVERS or starts a private Kafka; always starts a private Mosquitto.
Each contender runs as its own process, on a fresh Kafka topic with LogAppendTime timestamps
and its own persistent MQTT session, in two legs:

1. drain: N readings are preloaded into the contender's session, then the contender starts;
   readings/s is the count over the span from the first to the last Kafka append time, and
   every (device, seq) must be there exactly once or more (nothing lost);
2. latency: with the contender live, readings published at a fixed rate for S seconds;
   added latency is Kafka's append time minus the reading's ts_ms (set when published).

CPU is the contender's user+system time over the measured span (100 % = one core); RSS is the
peak of samples taken every 0.1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from benchmarks.mqtt_load import Publisher, prepare_session
from benchmarks.report import report
from benchmarks.services import child, kafka_cluster
from bridge.wire_decoder import decode
from gateway.localkafka import free_port
from gateway.mosquitto import mosquitto_binary, mosquitto_config

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
PER_TRAIN = 10  # devices per train; the Kafka key is the train id
STALL_S = 30.0  # a leg ends when Kafka got nothing new for this long
FLECHTWERK = (
    "cannot run here: every flechtwerk release on PyPI requires Python >= 3.12, "
    "this machine has Python 3.11 only"
)


@dataclass(frozen=True)
class Contender:
    """A bridge under test: how to start it on one MQTT filter and one Kafka topic."""

    name: str
    mqtt_ack: str
    argv: Callable[[Leg], list[str]]


@dataclass(frozen=True)
class Leg:
    """One contender on a fresh MQTT prefix, client id and Kafka topic."""

    contender: str
    bootstrap: str
    mqtt_port: int
    home: Path
    prefix: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:10]}")

    @property
    def filter(self) -> str:
        return f"{self.prefix}/v1/+/+/telemetry"

    @property
    def client_id(self) -> str:
        return f"{self.prefix}-{self.contender}"


def _trackside(leg: Leg) -> list[str]:
    config = {
        "name": leg.prefix,
        "mqtt": {
            "port": leg.mqtt_port,
            "client_id": leg.client_id,
            "topics": [leg.filter],
            "topic_pattern": f"{leg.prefix}/v1/{{train_id}}/{{device_id}}/telemetry",
        },
        "kafka": {"bootstrap_servers": leg.bootstrap, "topic": leg.prefix},
        "errors": {"deadletterqueue_topic_name": f"{leg.prefix}.dead-letter"},
        "spool": {"path": str(leg.home / f"{leg.prefix}.spool")},
    }
    path = leg.home / f"{leg.prefix}.yaml"
    path.write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "gateway", "bridge", "run", "-c", str(path)]


def _peer(module: str) -> Callable[[Leg], list[str]]:
    def argv(leg: Leg) -> list[str]:
        return [
            sys.executable, "-m", f"benchmarks.peers.{module}",
            "--mqtt-port", str(leg.mqtt_port), "--filter", leg.filter,
            "--client-id", leg.client_id, "--bootstrap-servers", leg.bootstrap,
            "--topic", leg.prefix,
        ]  # fmt: skip

    return argv


CONTENDERS = [
    Contender("trackside", "after Kafka ack", _trackside),
    Contender("paho + confluent-kafka loop", "on receipt (at most once)", _peer("paho_loop")),
    Contender("mq-bridge 1.2", "after Kafka ack", _peer("mq_bridge_route")),
]


@dataclass
class Sampler:
    """CPU seconds and RSS of one process, sampled every 0.1 s in a thread."""

    process: psutil.Process
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # wall, cpu s, rss
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                cpu = self.process.cpu_times()
                rss = self.process.memory_info().rss
            except psutil.Error:
                return
            self.samples.append((time.time(), cpu.user + cpu.system, rss))

    def stop(self) -> None:
        self._stop.set()

    def cpu_percent(self, start: float, end: float) -> float | None:
        """CPU use between two wall-clock times, from the nearest samples."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return None
        (t0, c0, _), (t1, c1, _) = inside[0], inside[-1]
        return 100 * (c1 - c0) / (t1 - t0)

    @property
    def peak_rss_mib(self) -> float:
        return max((s[2] for s in self.samples), default=0) / 2**20


@contextmanager
def mosquitto(home: Path) -> Iterator[int]:
    """A private Mosquitto with unbounded queues; its autosave is off so it costs no CPU."""
    port = free_port()
    conf = home / "mosquitto.conf"
    conf.write_text(mosquitto_config(port, home, "autosave_interval 0\n"))
    with child([mosquitto_binary(), "-c", str(conf)], home / "mosquitto.log") as proc:
        deadline = time.monotonic() + 10
        while True:
            try:
                Publisher("127.0.0.1", port, "probe", 1, 1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        yield port


@contextmanager
def running(contender: Contender, leg: Leg) -> Iterator[Sampler]:
    """The contender as a process with a sampler; SIGTERM (then SIGKILL) afterwards."""
    with child(contender.argv(leg), leg.home / f"{leg.prefix}.log", cwd=ROOT) as proc:
        sampler = Sampler(psutil.Process(proc.pid))
        try:
            yield sampler
        finally:
            sampler.stop()


class Kafka:
    """The harness's view of Kafka: fresh topics, their size, their records."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-probe"})

    def close(self) -> None:
        self.probe.close()

    def create(self, topic: str) -> None:
        config = {"message.timestamp.type": "LogAppendTime"}
        for future in self.admin.create_topics([NewTopic(topic, 1, 1, config=config)]).values():
            future.result(30)

    def size(self, topic: str) -> int:
        return int(self.probe.get_watermark_offsets(TopicPartition(topic, 0), 10)[1])

    def wait_for(self, topic: str, count: int) -> int:
        """Wait until `topic` holds `count` records or stalls; returns the size reached."""
        size, last_change = self.size(topic), time.monotonic()
        while size < count and time.monotonic() - last_change < STALL_S:
            time.sleep(0.1)
            now = self.size(topic)
            if now != size:
                size, last_change = now, time.monotonic()
        return size

    def readings(self, topic: str, count: int) -> list[tuple[int, int, int, int, int]]:
        """(device, boot, seq, ts_ms, append_ms) of the first `count` records of `topic`."""
        consumer = Consumer(
            {"bootstrap.servers": self.bootstrap, "group.id": "bench-reader", "log_level": 3}
        )
        consumer.assign([TopicPartition(topic, 0, 0)])
        out: list[tuple[int, int, int, int, int]] = []
        deadline = time.monotonic() + 120
        while len(out) < count and time.monotonic() < deadline:
            for msg in consumer.consume(10000, 1.0):
                if msg.error() is not None:
                    continue
                kind, append_ms = msg.timestamp()
                if kind != TIMESTAMP_LOG_APPEND_TIME:
                    raise RuntimeError(f"{topic} does not carry LogAppendTime timestamps")
                out.append((*_reading(msg.value() or b""), append_ms))
        consumer.close()
        return out


def _reading(value: bytes) -> tuple[int, int, int, int]:
    """(device, boot, seq, ts_ms) from Trackside's JSON or a peer's unchanged wire frame."""
    if value[:1] == b"{":
        r = json.loads(value)
        return r["device_id"], r["boot_id"], r["seq"], r["ts_ms"]
    _, device, boot, seq, ts_ms, _ = decode(value)
    return device, boot, seq, ts_ms


def drain(
    kafka: Kafka, contender: Contender, leg: Leg, readings: int, devices: int
) -> dict[str, Any]:
    """Leg 1: preload `readings` into the session, start the contender, time the drain."""
    kafka.create(leg.prefix)
    prepare_session("127.0.0.1", leg.mqtt_port, leg.client_id, leg.filter)
    publisher = Publisher("127.0.0.1", leg.mqtt_port, leg.prefix, devices, PER_TRAIN)
    publisher.burst(readings)
    if not publisher.wait_acked():
        raise RuntimeError("Mosquitto did not acknowledge the preload")
    publisher.close()
    with running(contender, leg) as sampler:
        kafka.wait_for(leg.prefix, readings)
    records = kafka.readings(leg.prefix, kafka.size(leg.prefix))
    unique = {(r[0], r[2]) for r in records}
    first, last = min(r[4] for r in records), max(r[4] for r in records)
    return {
        "readings/s": (len(records) - 1) / max(last - first, 1) * 1000,
        "lost": readings - len(unique),
        "CPU % (drain)": sampler.cpu_percent(first / 1000, last / 1000),
        "peak RSS MiB": sampler.peak_rss_mib,
    }


def latency(kafka: Kafka, contender: Contender, leg: Leg, rate: float, seconds: float, devices: int
            ) -> dict[str, Any]:  # fmt: skip
    """Leg 2: the contender live, readings at `rate`/s; Kafka append time minus ts_ms."""
    kafka.create(leg.prefix)
    prepare_session("127.0.0.1", leg.mqtt_port, leg.client_id, leg.filter)
    publisher = Publisher("127.0.0.1", leg.mqtt_port, leg.prefix, devices, PER_TRAIN)
    with running(contender, leg) as sampler:
        deadline = time.monotonic() + 60
        while kafka.size(leg.prefix) == 0 and time.monotonic() < deadline:
            publisher.burst(1, boot_id=0)  # warm-up readings (boot 0) until the path is open
            time.sleep(0.2)
        warm = publisher.sent
        start = time.time()
        publisher.paced(rate, seconds)
        end = time.time()
        kafka.wait_for(leg.prefix, publisher.sent)
        publisher.close()
    records = kafka.readings(leg.prefix, kafka.size(leg.prefix))
    timed = [r for r in records if r[1] == 1]
    added = sorted(r[4] - r[3] for r in timed)
    expected = publisher.sent - warm

    def pct(q: float) -> float | None:
        return float(added[min(len(added) - 1, int(q * len(added)))]) if added else None

    return {
        f"p50 ms @{rate / 1000:g}k/s": pct(0.50),
        f"p99 ms @{rate / 1000:g}k/s": pct(0.99),
        f"CPU % @{rate / 1000:g}k/s": sampler.cpu_percent(start, end),
        "lost": expected - len({(r[0], r[2]) for r in timed}),
        "peak RSS MiB": sampler.peak_rss_mib,
    }


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--readings", type=int, default=200_000, help="preloaded for the drain")
    parser.add_argument("--devices", type=int, default=1_000)
    parser.add_argument("--rate", type=float, default=20_000, help="readings/s, latency leg")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency leg")
    parser.add_argument(
        "--only", action="append", choices=[c.name.split()[0] for c in CONTENDERS],
        help="run only these contenders (repeatable)",
    )  # fmt: skip
    return parser.parse_args()


def main() -> None:
    """Start the brokers, run every contender through both legs, report."""
    args = _arguments()
    chosen = [c for c in CONTENDERS if not args.only or c.name.split()[0] in args.only]
    rows: list[dict[str, Any]] = []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-bridge-") as tmp:
        home = Path(tmp)
        (home / "kafka").mkdir()
        with kafka_cluster(home / "kafka") as bootstrap, mosquitto(home) as port:
            kafka = Kafka(bootstrap)
            for contender in chosen:
                row: dict[str, Any] = {"bridge": contender.name, "MQTT ack": contender.mqtt_ack}
                leg = Leg(contender.name.split()[0], bootstrap, port, home)
                row.update(drain(kafka, contender, leg, args.readings, args.devices))
                leg = Leg(contender.name.split()[0], bootstrap, port, home)
                live = latency(kafka, contender, leg, args.rate, args.seconds, args.devices)
                rss = max(row["peak RSS MiB"], live.pop("peak RSS MiB"))
                lost = row["lost"] + live.pop("lost")
                row.update(live, **{"peak RSS MiB": rss, "lost": lost})
                rows.append(row)
            kafka.close()
    if not args.only:
        rows.append({"bridge": "flechtwerk", "MQTT ack": "not run (see below)"})
    report(
        "bridge",
        f"Bridge: MQTT QoS 1 -> Kafka acks=all, {args.readings:,} readings drained, "
        f"{args.devices:,} devices; latency at {args.rate:,.0f}/s for {args.seconds:g} s",
        rows,
        notes="One process per bridge; Mosquitto, Kafka, the load generator and the bridge "
        "share the machine's cores. 'lost' counts (device, seq) missing from Kafka over both "
        "legs. Targets for Trackside: >= 40,000 readings/s, p99 < 20 ms at half that load, "
        f"RSS < 100 MB. flechtwerk: {FLECHTWERK}. Load average at the start: {load:.1f} on "
        f"{os.cpu_count()} cores.",
    )


if __name__ == "__main__":
    main()
