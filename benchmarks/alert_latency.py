"""End-to-end alert latency: a device's MQTT PUBLISH of a threshold crossing -> committed alert.

Run: `python -m benchmarks.alert_latency`. Uses KAFKA_BOOTSTRAP_SERVERS or starts a private Kafka.

Every part runs as its own process, as on the Pi: the MQTT broker (Mosquitto, then the embedded
amqtt broker), `trackside bridge run` (MQTT -> Kafka, acks=all), `trackside alerts run` (Kafka
transactions) and `trackside simulate` (the background load: N trains at 1 Hz, normal values).
This process is the probe device and the measuring reader. Every `PROBE_INTERVAL_S` the probe
publishes (QoS 1) one wire-format reading whose left bearing is 130 degC over ambient, for a
fresh train id, so each probe fires `bearing_critical` (no `for` duration) exactly once.
Latency is the time from just before the PUBLISH to the firing event being returned by a
consumer with isolation.level=read_committed on the alerts topic. Two Kafka record timestamps
split it into stages (millisecond resolution): the telemetry record's (the bridge's produce
call) and the alert record's (the service's produce call, inside its transaction). The last case
repeats one row with the alert service's librdkafka `retry.backoff.ms` lowered, which removes
most of the tail (docs/alerts.md, Numbers).
"""

from __future__ import annotations

import json
import math
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.report import report
from benchmarks.services import child, kafka_cluster
from bridge.config import ConnectorConfig, ErrorsConfig, KafkaTarget, MqttSource, SpoolConfig
from firmware import wire
from gateway.alerts.config import Topics
from gateway.alerts.state import rule_key
from gateway.localkafka import free_port
from gateway.mosquitto import mosquitto_binary, mosquitto_config

__all__ = ["main"]

PROBES = 150
PROBE_INTERVAL_S = 0.2
SETTLE_S = 8.0  # the simulator connects and spreads its devices over the second
PROBE_DEVICE = 9001
RULE = "bearing_critical"
NORMAL = {
    "engine_temp": 85.0,
    "bearing_left_temp": 40.0,
    "bearing_right_temp": 40.0,
    "vibration_rms": 0.4,
    "speed": 90.0,
    "supply_voltage": 24.0,
    "ambient_temp": 20.0,
}
CROSSING = {**NORMAL, "bearing_left_temp": 150.0}  # 130 over ambient; the rule fires above 111


@dataclass(frozen=True)
class Case:
    """One row: the broker, the background readings/s (that many trains at 1 Hz) and
    librdkafka settings for the alert service on top of its defaults."""

    broker: str
    load: int
    alert_settings: tuple[tuple[str, int], ...] = ()

    @property
    def name(self) -> str:
        tuned = "-tuned" if self.alert_settings else ""
        return f"{self.broker}-{self.load}{tuned}"


CASES = (
    Case("mosquitto", 500),
    Case("mosquitto", 2000),
    Case("amqtt", 500),
    Case("amqtt", 2000),
    # Back-to-back transactions meet CONCURRENT_TRANSACTIONS while the previous commit's
    # markers are written; librdkafka retries after retry.backoff.ms (100 ms by default).
    Case("mosquitto", 2000, (("retry.backoff.ms", 10),)),
)


class BenchmarkError(RuntimeError):
    """A part of the pipeline did not come up or did not deliver; see the logs it names."""


# -- processes ---------------------------------------------------------------------------------


@contextmanager
def _process(argv: list[str], log: Path) -> Iterator[psutil.Process]:
    """`argv` as a child process logging to `log`, watched with psutil."""
    with child(argv, log) as proc:
        yield psutil.Process(proc.pid)


def _gateway(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


@contextmanager
def _broker(kind: str, home: Path) -> Iterator[tuple[int, psutil.Process]]:
    """A private Mosquitto (production config) or embedded amqtt broker; its port."""
    port = free_port()
    if kind == "mosquitto":
        conf = home / "mosquitto.conf"
        conf.write_text(mosquitto_config(port, home))
        argv = [mosquitto_binary(), "-c", str(conf)]
    else:
        argv = _gateway("broker", "run", "--port", str(port))
    with _process(argv, home / f"{kind}.log") as proc:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError as exc:
                if time.monotonic() > deadline or not proc.is_running():
                    raise BenchmarkError(f"{kind} did not listen on {port}; see {home}") from exc
                time.sleep(0.1)
        yield port, proc


def _connector_file(home: Path, port: int, kind: str, bootstrap: str, topics: Topics) -> Path:
    """The bridge's connector YAML: default telemetry connector, fresh topics and client id."""
    prefix = topics.telemetry.rpartition(".")[0]
    config = ConnectorConfig(
        mqtt=MqttSource(
            port=port,
            protocol="3.1.1" if kind == "amqtt" else "5",  # amqtt speaks 3.1.1 only
            client_id=f"{prefix}-bridge",
        ),
        kafka=KafkaTarget(bootstrap_servers=bootstrap, topic=topics.telemetry),
        errors=ErrorsConfig(deadletterqueue_topic_name=f"{prefix}.dead-letter"),
        spool=SpoolConfig(path=home / "spool"),
    )
    path = home / "connector.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Tap:
    """A read_committed consumer on one topic in a thread; keeps records of probe trains.

    Fetch settings are librdkafka's defaults, as the dashboard's reader has them.
    """

    bootstrap: str
    topic: str
    wanted: bytes  # key prefix of the records to keep
    # key -> (arrival, record timestamp in ms, value) of the first record with that key
    seen: dict[str, tuple[float, int, bytes]] = field(default_factory=dict)
    count: int = 0  # every record read
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"{self.topic}-tap",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "log_level": 3,
            }
        )
        partitions = consumer.list_topics(self.topic, timeout=30).topics[self.topic].partitions
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        self._thread = threading.Thread(target=self._run, args=(consumer,), daemon=True)
        self._thread.start()

    def _run(self, consumer: Consumer) -> None:
        try:
            while not self._stop.is_set():
                # consume(n, timeout) waits out its timeout unless n records came: wait for
                # one record only, then take what is already fetched.
                first = consumer.poll(0.1)
                if first is None:
                    continue
                now = time.time()
                for msg in [first, *consumer.consume(1000, 0)]:
                    if msg.error() is not None:
                        continue
                    self.count += 1
                    key = msg.key() or b""
                    if key.startswith(self.wanted):
                        self.seen.setdefault(
                            key.decode(), (now, msg.timestamp()[1], msg.value() or b"")
                        )
        finally:
            consumer.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def _alert_key(train: str) -> str:
    return rule_key(train, RULE, PROBE_DEVICE, "bearing_left_temp")


def _firing(alerts: Tap, train: str) -> bool:
    record = alerts.seen.get(_alert_key(train))
    if record is None:
        return False
    event = json.loads(record[2])
    return bool(event.get("rule") == RULE and event.get("state") == "firing")


class Probe:
    """The probe device: one MQTT 3.1.1 connection publishing crossing readings at QoS 1."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"probe-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv311,
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.seq = 0
        self.boot_id = 1

    def publish(self, train: str) -> float:
        """Publish one crossing reading for `train`; the time just before the PUBLISH."""
        values = {name: round(v * wire.scale(name)) for name, v in CROSSING.items()}
        sent = time.time()
        frame = wire.encode(PROBE_DEVICE, self.boot_id, self.seq, int(sent * 1000), values)
        self.client.publish(f"trackside/v1/{train}/{PROBE_DEVICE}/telemetry", frame, qos=1)
        self.seq += 1
        return sent

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _wait_topics(bootstrap: str, names: list[str], log: Path, timeout: float = 90) -> None:
    admin = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe", "log_level": 3})
    try:
        deadline = time.monotonic() + timeout
        while not set(names) <= set(admin.list_topics(timeout=10).topics):
            if time.monotonic() > deadline:
                raise BenchmarkError(
                    f"the alert service did not create {names} in {timeout} s; its log:\n"
                    + _tail(log)
                )
            time.sleep(0.2)
    finally:
        admin.close()


def _warm_up(probe: Probe, alerts: Tap, log_dir: Path) -> None:
    """Publish crossings until one comes back as an alert: every part is up and subscribed."""
    deadline = time.monotonic() + 120
    n = 0
    while time.monotonic() < deadline:
        train = f"W{n}"
        probe.publish(train)
        n += 1
        until = time.monotonic() + 2
        while time.monotonic() < until:
            if any(_firing(alerts, f"W{i}") for i in range(n)):
                return
            time.sleep(0.05)
    logs = "\n".join(f"{p.name}:\n{_tail(p)}" for p in sorted(log_dir.glob("*.log")))
    raise BenchmarkError(f"no alert came back within 120 s; the logs:\n{logs}")


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted samples."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _stage(name: str, samples: list[float]) -> dict[str, float | None]:
    ordered = sorted(samples)
    return {
        f"{name} p50": statistics.median(ordered) if ordered else None,
        f"{name} p99": _percentile(ordered, 0.99) if ordered else None,
    }


# -- one row -----------------------------------------------------------------------------------


def _alerts_argv(case: Case, bootstrap: str, prefix: str, home: Path) -> list[str]:
    argv = _gateway(
        "alerts", "run", "--bootstrap-servers", bootstrap, "--topic-prefix", prefix,
        "--group-id", f"{prefix}-alerts", "--transactional-id", f"{prefix}-alerts-0",
    )  # fmt: skip
    if case.alert_settings:
        config = home / "alerts.yaml"
        config.write_text(yaml.safe_dump({"kafka": {"settings": dict(case.alert_settings)}}))
        argv += ["--config", str(config)]
    return argv


def _row(case: Case, bootstrap: str, home: Path) -> dict[str, object]:
    """Broker, bridge, alert service and load for one case; probe; measure."""
    home.mkdir(parents=True)
    prefix = f"lat-{uuid.uuid4().hex[:8]}"
    topics = Topics.with_prefix(prefix)
    kind, load = case.broker, case.load
    with _broker(kind, home) as (port, broker):
        connector = _connector_file(home, port, kind, bootstrap, topics)
        alerts_argv = _alerts_argv(case, bootstrap, prefix, home)
        with (
            _process(_gateway("bridge", "run", "-c", str(connector)), home / "bridge.log") as br,
            _process(alerts_argv, home / "alerts.log") as service,
        ):
            _wait_topics(bootstrap, [topics.alerts, topics.telemetry], home / "alerts.log")
            alerts = Tap(bootstrap, topics.alerts, b"")
            telemetry = Tap(bootstrap, topics.telemetry, b"P")
            alerts.start()
            telemetry.start()
            probe = Probe(port)
            try:
                _warm_up(probe, alerts, home)
                simulate = _gateway(
                    "simulate", "--broker-port", str(port), "--trains", str(load),
                    "--rate-hz", "1",
                )  # fmt: skip
                with _process(simulate, home / "simulate.log") as sim:
                    time.sleep(SETTLE_S)
                    return _measure(case, probe, alerts, telemetry, [broker, br, service, sim])
            finally:
                probe.close()
                alerts.stop()
                telemetry.stop()


def _measure(
    case: Case,
    probe: Probe,
    alerts: Tap,
    telemetry: Tap,
    procs: list[psutil.Process],
) -> dict[str, object]:
    cpu0 = [_cpu_s(p) for p in procs]
    machine0 = psutil.cpu_times()
    count0, alerts0, t0 = telemetry.count, alerts.count, time.time()
    sent: dict[str, float] = {}
    start = time.monotonic()
    for n in range(PROBES):
        time.sleep(max(0.0, start + n * PROBE_INTERVAL_S - time.monotonic()))
        train = f"P{n:04d}"
        sent[train] = probe.publish(train)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(_firing(alerts, t) for t in sent):
        time.sleep(0.1)
    wall = time.time() - t0
    cpu = [100 * (_cpu_s(p) - c) / wall for p, c in zip(procs, cpu0, strict=True)]
    machine1 = psutil.cpu_times()
    busy = sum(machine1) - sum(machine0) - (machine1.idle - machine0.idle)
    total, stage_bridge, stage_service, stage_commit = [], [], [], []
    for train, published in sent.items():
        if not _firing(alerts, train):
            continue
        arrived, alert_ms, _ = alerts.seen[_alert_key(train)]
        total.append(1000 * (arrived - published))
        stage_commit.append(1000 * arrived - alert_ms)
        if train in telemetry.seen:
            bridged_ms = telemetry.seen[train][1]
            stage_bridge.append(bridged_ms - 1000 * published)
            stage_service.append(float(alert_ms - bridged_ms))
    if not total:
        raise BenchmarkError(f"{case.name}: no probe came back as an alert")
    ordered = sorted(total)
    return {
        "broker": case.broker,
        "load/s": case.load,
        "alert service": " ".join(f"{k}={v}" for k, v in case.alert_settings) or "defaults",
        "in Kafka/s": (telemetry.count - count0) / wall,
        "alerts": f"{len(total)}/{len(sent)}",
        "other alerts": alerts.count - alerts0 - len(total),
        "p50 ms": statistics.median(ordered),
        "p95 ms": _percentile(ordered, 0.95),
        "p99 ms": _percentile(ordered, 0.99),
        "max ms": ordered[-1],
        **_stage("to bridge", stage_bridge),
        **_stage("to alert", stage_service),
        **_stage("to reader", stage_commit),
        "broker CPU %": cpu[0],
        "bridge CPU %": cpu[1],
        "alerts CPU %": cpu[2],
        "load CPU %": cpu[3],
        "machine CPU %": 100 * busy / (sum(machine1) - sum(machine0)),
        "bridge MiB": procs[1].memory_info().rss / 2**20,
        "alerts MiB": procs[2].memory_info().rss / 2**20,
    }


def main() -> None:
    """One row per case."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-alert-latency-") as tmp:
        home = Path(tmp)
        with kafka_cluster(home / "kafka") as bootstrap:
            for case in CASES:
                rows.append(_row(case, bootstrap, home / case.name))
    os.environ.setdefault("COLUMNS", "240")  # rich squeezes the wide table to 80 columns in a pipe
    report(
        "alert_latency",
        "Device PUBLISH of a threshold crossing -> alert readable with read_committed",
        rows,
        notes=(
            f"{PROBES} probes per row, one every {PROBE_INTERVAL_S * 1000:.0f} ms, each a fresh "
            f"train crossing {RULE} (no `for`). Stages (ms): to bridge = PUBLISH -> the "
            "bridge's Kafka produce; to alert = that -> the alert service's produce in its "
            "transaction; to reader = that -> commit and read_committed fetch. CPU % of one "
            "core over the probe window; machine CPU % of all "
            f"{os.cpu_count()} cores. Broker, bridge, alert service, load generator, Kafka "
            "and this reader share the machine. Target: p99 < 500 ms."
        ),
    )


if __name__ == "__main__":
    main()
