"""The fault suite's services: the gateway and the bridge as child processes (their health,
status and metrics read over HTTP), a Kafka that starts later, a small filesystem, and the
check that every reading paho saw acknowledged reached Kafka."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import urlopen

import yaml

from gateway.localkafka import free_port
from tests.faults.ledger import AckLedger, KafkaTally, assert_acknowledged_in_kafka
from tests.fixtures.mqtt import BrokerHandle
from tests.fixtures.processes import LOG_ROOT, ServiceProcess
from tests.fixtures.waiting import wait_until

__all__ = [
    "Bridge",
    "Gateway",
    "Names",
    "assert_none_lost",
    "librdkafka_lines",
    "resize_filesystem",
    "small_filesystem",
]

# librdkafka's own log lines: `%3|1764540000.123|FAIL|rdkafka#producer-1| ...`
_LIBRDKAFKA_LINE = re.compile(r"^%\d\|\d+\.\d+\|", re.MULTILINE)


class Names:
    """Kafka topics of one test: telemetry, dead letters, commands."""

    def __init__(self) -> None:
        self.prefix = f"faults-{uuid.uuid4().hex[:8]}"
        self.telemetry = f"{self.prefix}.telemetry"
        self.dead_letter = f"{self.prefix}.dead-letter"
        self.commands = f"{self.prefix}.commands"


def _connector(
    names: Names, bootstrap: str, spool: Path, broker: BrokerHandle | None, **extra: Any
) -> dict[str, Any]:
    """A telemetry connector on the default topics: the embedded broker's (None) or `broker`."""
    config: dict[str, Any] = {
        "name": "telemetry",
        "kafka": {"bootstrap_servers": bootstrap, "topic": names.telemetry},
        "errors": {"deadletterqueue_topic_name": names.dead_letter},
        "spool": {"path": str(spool), "delivery_timeout_ms": 5000},
    }
    if broker is not None:
        config["mqtt"] = {
            "host": broker.host,
            "port": broker.port,
            "protocol": "5",
            "client_id": f"bridge-{names.prefix}",
        }
    config.update(extra)
    return config


def _log_file(kind: str) -> Path:
    return LOG_ROOT / f"{kind}-{uuid.uuid4().hex[:6]}" / f"{kind}.log"


class _Http:
    """GET a JSON or text answer from a service's HTTP port."""

    http_port: int

    def get(self, path: str) -> tuple[int, Any]:
        """Status code and decoded JSON of GET `path`."""
        try:
            with urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def metric(self, name: str) -> float:
        """The value of one Prometheus sample of the telemetry connector, 0 if absent."""
        with urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        sample = re.search(rf'^{name}{{connector="telemetry"}} (\S+)$', text, re.MULTILINE)
        return float(sample[1]) if sample else 0.0


class Gateway(ServiceProcess, _Http):
    """`trackside gateway run` with one telemetry connector and HTTP control; devices publish
    to `.mqtt_host`/`.mqtt_port`: the embedded broker, or `broker` (Mosquitto) if given."""

    def __init__(
        self,
        tmp: Path,
        names: Names,
        bootstrap: str,
        broker: BrokerHandle | None = None,
        spool: Path | None = None,
        launcher: list[str] | None = None,
        **connector: Any,
    ) -> None:
        """`launcher` replaces `python -m gateway gateway run -c` (the file's path follows)."""
        self.http_port = free_port()
        config: dict[str, Any] = {
            "connectors": [
                _connector(names, bootstrap, spool or tmp / "spool", broker, **connector)
            ],
            "http": {"port": self.http_port},
        }
        if broker is None:
            self.mqtt_host, self.mqtt_port = "127.0.0.1", free_port()
            config["broker"] = {"port": self.mqtt_port}
        else:
            self.mqtt_host, self.mqtt_port = broker.host, broker.port
            config["broker"] = {"enabled": False}
        path = tmp / f"gateway-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(config))
        argv = [*(launcher or [sys.executable, "-m", "gateway", "gateway", "run", "-c"]), str(path)]
        # Listening on the HTTP port means everything else runs: it comes up last.
        super().__init__("gateway", argv, "127.0.0.1", self.http_port, _log_file("gateway"))

    def exit_code(self) -> int | None:
        """The exit status once the process ended, else None."""
        return self._proc.poll() if self._proc is not None else None


class Bridge(ServiceProcess, _Http):
    """`trackside bridge run` against Mosquitto (persistent session) with metrics on HTTP."""

    def __init__(self, tmp: Path, names: Names, bootstrap: str, broker: BrokerHandle) -> None:
        self.http_port = free_port()
        self.spool = tmp / "spool"
        self.config = tmp / f"bridge-{uuid.uuid4().hex[:6]}.yaml"
        self.point_at(names, bootstrap, broker)
        argv = [sys.executable, "-m", "gateway", "bridge", "run", "-c", str(self.config)]
        argv += ["--metrics-port", str(self.http_port)]
        super().__init__("bridge", argv, "127.0.0.1", self.http_port, _log_file("bridge"))

    def point_at(self, names: Names, bootstrap: str, broker: BrokerHandle) -> None:
        """(Re)write the connector file: the next start uses this Kafka."""
        self.config.write_text(yaml.safe_dump(_connector(names, bootstrap, self.spool, broker)))

    def start(self, timeout: float = 30.0) -> None:
        """Start, and wait until it subscribed (its session exists: the broker keeps what
        is published from now on for it)."""
        seen = self.tail(10**6).count("subscribed to")
        super().start(timeout)
        try:
            wait_until(
                lambda: self.tail(10**6).count("subscribed to") > seen, timeout, "subscribed"
            )
        except AssertionError:
            self.kill()
            raise


def librdkafka_lines(log_file: Path) -> int:
    """How many of librdkafka's own log lines a process wrote."""
    return len(_LIBRDKAFKA_LINE.findall(log_file.read_text(errors="replace")))


def assert_none_lost(ledger: AckLedger, tally: KafkaTally, at_least: int = 1000) -> None:
    """At least `at_least` readings were acknowledged, and every one of them is in Kafka, each
    device's in order."""
    assert len(ledger.acked) >= at_least, f"only {len(ledger.acked)} readings acknowledged"
    assert_acknowledged_in_kafka(ledger, tally)


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `path` (root only); fails loudly if it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        raise AssertionError(
            f"cannot mount a {size} tmpfs on {path} (this test needs root): {mounted.stderr}"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False)


def resize_filesystem(path: Path, size: str) -> None:
    """Give the tmpfs on `path` more room (`mount -o remount,size=...`)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)
