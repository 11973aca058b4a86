"""`trackside kafka up|down|status|fetch`: the project's own Kafka, one node or a cluster."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from confluent_kafka.admin import AdminClient
from rich.table import Table

from gateway.cli import background
from gateway.cli.console import console
from gateway.localkafka import (
    CLUSTER_HEAP,
    DEFAULT_HEAP,
    KAFKA_VERSION,
    KafkaError,
    LocalKafka,
    LocalKafkaCluster,
    cache_dir,
    process_alive,
    resolve_jars,
)

__all__ = ["PORT_STEP", "app", "cluster_ports"]

# Node i of a cluster listens on port + i * PORT_STEP and controller_port + i * PORT_STEP
# (9092/9093, 9192/9193, 9292/9293): clear of Alertmanager's 9094 and of each other.
PORT_STEP = 100

app = typer.Typer(
    help=(
        f"Run a real Apache Kafka {KAFKA_VERSION} (KRaft) from Maven Central jars: one node, "
        "or a cluster with --brokers. Set KAFKA_BOOTSTRAP_SERVERS to use an existing cluster "
        "instead."
    ),
    no_args_is_help=True,
)


def cluster_ports(port: int, controller_port: int, brokers: int) -> list[tuple[int, int]]:
    """The (client, controller) ports of each node of a cluster started with these options."""
    return [(port + i * PORT_STEP, controller_port + i * PORT_STEP) for i in range(brokers)]


def _cluster(home: Path, port: int, controller_port: int, brokers: int) -> LocalKafkaCluster:
    return LocalKafkaCluster.on_ports(home, cluster_ports(port, controller_port, brokers))


def _running() -> tuple[LocalKafka | LocalKafkaCluster, dict[str, Any]] | None:
    info = background.running("kafka")
    if info is None:
        return None
    home, port, controller_port = Path(info["home"]), info["port"], info["controller_port"]
    brokers = int(info.get("brokers", 1))
    if brokers == 1:
        return LocalKafka(home, port, controller_port), info
    return _cluster(home, port, controller_port, brokers), info


@app.command()
def fetch() -> None:
    """Resolve Kafka's jars with `mvn` into the cache (done by `up` when needed)."""
    with console.status(f"Resolving Apache Kafka {KAFKA_VERSION} with mvn..."):
        libs = resolve_jars()
    console.print(f"Kafka {KAFKA_VERSION}: {len(list(libs.glob('*.jar')))} jars ready")


@app.command()
def up(
    brokers: int = typer.Option(
        1,
        min=1,
        max=9,
        help=f"Nodes (each broker and controller); node i on port + i*{PORT_STEP}.",
    ),
    port: int = typer.Option(9092, help="Client (PLAINTEXT) port on 127.0.0.1 (of node 1)."),
    controller_port: int = typer.Option(9093, help="KRaft controller port (of node 1)."),
    heap: str | None = typer.Option(
        None,
        metavar="SIZE",
        help=f"JVM maximum heap per node, as for -Xmx [default: {DEFAULT_HEAP}; "
        f"{CLUSTER_HEAP} with --brokers 2 or more].",
        show_default=False,
    ),
    timeout: float = typer.Option(120.0, help="Seconds to wait until every broker serves."),
) -> None:
    """Start Kafka in the background and wait until every broker serves requests."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        console.print(f"KAFKA_BOOTSTRAP_SERVERS is set: using the cluster at {external}")
        return
    running = _running()
    if running is not None:
        console.print(f"Kafka is already running on {running[0].bootstrap_servers}")
        return
    kafka: LocalKafka | LocalKafkaCluster
    if brokers == 1:
        kafka = LocalKafka(
            cache_dir() / "run" / "kafka", port, controller_port, heap or DEFAULT_HEAP
        )
        home = kafka.home
    else:
        # A folder per size: a quorum of three cannot start from the metadata of another.
        home = cache_dir() / "run" / f"kafka-cluster-{brokers}"
        kafka = LocalKafkaCluster.on_ports(
            home, cluster_ports(port, controller_port, brokers), heap or CLUSTER_HEAP
        )
    what = "Kafka" if brokers == 1 else f"a {brokers}-broker Kafka cluster"
    with console.status(f"Starting {what} {KAFKA_VERSION} on {kafka.bootstrap_servers}..."):
        if isinstance(kafka, LocalKafka):
            procs = [kafka.start(timeout=timeout, detach=True)]
        else:
            procs = kafka.start(timeout=timeout, detach=True)
    background.remember(
        "kafka",
        *(proc.pid for proc in procs),
        port=port,
        controller_port=controller_port,
        brokers=brokers,
        home=str(home),
    )
    pids = ", ".join(str(proc.pid) for proc in procs)
    logs = home / "kafka.log" if brokers == 1 else home / "node-*" / "kafka.log"
    console.print(
        f"[green]{what} {KAFKA_VERSION} is up[/] on {kafka.bootstrap_servers} "
        f"(pid {pids}, log {logs})"
    )


@app.command()
def down() -> None:
    """Stop the Kafka started by `up` cleanly: every node at once (SIGTERM, then SIGKILL
    after 30 s)."""
    running = _running()
    if running is None:
        console.print("Kafka is not running")
        return
    kafka, info = running
    with console.status("Stopping Kafka..."):
        background.forget("kafka", *info["pids"])
    console.print(f"Kafka on {kafka.bootstrap_servers} stopped")


@app.command()
def status() -> None:
    """Say whether the Kafka started by `up` runs and serves requests, node by node for a
    cluster (process, broker, the active controller); exit 1 if any node does not serve."""
    running = _running()
    if running is None:
        console.print("Kafka is not running (start it with `trackside kafka up`)")
        raise typer.Exit(1)
    kafka, info = running
    if isinstance(kafka, LocalKafka):
        pid = info["pid"]
        try:
            kafka.wait_ready(timeout=5)
        except KafkaError as exc:
            console.print(f"Kafka (pid {pid}) runs but does not serve: {exc}")
            raise typer.Exit(1) from exc
        console.print(f"Kafka {KAFKA_VERSION} serves on {kafka.bootstrap_servers} (pid {pid})")
        return
    if not _cluster_status(kafka, info["pids"]):
        raise typer.Exit(1)


def _cluster_status(cluster: LocalKafkaCluster, pids: list[int]) -> bool:
    """Print one line per node; whether every node runs and is a broker of the cluster."""
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap_servers, "log_level": 0})
    try:
        serving = set(admin.list_topics(timeout=5).brokers)
    except Exception:  # noqa: BLE001 - librdkafka raises KafkaException variants
        serving = set()
    table = Table("node", "client", "controller", "pid", "process", "broker", "sees leader")
    leaders = []
    for node, pid in zip(cluster.nodes, pids, strict=True):
        alive = process_alive(pid)
        # The cluster lists a killed broker until its session times out (9 s): ask both.
        if not alive:
            serving.discard(node.node_id)
        leader = node.quorum_leader() if alive else None
        if leader is not None:
            leaders.append(leader)
        table.add_row(
            str(node.node_id),
            str(node.port),
            str(node.controller_port),
            str(pid),
            "[green]running[/]" if alive else "[red]stopped[/]",
            "[green]serving[/]" if node.node_id in serving else "[red]not serving[/]",
            "-" if leader is None else f"node {leader}",
        )
    console.print(table)
    agreed = max(set(leaders), key=leaders.count) if leaders else None
    controller = f"node {agreed}" if agreed is not None else "none seen"
    all_serve = {node.node_id for node in cluster.nodes} <= serving
    verdict = "[green]all brokers serve[/]" if all_serve else "[red]not every broker serves[/]"
    console.print(
        f"Kafka {KAFKA_VERSION}, {len(cluster.nodes)} brokers on {cluster.bootstrap_servers}: "
        f"{verdict}; active controller: {controller}"
    )
    return all_serve
