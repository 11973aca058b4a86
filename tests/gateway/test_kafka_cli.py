"""`trackside kafka up --brokers 3`, `status` and `down` as a person runs them: three real
nodes in the background, each seen by `status`, a killed one reported, all stopped by `down`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli.kafka import cluster_ports
from gateway.localkafka import KAFKA_VERSION, cache_dir, process_alive
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.integration


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _base_port() -> int:
    """A client port whose cluster's six ports (client and controller of three nodes) are free."""
    for base in range(30092, 40000, 7):
        if all(_free(p) for pair in cluster_ports(base, base + 1, 3) for p in pair):
            return base
    raise AssertionError("no free ports for a three-node cluster between 30092 and 40000")


def test_cluster_up_status_down(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    # The jars the session already resolved; the cluster's files in this test's own cache.
    jars = cache_dir() / f"kafka-{KAFKA_VERSION}"
    (cache / jars.name).symlink_to(jars)
    env = {**os.environ, "TRACKSIDE_CACHE": str(cache)}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    port = _base_port()

    def trackside(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "kafka", *args],
            env={**env, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )

    up = trackside("up", "--brokers", "3", "--port", str(port), "--controller-port", str(port + 1))
    pids: list[int] = []
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"127.0.0.1:{port},127.0.0.1:{port + 100},127.0.0.1:{port + 200}" in up.stdout
        pids = json.loads((cache / "run" / "kafka.json").read_text())["pids"]
        assert len(pids) == 3

        status = trackside("status")
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("serving") == 3
        assert "all brokers serve; active controller: node " in status.stdout

        os.kill(pids[1], signal.SIGKILL)
        wait_until(lambda: not process_alive(pids[1]), 30, "node 2's process gone")
        status = trackside("status")
        assert status.returncode == 1, status.stdout
        assert "stopped" in status.stdout
        assert "not every broker serves" in status.stdout
    finally:
        down = trackside("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not [pid for pid in pids if process_alive(pid)]
    assert trackside("status").returncode == 1
