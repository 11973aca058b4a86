"""The `trackside` command. Each command group lives in its own module of this package."""

import typer

from bridge import BridgeError
from gateway import GatewayError
from gateway.cli import (
    alerts,
    bridge,
    broker,
    dashboard,
    demo,
    devices,
    devicetools,
    gateway,
    hardware,
    kafka,
    simulate,
)
from gateway.cli.console import console_err

__all__ = ["app", "main"]

app = typer.Typer(
    name="trackside",
    help="Trackside: train sensor telemetry from MicroPython devices over MQTT into Apache Kafka.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
# The command groups, registered explicitly: one line each.
app.add_typer(kafka.app, name="kafka")
app.add_typer(broker.app, name="broker")
app.add_typer(bridge.app, name="bridge")
app.add_typer(gateway.app, name="gateway")
app.add_typer(devices.app, name="devices")
app.add_typer(alerts.app, name="alerts")
app.add_typer(hardware.app, name="hardware")
demo.register(app)
dashboard.register(app)
simulate.register(app)
devicetools.register(app)


def main() -> None:
    """Run the CLI; a GatewayError or BridgeError becomes one red line and exit status 1."""
    try:
        app()
    except (GatewayError, BridgeError) as exc:
        console_err.print(f"[bold red]error:[/] {exc}")
        raise SystemExit(1) from exc
