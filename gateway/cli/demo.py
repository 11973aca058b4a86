"""`trackside demo`: everything on this machine with one command."""

from __future__ import annotations

import typer

from gateway.cli.console import console
from gateway.demo import run_demo

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the top-level `demo` command to the CLI."""

    @app.command()
    def demo(
        mqtt_port: int = typer.Option(1883, help="Port of the embedded MQTT broker."),
        dashboard_port: int = typer.Option(8080, help="Port of the dashboard."),
    ) -> None:
        """Run Kafka, the gateway and 20 simulated trains here; Ctrl-C stops everything."""
        run_demo(console, mqtt_port, dashboard_port)
