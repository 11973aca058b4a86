"""`trackside bridge run|check`: one MQTT -> Kafka connector from a YAML file."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import typer
from prometheus_client import REGISTRY, start_http_server

from bridge.config import load_config
from bridge.connector import Connector, tune_gc_for_streaming
from bridge.pipeline import Pipeline
from gateway.cli.console import console, log_for_service
from gateway.status_metrics import StatusCollector

__all__ = ["app"]

app = typer.Typer(
    help="The MQTT -> Kafka bridge (a Kafka-Connect-style connector).", no_args_is_help=True
)

CONFIG = typer.Option(..., "--config", "-c", help="Connector YAML file.", exists=False)


@app.command()
def check(config: Path = CONFIG) -> None:
    """Validate a connector file: keys, values, transform and converter names."""
    connector = load_config(config)
    Pipeline(connector)
    console.print(f"[green]{config}: connector {connector.name!r} is valid[/]")


@app.command()
def run(
    config: Path = CONFIG,
    metrics_port: int = typer.Option(
        0, metavar="PORT", help="Serve Prometheus metrics on 127.0.0.1:PORT (0: off)."
    ),
) -> None:
    """Run the connector until SIGTERM or Ctrl-C, then drain and exit."""
    log_for_service()
    connector = Connector(load_config(config))
    if metrics_port:
        # The connector's state, spool mode and Kafka connection, as the gateway serves them.
        REGISTRY.register(StatusCollector({connector.name: connector}, {}))
        start_http_server(metrics_port, addr="127.0.0.1")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    connector.start()
    tune_gc_for_streaming()
    console.print(f"connector {connector.name!r} running (Ctrl-C stops it)")
    while not stop.wait(1.0):
        if connector.status().state == "failed":
            break
    connector.stop()
    status = connector.status()
    if status.state == "failed":
        console.print(f"[red]connector {connector.name!r} failed:[/] {status.reason}")
        raise typer.Exit(1)
    console.print(f"connector {connector.name!r} stopped")
