"""A real Apache Kafka (KRaft) assembled from Maven Central jars and run with `java`: one
combined broker+controller node (`LocalKafka`), or several sharing a static controller quorum
(`LocalKafkaCluster`).

The same launcher serves `trackside kafka up`, the demo and the test fixtures. The jars are
resolved once with `mvn` into a cache outside the repository (`TRACKSIDE_CACHE`, default
`~/.cache/trackside`) and reused afterwards.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient

from gateway import GatewayError

__all__ = [
    "KAFKA_VERSION",
    "KafkaError",
    "LocalKafka",
    "LocalKafkaCluster",
    "cache_dir",
    "free_port",
    "process_alive",
    "resolve_jars",
    "stop_pid",
    "stop_pids",
]

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.3.1"
# Kafka 4.x logs through slf4j-api 1.7; this binding routes it to log4j2, which Kafka ships.
SLF4J_BINDING = ("org.apache.logging.log4j", "log4j-slf4j-impl", "2.25.4")
DEFAULT_HEAP = "512m"
# Three JVMs share the 2-core build machine: each node idles at about 300 MB with this cap.
CLUSTER_HEAP = "384m"

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
    """One combined broker+controller on 127.0.0.1 whose files live in `home`: alone (the
    defaults), or node `node_id` of a cluster whose controllers are `voters`."""

    home: Path
    port: int
    controller_port: int
    heap: str = DEFAULT_HEAP
    node_id: int = 1
    # The whole cluster's `controller.quorum.voters` ("1@127.0.0.1:9093,2@..."); None: alone.
    voters: str | None = None
    # Copies of each internal topic (group offsets, transactions) and of auto-created topics.
    replication: int = 1

    @classmethod
    def on_free_ports(cls, home: Path, heap: str = DEFAULT_HEAP) -> LocalKafka:
        """A broker on two ports that are free now."""
        return cls(home, free_port(), free_port(), heap)

    @property
    def bootstrap_servers(self) -> str:
        """The `bootstrap.servers` value for clients of this broker."""
        return f"127.0.0.1:{self.port}"

    @property
    def min_insync_replicas(self) -> int:
        """Replicas an acks=all write needs: one fewer than the copies, so that a cluster
        takes writes with one broker down (1 alone, 2 of 3)."""
        return max(1, self.replication - 1)

    @property
    def log_file(self) -> Path:
        """The broker's own log (log4j2), kept for failures."""
        return self.home / "kafka.log"

    @property
    def console_file(self) -> Path:
        """What the JVM printed to stdout and stderr."""
        return self.home / "console.log"

    @property
    def data_dir(self) -> Path:
        """The node's `log.dirs`: its partitions and its copy of the cluster metadata."""
        return self.home / "data"

    def quorum_leader(self) -> int | None:
        """The active controller as this node last saw it (its `quorum-state` file), None
        before it saw an election."""
        try:
            state = json.loads(
                (self.data_dir / "__cluster_metadata-0" / "quorum-state").read_text()
            )
        except (OSError, ValueError):
            return None
        leader = int(state.get("leaderId", -1))
        return leader if leader >= 0 else None

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        copies, min_isr = str(self.replication), str(self.min_insync_replicas)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.quorum.voters": (
                self.voters or f"{self.node_id}@127.0.0.1:{self.controller_port}"
            ),
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "default.replication.factor": copies,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": copies,
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": copies,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": copies,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": "0",
            # A producer that died mid-transaction (a SIGKILLed alert instance whose id does not
            # come back) holds read_committed readers of its partitions until its transaction
            # times out and the coordinator's next sweep aborts it: sweep each second, not 10.
            "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
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

    def cluster_id(self) -> str | None:
        """The cluster id this node's storage was formatted with, None if not formatted."""
        try:
            text = (self.data_dir / "meta.properties").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("cluster.id="):
                return line.partition("=")[2].strip()
        return None

    def _format(self, libs: Path, config: Path, cluster_id: str) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        result = subprocess.run(
            self._java(
                libs,
                # A JVM that lives seconds: the optimising compiler would only cost CPU.
                "-XX:TieredStopAtLevel=1",
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
                f"formatting Kafka storage in {self.data_dir} failed "
                f"(exit {result.returncode}):\n{(result.stdout + result.stderr)[-2000:]}"
            )

    def launch(
        self, detach: bool = False, cluster_id: str | None = None
    ) -> subprocess.Popen[bytes]:
        """Write the config, format storage if new (as cluster `cluster_id`, else a new one)
        and start the JVM, without waiting for it to serve (`wait_ready`)."""
        libs = resolve_jars()
        self.home.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        self._format(libs, config, cluster_id or _cluster_id())
        with self.console_file.open("ab") as out:
            return subprocess.Popen(
                self._java(libs, "kafka.Kafka", str(config)),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=detach,
            )

    def start(self, timeout: float = 120.0, detach: bool = False) -> subprocess.Popen[bytes]:
        """Format storage if new, start the broker and wait until it serves requests (in a
        cluster: until the cluster counts it among its brokers)."""
        proc = self.launch(detach)
        try:
            self.wait_ready(timeout, proc)
        except KafkaError:
            stop_pid(proc.pid, 10.0)
            raise
        return proc

    def wait_ready(self, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
        """Block until the broker answers a metadata request, or raise KafkaError."""
        _wait_for_brokers(self.bootstrap_servers, [(self, proc)], timeout)

    def tail(self, lines: int = 40) -> str:
        """The last lines of the broker's console and log, for error messages."""
        text = []
        for path in (self.console_file, self.log_file):
            if path.exists():
                text.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(text)


@dataclass(frozen=True)
class LocalKafkaCluster:
    """Several `LocalKafka` nodes, each broker and controller, on one static KRaft quorum
    (`controller.quorum.voters`): every node votes, a majority must run for the cluster to
    work. Internal and auto-created topics get min(3, nodes) copies."""

    nodes: tuple[LocalKafka, ...]

    @classmethod
    def on_ports(
        cls, home: Path, ports: Sequence[tuple[int, int]], heap: str = CLUSTER_HEAP
    ) -> LocalKafkaCluster:
        """Nodes 1..n on the (client, controller) port pairs `ports`, node i in `home/node-i`."""
        if not ports:
            raise KafkaError("a cluster needs at least one node")
        voters = ",".join(f"{i}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports, start=1))
        copies = min(3, len(ports))
        return cls(
            tuple(
                LocalKafka(home / f"node-{i}", port, controller, heap, i, voters, copies)
                for i, (port, controller) in enumerate(ports, start=1)
            )
        )

    @classmethod
    def on_free_ports(
        cls, home: Path, size: int = 3, heap: str = CLUSTER_HEAP
    ) -> LocalKafkaCluster:
        """A cluster of `size` nodes on ports that are free now."""
        return cls.on_ports(home, [(free_port(), free_port()) for _ in range(size)], heap)

    @property
    def bootstrap_servers(self) -> str:
        """Every node's client address: clients find the rest through any of them."""
        return ",".join(node.bootstrap_servers for node in self.nodes)

    def node(self, node_id: int) -> LocalKafka:
        """The node whose `node.id` is `node_id`."""
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KafkaError(f"no node {node_id} in this cluster (nodes 1..{len(self.nodes)})")

    def start(self, timeout: float = 180.0, detach: bool = False) -> list[subprocess.Popen[bytes]]:
        """Format each node's storage if new (one cluster id for all), start every node and
        wait until the cluster counts all of them as brokers; on failure stop them all."""
        known = {node.cluster_id() for node in self.nodes} - {None}
        if len(known) > 1:
            raise KafkaError(
                f"the nodes in {self.nodes[0].home.parent} were formatted for different "
                f"clusters ({', '.join(sorted(str(k) for k in known))}); delete that folder "
                "to start an empty cluster"
            )
        cluster_id = known.pop() if known else _cluster_id()
        # Side by side: formatting is a JVM start of its own, seconds each on a busy machine.
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            launches = [pool.submit(node.launch, detach, cluster_id) for node in self.nodes]
        procs = [launch.result() for launch in launches if launch.exception() is None]
        try:
            for launch in launches:
                launch.result()  # the first failure, if any
            self.wait_ready(timeout, procs)
        except BaseException:  # Ctrl-C too: no node is left running without a record
            stop_pids([proc.pid for proc in procs], 10.0)
            raise
        return procs

    def wait_ready(
        self, timeout: float, procs: Sequence[subprocess.Popen[bytes] | None] = ()
    ) -> None:
        """Block until every node is a broker of the cluster, or raise KafkaError."""
        padded = [*procs, *[None] * (len(self.nodes) - len(procs))]
        started = list(zip(self.nodes, padded, strict=True))
        _wait_for_brokers(self.bootstrap_servers, started, timeout)


def _wait_for_brokers(
    bootstrap_servers: str,
    nodes: Sequence[tuple[LocalKafka, subprocess.Popen[bytes] | None]],
    timeout: float,
) -> None:
    """Until a metadata request lists each of `nodes` as a broker; KafkaError when one of
    their processes exits first or `timeout` passes, with the tail of its logs."""
    wanted = {node.node_id for node, _ in nodes}
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})
    deadline = time.monotonic() + timeout
    while True:
        for node, proc in nodes:
            if proc is not None and proc.poll() is not None:
                raise KafkaError(
                    f"Kafka node {node.node_id} exited with status {proc.returncode} while "
                    f"starting; see {node.console_file} and {node.log_file}:\n{node.tail()}"
                )
        try:
            if wanted <= set(admin.list_topics(timeout=2).brokers):
                return
        except Exception as exc:  # noqa: BLE001 - librdkafka raises KafkaException variants
            log.debug("Kafka not ready yet: %s", exc)
        if time.monotonic() > deadline:
            tails = "\n".join(f"-- node {node.node_id}:\n{node.tail(15)}" for node, _ in nodes)
            raise KafkaError(
                f"Kafka did not serve requests on {bootstrap_servers} within {timeout:.0f} s; "
                f"see {', '.join(str(node.log_file) for node, _ in nodes)}:\n{tails}"
            )
        time.sleep(0.25)


def stop_pid(pid: int, timeout: float = 30.0) -> bool:
    """SIGTERM the broker (a clean shutdown), SIGKILL after `timeout`; False if not running."""
    return stop_pids([pid], timeout) == 1


def stop_pids(pids: Sequence[int], timeout: float = 30.0) -> int:
    """SIGTERM every process at once, SIGKILL those still running after `timeout`; how many
    were running. At once, because a cluster node's clean shutdown needs a controller quorum:
    stopped one after another, the last node waits for a quorum that is gone."""
    running = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            running.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    left = running
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [pid for pid in left if process_alive(pid)]
    for pid in left:
        log.warning("Kafka (pid %d) ignored SIGTERM for %.0f s; killing it", pid, timeout)
        os.kill(pid, signal.SIGKILL)
    return len(running)


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs (a child of ours that exited is reaped here)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return not _zombie(pid)
    return done == 0


def _zombie(pid: int) -> bool:
    """Exited, not yet reaped by its parent (a detached broker's parent may be slow to)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (not Linux), or it is gone already
        return False
    return stat.rpartition(")")[2].split()[0] == "Z"


def _cluster_id() -> str:
    # Kafka's cluster ids are 16 random bytes in URL-safe base64 without padding.
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
