"""A real single-node Apache Kafka (KRaft) assembled from Maven Central jars and run with `java`.

The same launcher serves `trackside kafka up`, the demo and the test fixtures. The jars are
resolved once with `mvn` into a cache outside the repository (`TRACKSIDE_CACHE`, default
`~/.cache/trackside`) and reused afterwards.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient

from gateway import GatewayError

__all__ = [
    "KAFKA_VERSION",
    "KafkaError",
    "LocalKafka",
    "cache_dir",
    "free_port",
    "resolve_jars",
    "stop_pid",
]

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.3.1"
# Kafka 4.x logs through slf4j-api 1.7; this binding routes it to log4j2, which Kafka ships.
SLF4J_BINDING = ("org.apache.logging.log4j", "log4j-slf4j-impl", "2.25.4")
DEFAULT_HEAP = "512m"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.trackside</groupId><artifactId>local-kafka</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>{b_group}</groupId><artifactId>{b_artifact}</artifactId>
      <version>{b_version}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
"""


class KafkaError(GatewayError):
    """The local Kafka broker could not be resolved, started or stopped."""


def cache_dir() -> Path:
    """Where jars and the `trackside kafka up` broker live: outside the repository."""
    return Path(os.environ.get("TRACKSIDE_CACHE", Path.home() / ".cache" / "trackside"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise KafkaError(f"`{tool}` was not found on PATH: {hint}")
    return path


def resolve_jars(progress: Callable[[str], None] = log.info) -> Path:
    """Return the folder of the broker's jars, resolving them with `mvn` on first use."""
    libs = cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"
    if (libs / ".complete").exists():
        return libs
    mvn = _require("mvn", "install Maven (Debian: `apt-get install maven`) to fetch Kafka's jars")
    progress(f"Resolving Apache Kafka {KAFKA_VERSION} from Maven Central (first run only)")
    libs.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=libs.parent) as tmp:
        pom = Path(tmp) / "pom.xml"
        group, artifact, version = SLF4J_BINDING
        pom.write_text(
            _POM.format(kafka=KAFKA_VERSION, b_group=group, b_artifact=artifact, b_version=version)
        )
        out = Path(tmp) / "libs"
        result = subprocess.run(
            [
                mvn,
                "-B",
                "-q",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={out}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            tail = (result.stdout + result.stderr)[-2000:]
            raise KafkaError(
                f"mvn could not resolve Kafka {KAFKA_VERSION} (exit {result.returncode}); "
                f"check access to Maven Central and retry:\n{tail}"
            )
        (out / ".complete").write_text(KAFKA_VERSION)
        if libs.exists():
            shutil.rmtree(libs)
        out.rename(libs)
    return libs


@dataclass(frozen=True)
class LocalKafka:
    """One combined broker+controller on 127.0.0.1 whose files live in `home`."""

    home: Path
    port: int
    controller_port: int
    heap: str = DEFAULT_HEAP

    @classmethod
    def on_free_ports(cls, home: Path, heap: str = DEFAULT_HEAP) -> LocalKafka:
        """A broker on two ports that are free now."""
        return cls(home, free_port(), free_port(), heap)

    @property
    def bootstrap_servers(self) -> str:
        """The `bootstrap.servers` value for clients of this broker."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        """The broker's own log (log4j2), kept for failures."""
        return self.home / "kafka.log"

    @property
    def console_file(self) -> Path:
        """What the JVM printed to stdout and stderr."""
        return self.home / "console.log"

    def _write_config(self) -> Path:
        data = self.home / "data"
        data.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "log.dirs": str(data),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # The cleaner allocates this at start; the default 128 MiB does not fit a small heap.
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            "auto.create.topics.enable": "true",
        }
        config = self.home / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.home / "log4j2.properties").write_text(_LOG4J2.format(log=self.log_file))
        return config

    def _java(self, libs: Path, *args: str) -> list[str]:
        java = _require("java", "install Java 17+ (Debian: `apt-get install default-jre`)")
        return [
            java,
            f"-Xmx{self.heap}",
            "-Xms64m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            *args,
        ]

    def _format(self, libs: Path, config: Path) -> None:
        if (self.home / "data" / "meta.properties").exists():
            return
        cluster_id = _cluster_id()
        result = subprocess.run(
            self._java(
                libs,
                "kafka.tools.StorageTool",
                "format",
                # One argument: a cluster id may start with "-", which argparse takes for a flag.
                f"--cluster-id={cluster_id}",
                "-c",
                str(config),
                "--ignore-formatted",
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise KafkaError(
                f"formatting Kafka storage in {self.home / 'data'} failed "
                f"(exit {result.returncode}):\n{(result.stdout + result.stderr)[-2000:]}"
            )

    def start(self, timeout: float = 120.0, detach: bool = False) -> subprocess.Popen[bytes]:
        """Format storage if new, start the broker and wait until it serves requests."""
        libs = resolve_jars()
        self.home.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        self._format(libs, config)
        with self.console_file.open("ab") as out:
            proc = subprocess.Popen(
                self._java(libs, "kafka.Kafka", str(config)),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=detach,
            )
        try:
            self.wait_ready(timeout, proc)
        except KafkaError:
            stop_pid(proc.pid, 10.0)
            raise
        return proc

    def wait_ready(self, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
        """Block until the broker answers a metadata request, or raise KafkaError."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        deadline = time.monotonic() + timeout
        while True:
            if proc is not None and proc.poll() is not None:
                raise KafkaError(
                    f"Kafka exited with status {proc.returncode} while starting; "
                    f"see {self.console_file} and {self.log_file}:\n{self.tail()}"
                )
            try:
                metadata = admin.list_topics(timeout=2)
                if metadata.brokers:
                    return
            except Exception as exc:  # noqa: BLE001 - librdkafka raises KafkaException variants
                log.debug("Kafka not ready yet: %s", exc)
            if time.monotonic() > deadline:
                raise KafkaError(
                    f"Kafka did not serve requests on {self.bootstrap_servers} within "
                    f"{timeout:.0f} s; see {self.log_file}:\n{self.tail()}"
                )
            time.sleep(0.25)

    def tail(self, lines: int = 40) -> str:
        """The last lines of the broker's console and log, for error messages."""
        text = []
        for path in (self.console_file, self.log_file):
            if path.exists():
                text.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(text)


def stop_pid(pid: int, timeout: float = 30.0) -> bool:
    """SIGTERM the broker (a clean shutdown), SIGKILL after `timeout`; False if not running."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    log.warning("Kafka (pid %d) ignored SIGTERM for %.0f s; killing it", pid, timeout)
    os.kill(pid, signal.SIGKILL)
    return True


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return done == 0


def _cluster_id() -> str:
    # Kafka's cluster ids are 16 random bytes in URL-safe base64 without padding.
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
