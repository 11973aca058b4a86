"""What every benchmark starts: Kafka (or the cluster in KAFKA_BOOTSTRAP_SERVERS) and child
processes that are stopped with SIGTERM (then SIGKILL) when the benchmark is done with them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.localkafka import LocalKafka, stop_pid

__all__ = ["child", "kafka_cluster", "wait_for_port"]

STOP_S = 60  # a drained bridge or alert service exits well within this after SIGTERM


@contextmanager
def kafka_cluster(home: Path) -> Iterator[str]:
    """KAFKA_BOOTSTRAP_SERVERS, or a private broker for the duration of the benchmark."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    broker = LocalKafka.on_free_ports(home, heap="1g")
    proc = broker.start()
    try:
        yield broker.bootstrap_servers
    finally:
        stop_pid(proc.pid)


@contextmanager
def child(argv: list[str], log: Path, cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` as a child process writing to `log`; SIGTERM (then SIGKILL) afterwards."""
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_for_port(
    port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None, host: str = "127.0.0.1"
) -> None:
    """Wait until something accepts connections on `port` (and `proc`, if given, still runs)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), 1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
                raise
            time.sleep(0.1)
