"""Embedded broker path: devices -> MQTT QoS 1 -> `trackside gateway run` -> Kafka, durable acks.

Run: `python -m benchmarks.embedded [--connections 50] [--window 10] [--seconds 15]
[--rate 2000] [--repeat 2] [--baseline REV]`.
Uses KAFKA_BOOTSTRAP_SERVERS or starts a private Kafka. Contenders, each on a fresh Kafka topic,
one after the other and repeated in turns (so a busy machine hurts each of them alike):

- `gateway`: `trackside gateway run` with the embedded broker and one telemetry connector; a
  device's PUBACK is sent once its reading is in Kafka (acks=all) or the fsync'd spool;
- `gateway @REV` (with `--baseline REV`): the same command from the project as committed at REV
  (`git archive`), to compare before and after a change in one run;
- `broker + bridge`: the path before the in-process intake, `trackside broker run` (amqtt,
  PUBACK on receipt) and `trackside bridge run` subscribing to it over MQTT; CPU and memory are
  the two processes' sum. With `--baseline REV` it runs as committed at REV too.

The devices are paho-mqtt clients (a library the project did not write), one connection per
device, in their own process: MQTT 3.1.1, QoS 1, clean sessions, at most `--window` PUBLISHes
in flight per connection (a device on micropython-lib's umqtt has 1). paho costs about as much
CPU per reading as the gateway does, so on a small machine it limits the throughput leg:
`--publisher raw` drives that leg from raw sockets instead (the way benchmarks/mqtt_load.py
writes packets; same devices, topics, readings and windows). Two legs per contender:

1. throughput: every device publishes its next reading as soon as its window has room, for
   `--seconds` after a ramp of 3 s; readings/s counts PUBACKs. The gateway's CPU seconds over
   the same span (psutil) give CPU-s per 10,000 readings and readings/s per core.
2. latency: `--rate` readings/s over all devices together, paced, for `--seconds`; PUBACK
   latency = PUBACK received - PUBLISH handed to paho, per reading.

Kafka must hold at least as many records as PUBACKs were received ('lost' counts the shortfall;
a reading sent again after a stop may be there twice, never missing).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.bridge import Kafka, Sampler
from benchmarks.mqtt_load import VALUES
from benchmarks.report import report
from benchmarks.services import child, kafka_cluster, wait_for_port
from bridge.mqtt_source import encode_length, encode_string
from firmware import wire
from gateway.localkafka import free_port

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
PER_TRAIN = 10  # devices per train
RAMP_S = 3.0  # the throughput leg measures after this long
READY_S = 90.0


# -- the devices (a process of their own) ----------------------------------------------------


def _topic(device: int) -> str:
    return f"trackside/v1/T{device // PER_TRAIN}/{device}/telemetry"


@dataclass
class Devices:
    """`connections` paho clients, one device each, publishing wire-format readings at QoS 1."""

    port: int
    connections: int
    window: int
    clients: list[mqtt.Client] = field(default_factory=list)
    sent: list[dict[int, float]] = field(default_factory=list)  # per device: mid -> publish time
    acked: list[dict[int, float]] = field(default_factory=list)  # per device: mid -> PUBACK time
    seq: list[int] = field(default_factory=list)
    closed_loop: bool = False
    boot_id: int = 1

    def connect(self) -> None:
        for device in range(self.connections):
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=f"bench-{uuid.uuid4().hex[:6]}-{device}",
                protocol=mqtt.MQTTv311,
                userdata=device,
            )
            client.max_inflight_messages_set(self.window)
            client.on_publish = self._on_publish
            client.connect("127.0.0.1", self.port, keepalive=60)
            client.loop_start()
            self.clients.append(client)
            self.sent.append({})
            self.acked.append({})
            self.seq.append(0)
        deadline = time.monotonic() + 30
        while not all(c.is_connected() for c in self.clients):
            if time.monotonic() > deadline:
                raise ConnectionError("the devices could not connect within 30 s")
            time.sleep(0.05)

    def publish(self, device: int) -> None:
        seq = self.seq[device]
        self.seq[device] = seq + 1
        payload = wire.encode(device, self.boot_id, seq, int(time.time() * 1000), VALUES)
        sent = time.monotonic()
        info = self.clients[device].publish(_topic(device), payload, qos=1)
        self.sent[device][info.mid] = sent

    def _on_publish(self, client: mqtt.Client, device: int, mid: int, *_: Any) -> None:
        self.acked[device][mid] = time.monotonic()
        if self.closed_loop:
            self.publish(device)

    def acked_count(self) -> int:
        return sum(len(a) for a in self.acked)

    def reset(self) -> None:
        for sent, acked in zip(self.sent, self.acked, strict=True):
            sent.clear()
            acked.clear()

    def close(self) -> None:
        self.closed_loop = False
        for client in self.clients:
            client.disconnect()
            client.loop_stop()


class RawDevices:
    """The same devices as raw MQTT 3.1.1 sockets in one thread (benchmarks/mqtt_load.py's way
    of writing packets): several times cheaper than paho, for when paho is the bottleneck."""

    def __init__(self, port: int, connections: int, window: int) -> None:
        self.window = window
        self.selector = selectors.DefaultSelector()
        self.topics: list[bytes] = []
        self.sent = [0] * connections
        self.acked_bytes = [0] * connections
        for device in range(connections):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            body = encode_string("MQTT") + bytes([4, 0x02]) + struct.pack(">H", 60)
            body += encode_string(f"bench-raw-{uuid.uuid4().hex[:6]}-{device}")
            sock.sendall(b"\x10" + encode_length(len(body)) + body)
            if sock.recv(4) != b"\x20\x02\x00\x00":
                raise ConnectionError("the broker refused a benchmark device")
            self.selector.register(sock, selectors.EVENT_READ, device)
            self.topics.append(encode_string(_topic(device)))

    def acked(self) -> int:
        return sum(self.acked_bytes) // 4  # only 4-byte PUBACKs come back

    def _send(self, sock: socket.socket, device: int, count: int) -> None:
        out = bytearray()
        topic, ts_ms = self.topics[device], int(time.time() * 1000)
        for seq in range(self.sent[device], self.sent[device] + count):
            payload = wire.encode(device, 1, seq, ts_ms, VALUES)
            out += b"\x32" + encode_length(len(topic) + 2 + len(payload))
            out += topic + struct.pack(">H", seq % 65535 + 1) + payload
        self.sent[device] += count
        sock.sendall(out)

    def run(self, seconds: float) -> None:
        """Keep every device's window full for `seconds`; then wait for the last PUBACKs."""
        for key in self.selector.get_map().values():
            self._send(key.fileobj, key.data, self.window)  # type: ignore[arg-type]
        deadline, stop_at = time.monotonic() + seconds, time.monotonic() + seconds + 60
        while time.monotonic() < stop_at:
            for key, _ in self.selector.select(0.1):
                sock, device = key.fileobj, key.data
                self.acked_bytes[device] += len(sock.recv(65536))  # type: ignore[union-attr]
                in_flight = self.sent[device] - self.acked_bytes[device] // 4
                if time.monotonic() < deadline and in_flight < self.window:
                    self._send(sock, device, self.window - in_flight)  # type: ignore[arg-type]
            if time.monotonic() >= deadline and self.acked() >= sum(self.sent):
                break
        for key in list(self.selector.get_map().values()):
            key.fileobj.sendall(b"\xe0\x00")  # type: ignore[union-attr]
            key.fileobj.close()  # type: ignore[union-attr]


def _raw_throughput(port: int, args: dict[str, Any], out: dict[str, Any]) -> int:
    devices = RawDevices(port, args["connections"], args["window"])
    marks: list[tuple[float, int]] = []

    def mark() -> None:
        time.sleep(RAMP_S)
        marks.append((time.time(), devices.acked()))
        time.sleep(args["seconds"])
        marks.append((time.time(), devices.acked()))

    marker = threading.Thread(target=mark)
    marker.start()
    devices.run(RAMP_S + args["seconds"] + 0.5)
    marker.join()
    (t0, acked0), (t1, acked1) = marks
    out["throughput"] = {"start": t0, "end": t1, "acked": acked1 - acked0}
    return devices.acked()


def _devices_main(port: int, args: dict[str, Any], results: Any) -> None:
    """The devices' process: the throughput leg, then the latency leg."""
    out: dict[str, Any] = {}
    total = 0
    if args["publisher"] == "raw":
        total = _raw_throughput(port, args, out)
    devices = Devices(port, args["connections"], args["window"])
    devices.connect()
    if args["publisher"] == "paho":
        # Throughput: each device keeps its window full (one publish per PUBACK).
        devices.closed_loop = True
        for device in range(devices.connections):
            for _ in range(devices.window):
                devices.publish(device)
        time.sleep(RAMP_S)
        acked0, t0 = devices.acked_count(), time.time()
        time.sleep(args["seconds"])
        acked1, t1 = devices.acked_count(), time.time()
        devices.closed_loop = False
        out["throughput"] = {"start": t0, "end": t1, "acked": acked1 - acked0}
        _wait_all_acked(devices, 60)
        total = devices.acked_count()
    # Latency: `rate` readings/s over all devices, sent every 5 ms as they fall due.
    devices.reset()
    rate, seconds = args["rate"], args["seconds"]
    start, done, device = time.monotonic(), 0, 0
    t0 = time.time()
    while done < rate * seconds:
        due = min(int(rate * seconds), int(rate * (time.monotonic() - start)))
        while done < due:
            devices.publish(device)
            device = (device + 1) % devices.connections
            done += 1
        time.sleep(0.005)
    t1 = time.time()
    _wait_all_acked(devices, 60)
    latencies = sorted(
        1000 * (acked[mid] - sent[mid])
        for sent, acked in zip(devices.sent, devices.acked, strict=True)
        for mid in sent
        if mid in acked
    )
    out["latency"] = {"start": t0, "end": t1, "ms": latencies, "sent": done}
    out["acked_total"] = total + devices.acked_count()
    devices.close()
    results.put(out)


def _wait_all_acked(devices: Devices, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(a) >= len(s) for s, a in zip(devices.sent, devices.acked, strict=True)):
            return
        time.sleep(0.05)


# -- the contenders ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Leg:
    """One contender's run: its MQTT port, Kafka topic and folder."""

    bootstrap: str
    home: Path
    topic: str = field(default_factory=lambda: f"bench-embedded-{uuid.uuid4().hex[:8]}")
    port: int = field(default_factory=free_port)

    def connector(self, **mqtt_settings: Any) -> dict[str, Any]:
        return {
            "name": "telemetry",
            "mqtt": mqtt_settings,
            "kafka": {"bootstrap_servers": self.bootstrap, "topic": self.topic},
            "errors": {"deadletterqueue_topic_name": f"{self.topic}.dead-letter"},
            "spool": {"path": str(self.home / f"{self.topic}.spool")},
        }


def _gateway_argv(leg: Leg) -> list[str]:
    config = {"broker": {"port": leg.port}, "connectors": [leg.connector()], "http": {"port": 0}}
    path = leg.home / f"{leg.topic}.gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "gateway", "gateway", "run", "-c", str(path)]


@contextmanager
def _gateway(leg: Leg, tree: Path) -> Iterator[list[psutil.Process]]:
    with child(_gateway_argv(leg), leg.home / f"{leg.topic}.log", cwd=tree) as proc:
        yield [psutil.Process(proc.pid)]


@contextmanager
def _broker_and_bridge(leg: Leg, tree: Path) -> Iterator[list[psutil.Process]]:
    broker_argv = [sys.executable, "-m", "gateway", "broker", "run", "--port", str(leg.port)]
    bridge_config = leg.connector(
        port=leg.port, protocol="3.1.1", client_id=f"{leg.topic}-bridge"
    )  # amqtt speaks MQTT 3.1.1 only
    path = leg.home / f"{leg.topic}.bridge.yaml"
    path.write_text(yaml.safe_dump(bridge_config))
    bridge_argv = [sys.executable, "-m", "gateway", "bridge", "run", "-c", str(path)]
    with ExitStack() as stack:
        broker = stack.enter_context(child(broker_argv, leg.home / f"{leg.topic}.broker.log", tree))
        wait_for_port(leg.port, READY_S, broker)
        bridge = stack.enter_context(child(bridge_argv, leg.home / f"{leg.topic}.log", tree))
        yield [psutil.Process(broker.pid), psutil.Process(bridge.pid)]


@dataclass(frozen=True)
class Contender:
    name: str
    puback: str
    tree: Path
    two_processes: bool = False

    @contextmanager
    def running(self, leg: Leg) -> Iterator[list[psutil.Process]]:
        start = _broker_and_bridge if self.two_processes else _gateway
        with start(leg, self.tree) as processes:
            yield processes


def _warm_up(kafka: Kafka, leg: Leg, processes: list[psutil.Process]) -> None:
    """Publish single readings until one reaches Kafka: the whole path is open."""
    deadline = time.monotonic() + READY_S
    wait_for_port(leg.port, READY_S)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"warm-{leg.topic}")
    client.connect("127.0.0.1", leg.port)
    client.loop_start()
    try:
        payload = wire.encode(0, 0, 0, int(time.time() * 1000), VALUES)
        while kafka.size(leg.topic) == 0:
            if time.monotonic() > deadline or not all(p.is_running() for p in processes):
                raise RuntimeError(f"the path to Kafka did not open; see {leg.home}")
            client.publish("trackside/v1/T0/0/telemetry", payload, qos=1)
            time.sleep(0.2)
    finally:
        client.disconnect()
        client.loop_stop()


def _cpu_s(samplers: list[Sampler], start: float, end: float) -> float | None:
    total = 0.0
    for sampler in samplers:
        inside = [s for s in sampler.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return None
        total += (inside[-1][1] - inside[0][1]) * (end - start) / (inside[-1][0] - inside[0][0])
    return total


def run_leg(
    kafka: Kafka, contender: Contender, bootstrap: str, home: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Both legs for one contender; one row of the table."""
    leg = Leg(bootstrap, home)
    kafka.create(leg.topic)
    load = os.getloadavg()[0]
    with contender.running(leg) as processes:
        samplers = [Sampler(p) for p in processes]
        _warm_up(kafka, leg, processes)
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        options = {
            k: getattr(args, k) for k in ("connections", "window", "seconds", "rate", "publisher")
        }
        devices = context.Process(target=_devices_main, args=(leg.port, options, results))
        devices.start()
        device_sampler = Sampler(psutil.Process(devices.pid))
        out = results.get(timeout=args.seconds * 4 + 240)
        devices.join(30)
        device_sampler.stop()
        kafka.wait_for(leg.topic, out["acked_total"])
        for sampler in samplers:
            sampler.stop()
    size = kafka.size(leg.topic) - 1  # the warm-up readings are at least one
    busy, paced = out["throughput"], out["latency"]
    span = busy["end"] - busy["start"]
    rate = busy["acked"] / span
    cpu = _cpu_s(samplers, busy["start"], busy["end"])
    device_cpu = _cpu_s([device_sampler], busy["start"], busy["end"])
    paced_cpu = _cpu_s(samplers, paced["start"], paced["end"])
    ms = paced["ms"]

    def pct(q: float) -> float | None:
        return ms[min(len(ms) - 1, int(q * len(ms)))] if ms else None

    rated = f"@{args.rate / 1000:g}k/s"
    return {
        "path": contender.name,
        "PUBACK sent": contender.puback,
        "readings/s": rate,
        "CPU %": 100 * cpu / span if cpu is not None else None,
        "CPU-s /10k": 10_000 * cpu / busy["acked"] if cpu else None,
        "readings/s per core": busy["acked"] / cpu if cpu else None,
        f"p50 ms {rated}": pct(0.50),
        f"p99 ms {rated}": pct(0.99),
        f"CPU % {rated}": (
            100 * paced_cpu / (paced["end"] - paced["start"]) if paced_cpu is not None else None
        ),
        "peak RSS MiB": sum(s.peak_rss_mib for s in samplers),
        "lost": max(0, out["acked_total"] - size),
        "devices CPU %": 100 * device_cpu / span if device_cpu is not None else None,
        "load": load,
    }


def _baseline_tree(rev: str, home: Path) -> Path:
    """The project as committed at `rev`, unpacked into a folder of its own."""
    tree = home / f"tree-{rev}"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=50, help="devices, one connection each")
    parser.add_argument("--window", type=int, default=10, help="PUBLISHes in flight per device")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each leg")
    parser.add_argument("--rate", type=float, default=2_000, help="readings/s, latency leg")
    parser.add_argument(
        "--publisher", choices=["paho", "raw"], default="paho",
        help="devices of the throughput leg: paho clients, or raw sockets (cheaper)",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=2, help="rounds over all contenders")
    parser.add_argument("--baseline", help="also run the gateway as committed at this git rev")
    parser.add_argument("--logs", type=Path, help="keep the processes' logs in this folder")
    parser.add_argument(
        "--only", action="append", choices=["gateway", "baseline", "broker"],
        help="run only these contenders (repeatable)",
    )  # fmt: skip
    return parser.parse_args()


def main() -> None:
    """Start Kafka, run every contender through both legs, in turns, and report."""
    args = _arguments()
    rows: list[dict[str, Any]] = []
    start_load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-embedded-") as tmp:
        home = Path(tmp)
        (home / "kafka").mkdir()
        tree, at = ROOT, ""
        if args.baseline:
            tree, at = _baseline_tree(args.baseline, home), f" @{args.baseline}"
        contenders = {
            "gateway": Contender("gateway (embedded)", "after Kafka/spool", ROOT),
            "baseline": Contender(f"gateway{at}", "after Kafka/spool", tree),
            "broker": Contender(
                f"broker + bridge{at} (amqtt, MQTT)", "on receipt", tree, two_processes=True
            ),
        }
        if not args.baseline:
            del contenders["baseline"]
        chosen = [c for key, c in contenders.items() if not args.only or key in args.only]
        with kafka_cluster(home / "kafka") as bootstrap:
            kafka = Kafka(bootstrap)
            for round_ in range(args.repeat):
                for contender in chosen:
                    row = run_leg(kafka, contender, bootstrap, home, args)
                    rows.append({"run": round_ + 1, **row})
            kafka.close()
        if args.logs:
            for log in home.glob("*.log"):
                args.logs.mkdir(parents=True, exist_ok=True)
                shutil.copy(log, args.logs / log.name)
    report(
        "embedded",
        f"Embedded broker path: {args.connections} devices (QoS 1, window {args.window}, "
        f"{args.publisher} for throughput, paho for latency) -> Kafka acks=all; "
        f"throughput for {args.seconds:g} s, latency at {args.rate:,.0f}/s",
        rows,
        notes="CPU % and RSS are the gateway's (broker + bridge: both processes); 100 % = one "
        "core. readings/s per core = readings / CPU seconds over the throughput leg. The devices "
        "(paho) run in their own process on the same cores ('devices CPU %'). 'load' is the "
        f"1-minute load average at the start of each leg; at the start of the run: "
        f"{start_load[0]:.1f} on {os.cpu_count()} cores.",
    )


if __name__ == "__main__":
    main()
