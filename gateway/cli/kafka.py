"""`trackside kafka up|down|status|fetch`: the project's own single-node Kafka."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from gateway.cli import background
from gateway.cli.console import console
from gateway.localkafka import (
    KAFKA_VERSION,
    KafkaError,
    LocalKafka,
    cache_dir,
    resolve_jars,
)

__all__ = ["app"]

app = typer.Typer(
    help=(
        f"Run a real single-node Apache Kafka {KAFKA_VERSION} (KRaft) from Maven Central jars. "
        "Set KAFKA_BOOTSTRAP_SERVERS to use an existing cluster instead."
    ),
    no_args_is_help=True,
)


def _running() -> tuple[LocalKafka, int] | None:
    info = background.running("kafka")
    if info is None:
        return None
    broker = LocalKafka(Path(info["home"]), info["port"], info["controller_port"])
    return broker, int(info["pid"])


@app.command()
def fetch() -> None:
    """Resolve Kafka's jars with `mvn` into the cache (done by `up` when needed)."""
    with console.status(f"Resolving Apache Kafka {KAFKA_VERSION} with mvn..."):
        libs = resolve_jars()
    console.print(f"Kafka {KAFKA_VERSION}: {len(list(libs.glob('*.jar')))} jars ready")


@app.command()
def up(
    port: int = typer.Option(9092, help="Client (PLAINTEXT) port on 127.0.0.1."),
    controller_port: int = typer.Option(9093, help="KRaft controller port on 127.0.0.1."),
    heap: str = typer.Option("512m", help="JVM maximum heap, as for -Xmx."),
    timeout: float = typer.Option(120.0, help="Seconds to wait until the broker serves."),
) -> None:
    """Start the broker in the background and wait until it serves requests."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        console.print(f"KAFKA_BOOTSTRAP_SERVERS is set: using the cluster at {external}")
        return
    running = _running()
    if running is not None:
        console.print(f"Kafka is already running on {running[0].bootstrap_servers}")
        return
    broker = LocalKafka(cache_dir() / "run" / "kafka", port, controller_port, heap)
    with console.status(f"Starting Kafka {KAFKA_VERSION} on {broker.bootstrap_servers}..."):
        proc = broker.start(timeout=timeout, detach=True)
    background.remember(
        "kafka", proc.pid, port=port, controller_port=controller_port, home=str(broker.home)
    )
    console.print(
        f"[green]Kafka {KAFKA_VERSION} is up[/] on {broker.bootstrap_servers} "
        f"(pid {proc.pid}, log {broker.log_file})"
    )


@app.command()
def down() -> None:
    """Stop the broker started by `up` cleanly (SIGTERM, then SIGKILL after 30 s)."""
    running = _running()
    if running is None:
        console.print("Kafka is not running")
        return
    broker, pid = running
    with console.status("Stopping Kafka..."):
        background.forget("kafka", pid)
    console.print(f"Kafka on {broker.bootstrap_servers} stopped")


@app.command()
def status() -> None:
    """Say whether the broker started by `up` runs and serves requests; exit 1 if not."""
    running = _running()
    if running is None:
        console.print("Kafka is not running (start it with `trackside kafka up`)")
        raise typer.Exit(1)
    broker, pid = running
    try:
        broker.wait_ready(timeout=5)
    except KafkaError as exc:
        console.print(f"Kafka (pid {pid}) runs but does not serve: {exc}")
        raise typer.Exit(1) from exc
    console.print(f"Kafka {KAFKA_VERSION} serves on {broker.bootstrap_servers} (pid {pid})")
