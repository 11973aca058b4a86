"""Alert service scale-out: readings/s with 1, 2 and 3 instances, CPU per reading, restore
time per partition and the pause a rebalance makes.

Run: `python -m benchmarks.alerts_scale`. Uses KAFKA_BOOTSTRAP_SERVERS or starts a private
Kafka. For each instance count: a fresh topic set with `PARTITIONS` partitions, a backlog of
`BACKLOG` readings of `TRAINS` trains (default rules, 7-channel readings, keys hashed with
murmur2 as the bridge does), then N `trackside alerts run` processes of one group. Throughput
is counted by the group's committed offsets; CPU is each process's user+system time over the
same span (from /proc), so imports and start-up are not in it. After the 1-instance run a
second instance joins the loaded group: its log says how long the join and the restore of the
partitions it took lasted, and how many states it restored. On a machine with fewer cores
than instances the instances share them: CPU-seconds per million readings is the number that
carries to bigger machines.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from benchmarks.alerts import write_backlog
from benchmarks.report import report
from benchmarks.services import child, kafka_cluster
from gateway.alerts.partitioning import PARTITIONER
from gateway.topics import Topics, create_topics

__all__ = ["main"]

PARTITIONS = 6
TRAINS = 1_000
BACKLOG = 120_000
INSTANCES = (1, 2, 3)
_TICKS = os.sysconf("SC_CLK_TCK")
_TOOK = re.compile(
    r"took partitions \[([\d, ]+)\]: restored (\d+) rule states, (\d+) devices, \d+ flags "
    r"in ([\d.]+) s"
)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _backlog(bootstrap: str, topics: Topics) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    create_topics(admin, topics, set(), partitions=PARTITIONS)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "partitioner": PARTITIONER}
    )
    write_backlog(producer, topics.telemetry, BACKLOG, TRAINS)


@contextmanager
def _instances(
    bootstrap: str, prefix: str, folder: Path, count: int, first: int = 0
) -> Iterator[list[int]]:
    """`count` `trackside alerts run` processes of the group of `prefix`; their pids."""
    with ExitStack() as stack:
        pids = []
        for n in range(first, first + count):
            argv = [sys.executable, "-m", "gateway", "alerts", "run", "-v",
                    "--bootstrap-servers", bootstrap, "--topic-prefix", prefix,
                    "--group-id", f"{prefix}-alerts", "--transactional-id", f"{prefix}-{n}",
                    "--partitions", str(PARTITIONS)]  # fmt: skip
            proc = stack.enter_context(child(argv, folder / f"{prefix}-{n}.log"))
            pids.append(proc.pid)
        yield pids


def _committed(probe: Consumer, topics: Topics) -> int:
    partitions = [TopicPartition(topics.telemetry, p) for p in range(PARTITIONS)]
    try:
        return sum(max(tp.offset, 0) for tp in probe.committed(partitions, timeout=10))
    except KafkaException:  # the group coordinator is still being elected
        return 0


def scale(bootstrap: str, folder: Path, count: int) -> dict[str, Any]:
    """Readings/s and CPU of `count` instances over a fresh backlog."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    topics = Topics.with_prefix(prefix)
    _backlog(bootstrap, topics)
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{prefix}-alerts"})
    try:
        with _instances(bootstrap, prefix, folder, count) as pids:
            start: tuple[float, int, float] | None = None
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                time.sleep(0.05)
                done = _committed(probe, topics)
                now = time.monotonic()
                if done > 0 and start is None:
                    start = (now, done, sum(_cpu_s(pid) for pid in pids))
                if done >= BACKLOG and start is not None:
                    cpu = sum(_cpu_s(pid) for pid in pids) - start[2]
                    readings = BACKLOG - start[1]
                    row = {
                        "instances": count,
                        "readings/s": readings / (now - start[0]),
                        "CPU-s per 1M readings": cpu / readings * 1e6,
                        "readings/s per busy core": readings / cpu,
                    }
                    if count == 1:
                        row.update(_join(bootstrap, prefix, folder))
                    return row
    finally:
        probe.close()
    raise RuntimeError(f"{count} instances did not finish the backlog in 900 s; see {folder}")


def _join(bootstrap: str, prefix: str, folder: Path) -> dict[str, Any]:
    """A second instance joins the group of the loaded first: from its log, how long the
    rebalance took (running -> partitions taken, less the restore) and the restore itself."""
    log = folder / f"{prefix}-1.log"
    with _instances(bootstrap, prefix, folder, 1, first=1):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            took = _TOOK.search(text)
            if took:
                running = _when(text, "alert service running")
                restore_s = float(took.group(4))
                return {
                    "partitions taken": len(took.group(1).split(",")),
                    "states restored": int(took.group(2)) + int(took.group(3)),
                    "restore s": restore_s,
                    "rebalance s": round(_when(text, "took partitions") - running - restore_s, 2),
                }
            time.sleep(0.1)
    raise RuntimeError(f"the second instance took no partitions in 120 s; see {log}")


def _when(log: str, text: str) -> float:
    """The time of the first log line with `text`, in seconds."""
    line = next(line for line in log.splitlines() if text in line)
    stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def main() -> None:
    """Run the three instance counts and report them."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-alerts-scale-") as tmp:
        home = Path(tmp)
        with kafka_cluster(home / "kafka") as bootstrap:
            for count in INSTANCES:
                rows.append(scale(bootstrap, home, count))
    report(
        "alerts_scale",
        "Alert service scale-out: readings/s by instance count, CPU per reading, restore",
        rows,
        notes=(
            f"{PARTITIONS} partitions, default rules (9), {TRAINS} trains, {BACKLOG} readings "
            f"of 7 channels per run. This machine has {os.cpu_count()} cores shared by Kafka, "
            "the instances and this harness: more instances than free cores cannot add "
            "readings/s here; CPU-s per 1M readings carries to bigger machines."
        ),
    )


if __name__ == "__main__":
    main()
