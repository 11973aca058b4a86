"""`trackside demo`: its port probe, and that closing the terminal still stops its Kafka."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import GatewayError
from gateway.demo import check_free
from tests.fixtures.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _listener() -> socket.socket:
    """A server socket on a free port, bound as asyncio and aiohttp bind theirs."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server


def _plain_bind_fails(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def test_a_port_left_in_time_wait_by_the_last_demo_is_free() -> None:
    server = _listener()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()  # the server closes first, so its side of the connection waits in TIME_WAIT
    client.close()
    server.close()
    # What the demo met a few seconds after the last one: a bind without SO_REUSEADDR fails.
    wait_until(lambda: _plain_bind_fails(port), 10.0, "the connection to enter TIME_WAIT")
    check_free(port, "--dashboard-port")  # no error: the dashboard can bind it


def test_a_port_something_listens_on_is_in_use() -> None:
    with _listener() as server:
        port = server.getsockname()[1]
        with pytest.raises(GatewayError, match=f"port {port} is in use.*--mqtt-port"):
            check_free(port, "--mqtt-port")


# The demo with stand-ins for Kafka (a process in its own session, as Kafka runs), the gateway
# and the fleet: enough to see what a signal does to the demo and to its Kafka.
DEMO_WITH_STAND_INS = """
import asyncio, contextlib, subprocess, sys
from pathlib import Path
from rich.console import Console
from gateway import demo
from gateway.localkafka import free_port

class StandInKafka:
    bootstrap_servers = "127.0.0.1:9"
    def start(self, timeout, detach):
        proc = subprocess.Popen(["sleep", "300"], start_new_session=detach)
        print("KAFKA", proc.pid, flush=True)
        return proc

async def run_gateway(config, on_ready, stop):
    on_ready("HTTP control on stand-in")
    await stop.wait()

@contextlib.asynccontextmanager
async def fleet(spec, address):
    print("RUNNING", flush=True)
    yield

demo.resolve_jars = lambda: None
demo.LocalKafka.on_free_ports = staticmethod(lambda home: StandInKafka())
demo.run_gateway = run_gateway
demo.ensure_topics = lambda bootstrap_servers, topics: []
demo.FastFleet = fleet
ports = free_port(), free_port()
asyncio.run(demo._demo(Console(file=sys.stdout), Path(sys.argv[1]), *ports))
print("STOPPED", flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has stopped


@pytest.fixture
def stand_in_kafka_pids() -> Iterator[list[int]]:
    """Stand-in Kafka processes the test saw; killed afterwards if the demo left them."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    "sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT], ids=["SIGHUP", "SIGTERM", "SIGINT"]
)
def test_a_stop_signal_or_closing_the_terminal_stops_the_demos_kafka(
    sig: signal.Signals, tmp_path: Path, stand_in_kafka_pids: list[int]
) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-c", DEMO_WITH_STAND_INS, str(tmp_path / "demo")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert demo.stdout is not None
        lines: list[str] = []
        for line in demo.stdout:  # until the demo runs, its signal handlers set
            lines.append(line)
            if line.startswith("KAFKA "):
                stand_in_kafka_pids.append(int(line.split()[1]))
            if line.startswith("RUNNING"):
                break
        assert lines and lines[-1].startswith("RUNNING"), "".join(lines)
        demo.send_signal(sig)
        output, _ = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, output
    assert "STOPPED" in output
    (pid,) = stand_in_kafka_pids
    wait_until(lambda: not _alive(pid), 10.0, "the demo to stop its Kafka")
